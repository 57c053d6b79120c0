"""headkit: exact attention-head interventions for TransformerLens, nnsight and transformers models.

    Heads                        a set of (layer, head) pairs; parse "L5H1 L9H9"
    zero_ablate(heads)           zero the heads' outputs z (before W_O)
    mean_ablate(heads, means)    replace z by its mean over a reference set (compute_means)
    gate(values)                 scale z by values [layer, head] or per row [batch, layer, head]
    mask_attention(heads, keys)  -inf on chosen keys before softmax, in chosen heads
    capture_attention(heads)     read chosen heads' patterns (optionally pooled) into the run's Captures
    get_backend(model)           the adapter for a model (forward passes with interventions)
    load_default()               the embedded default model, Gemma 3 270M, offline
    HeadkitError                 raised on bad input (a ValueError)

Analyses: ``headkit.analyses.montecarlo`` (many head masks per forward pass: ``evaluate``, samplers, streaming
counts, regression), ``headkit.analyses.stochastic_ablation`` (seed 003's study: importance, exclusion, outliers,
effects with intervals, synergy; outcomes on disk, resumable), ``headkit.analyses.gating`` (causal head gating: G, G+, G-, taxonomy, contrastive), ``headkit.analyses.receivers``
(receiver heads: vertical scores, kurtosis), ``headkit.analyses.suppression`` (sentence-suppression KL matrix),
``headkit.analyses.triad`` (attention vs direct effect vs ablation effect per head), ``headkit.analyses.resampling``
and ``headkit.analyses.counterfactual`` (seed 000: rollouts under head ablation, Thought Anchors' counterfactual
importance; metrics in ``importance``, sentence embeddings in ``embeddings``), ``headkit.sentences`` (sentences
to token spans), ``headkit.prompts`` (tokenised prompt sets with answers or target
continuations), ``headkit.data`` (built-in prompts and traces), ``headkit.plots`` (figures).

Adapters place the same interventions on each framework:
``headkit.adapters.transformer_lens``, ``headkit.adapters.huggingface``. Importing headkit imports
neither TransformerLens nor nnsight.
"""

from headkit import data, models, plots, prompts, sentences, shards
from headkit.analyses import (
    counterfactual,
    gating,
    montecarlo,
    receivers,
    resampling,
    stochastic_ablation,
    suppression,
    triad,
)
from headkit.backend import get_backend
from headkit.core.errors import HeadkitError
from headkit.core.heads import Heads
from headkit.core.interventions import capture_attention, gate, mask_attention, mean_ablate, zero_ablate
from headkit.means import compute_means
from headkit.models import load_default

__all__ = [
    "Heads",
    "zero_ablate",
    "mean_ablate",
    "compute_means",
    "gate",
    "mask_attention",
    "capture_attention",
    "get_backend",
    "load_default",
    "models",
    "gating",
    "montecarlo",
    "stochastic_ablation",
    "prompts",
    "data",
    "sentences",
    "shards",
    "receivers",
    "suppression",
    "triad",
    "resampling",
    "counterfactual",
    "plots",
    "HeadkitError",
]

__version__ = "0.1.0"

