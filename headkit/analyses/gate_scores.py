"""Scoring under head gates, for causal head gating: sequence log-probabilities and the checks of a fit.

:func:`sequence_logprob` is each example's mean target-token log-probability under gates (the fitting
objective, and what the checks read); :func:`ablation_curves` is the paper's Figure 2 check (zero or keep
the top-k heads of each score, from ``G+``); :func:`variant_logprobs` compares prompt variants under a
fit's gates. All run on the sweep engine; :mod:`headkit.analyses.gating` fits the gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from headkit.analyses.gate_fits import SCORES, ContrastiveFit, GateFit
from headkit.backend import Backend, get_backend
from headkit.core.errors import describe, fail
from headkit.prompts import Prompts, tokenize
from headkit.readouts import SequenceLogProb
from headkit.sweep import Rows, RowSizer, fixed, sweep_all
from headkit.sweep import gates as sweep_gates

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float

__all__ = ["sequence_logprob", "ablation_curves", "variant_logprobs"]


# ------------------------------------------------------------------------------------------------- scoring
def sequence_logprob(
    model: Any,
    data: Any,
    gates: Float[torch.Tensor, "layer head"] | Float[torch.Tensor, "mask layer head"] | None = None,
    *,
    rows_per_pass: int | None = None,
    tokenizer: Any = None,
) -> Float[torch.Tensor, " example"] | Float[torch.Tensor, "mask example"]:
    """Mean log-probability per target token of each example, optionally under gates (one or many masks).

    With ``gates`` of shape ``[mask, layer, head]`` every mask is evaluated on every example, packed into
    forward passes of ``rows_per_pass`` rows (None: 256); the result is ``[mask, example]``. Logits are computed at
    target positions only. Gradients flow to ``gates`` when it requires them.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.analyses.gating import sequence_logprob
        >>> model, tok = hk.models.tiny("llama")
        >>> data = [("Tom eats", " apples"), ("He bought", " milk")]
        >>> sequence_logprob(model, data, torch.ones(3, 2, 4), tokenizer=tok).shape
        torch.Size([3, 2])
    """
    if gates is not None and (not isinstance(gates, torch.Tensor) or gates.ndim not in (2, 3)):
        raise fail(
            f"sequence_logprob got gates {describe(gates)}",
            "a float tensor [n_layers, n_heads] or [n_masks, n_layers, n_heads]",
            "pass e.g. torch.ones(n_layers, n_heads)",
        )
    sizer = RowSizer(256 if rows_per_pass is None else rows_per_pass, 1, "sequence_logprob")  # checked before any work
    backend = _backend(model, tokenizer, "sequence_logprob", local=gates is not None and gates.requires_grad)
    shape = backend.shape
    if gates is not None and tuple(gates.shape[-2:]) != (shape.n_layers, shape.n_heads):
        raise fail(
            f"sequence_logprob got gates {describe(gates)} for a model with {shape.n_layers} layers of "
            f"{shape.n_heads} heads",
            f"gates [{shape.n_layers}, {shape.n_heads}] or [n_masks, {shape.n_layers}, {shape.n_heads}]",
            f"build them with torch.ones({shape.n_layers}, {shape.n_heads}) (and a leading mask axis for many)",
        )
    ex = _prompts(backend, data, "sequence_logprob")
    n = len(ex)
    many = None if gates is None else gates.reshape(-1, *gates.shape[-2:])
    n_masks = 1 if many is None else many.shape[0]
    rows = Rows(torch.arange(n_masks).repeat_interleave(n), torch.arange(n).repeat(n_masks))
    variants = fixed() if many is None else sweep_gates(many)
    grad = many is not None and many.requires_grad and torch.is_grad_enabled()
    out = sweep_all(backend, ex.right.input_ids, ex.right.attention_mask, _readout(ex), variants, rows, rows_per_pass=sizer,
                    grad=grad)
    return out.reshape(n_masks, n) if gates is not None and gates.ndim == 3 else out


def _readout(ex: Prompts) -> SequenceLogProb:
    return SequenceLogProb(ex.right.input_ids, ex.right.target_mask)


# ------------------------------------------------------------------------------------------------- validation (Fig. 2)
def ablation_curves(
    model: Any,
    data: Any,
    result: GateFit,
    *,
    ks: Sequence[int] | None = None,
    rows_per_pass: int | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The paper's Figure 2: starting from ``G+``, set the top-k heads of each score to 0 and to 1.

    For every seed and score (facilitation, irrelevance, interference), heads are ranked by the score
    (descending) and the first k of them are set to 0 (``logp_zero``) or to 1 (``logp_one``) in that seed's
    ``G+``; ``delta = logp_zero - logp_one`` is the change in mean target log-probability per token that
    ablating them causes. Expected: negative for facilitation, near 0 for irrelevance, positive for
    interference. ``ks`` defaults to 1..min(50, heads). All masks of a seed run as per-row gates.

    Example:
        >>> import headkit as hk
        >>> from headkit import gating
        >>> model, tok = hk.models.tiny("llama")
        >>> data = [("Tom eats apples . Tom eats", " apples")]
        >>> res = gating.fit(model, data, steps=2, reg_steps=2, batch_size=1, tokenizer=tok, progress=False)
        >>> gating.ablation_curves(model, data, res, ks=[1, 2], tokenizer=tok, progress=False).shape
        (6, 6)
    """
    import pandas as pd
    from tqdm.auto import tqdm

    backend = _backend(model, tokenizer, "ablation_curves", local=False)
    ex = _prompts(backend, data, "ablation_curves")
    n_heads = result.G_plus[0].numel()
    if n_heads != backend.shape.n_layers * backend.shape.n_heads:
        raise fail(
            f"ablation_curves got gates {describe(result.G_plus)} for a model of shape {backend.shape}",
            "the result of fitting this model",
            "pass the GateFit returned by gating.fit on the same model",
        )
    ks = list(range(1, min(50, n_heads) + 1)) if ks is None else [int(k) for k in ks]
    if not ks or min(ks) < 0 or max(ks) > n_heads:
        raise fail(f"ablation_curves got ks={ks}", f"head counts between 0 and {n_heads}", "pass e.g. ks=range(1, 21)")
    rows = []
    for s, seed in enumerate(tqdm(result.seeds or range(result.G.shape[0]), desc="ablation curves", disable=not progress)):
        base = result.G_plus[s].flatten().float()
        masks = []
        for name in SCORES:
            order = torch.argsort(getattr(result, name)[s].flatten().float(), descending=True, stable=True)
            for k in ks:
                for value in (0.0, 1.0):
                    m = base.clone()
                    m[order[:k]] = value
                    masks.append(m)
        stacked = torch.stack(masks).reshape(-1, *result.G_plus.shape[1:])
        logp = sequence_logprob(backend, ex, stacked, rows_per_pass=rows_per_pass).mean(-1).reshape(len(SCORES), len(ks), 2)
        for i, name in enumerate(SCORES):
            for j, k in enumerate(ks):
                zero, one = logp[i, j].tolist()
                rows.append((seed, name, k, zero, one, zero - one))
    return pd.DataFrame(rows, columns=["seed", "score", "k", "logp_zero", "logp_one", "delta"])


def variant_logprobs(model: Any, variants: dict[str, Any], result: ContrastiveFit | GateFit, *,
                     tokenizer: Any = None) -> pd.DataFrame:
    """Mean log p(target) per token of each prompt variant: the full model's, then each seed's under its ``G``.

    ``variants`` maps a name to a data set (pairs, records, or :class:`~headkit.prompts.Prompts`), e.g. the retained and the forgotten variant
    of a contrastive fit. Returns one row per variant: ``full`` and one column per seed (``seed <n>``).

    Example:
        >>> import torch
        >>> import headkit as hk
        >>> from headkit import gating
        >>> from headkit.analyses.gate_fits import ContrastiveFit
        >>> model, tok = hk.models.tiny("llama")
        >>> ones = ContrastiveFit(G=torch.ones(1, 2, 4))   # gates of 1 change nothing
        >>> table = gating.variant_logprobs(model, {"copy": [("Tom eats apples . Tom eats", " apples")]}, ones, tokenizer=tok)
        >>> table.columns.tolist(), bool(abs(table.loc["copy", "full"] - table.loc["copy", "seed 0"]) < 1e-5)
        (['full', 'seed 0'], True)
    """
    import pandas as pd

    backend = _backend(model, tokenizer, "variant_logprobs", local=False)
    seeds = list(result.seeds) or list(range(result.G.shape[0]))
    rows = {}
    for name, data in variants.items():
        ex = _prompts(backend, data, "variant_logprobs")
        rows[name] = [sequence_logprob(backend, ex).mean().item()]
        rows[name] += [sequence_logprob(backend, ex, result.G[s]).mean().item() for s in range(len(seeds))]
    return pd.DataFrame.from_dict(rows, orient="index", columns=["full", *(f"seed {s}" for s in seeds)])


# ------------------------------------------------------------------------------------------------- helpers
def _backend(model: Any, tokenizer: Any, owner: str, local: bool = True) -> Backend:
    backend = get_backend(model, tokenizer)
    if local and backend.remote:
        raise fail(
            f"{owner} got a remote nnsight backend",
            "a local model: gradients of gates do not come back from a remote run",
            "run it on a local copy of the model (NNsightBackend(model, remote=False))",
        )
    return backend


def _prompts(backend: Backend, data: Any, owner: str) -> Prompts:
    if isinstance(data, Prompts):
        return data.require_targets(owner)
    if backend.tokenizer is None:
        raise fail(
            f"{owner} got text examples but the model has no tokenizer",
            "a tokenizer to turn prompts and targets into tokens",
            f"pass tokenizer=... to {owner.split()[0]}, or pass headkit.prompts.Prompts.from_tokens(prompt_ids, target_ids)",
        )
    return tokenize(backend.tokenizer, data).require_targets(owner)
