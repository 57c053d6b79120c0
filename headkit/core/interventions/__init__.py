"""The five head interventions: zero-ablate, mean-ablate, gate, pre-softmax mask, attention capture.

Each factory returns a small immutable value with declared fields: validated when built, equal (and
hashing equal) to any other built from equal fields, printing like the call that made it, and callable as
a TransformerLens hook ``fn(activation, /, *, hook) -> activation`` (it reads its site and layer from
``hook.name``). Adapters place the same values on any framework. Activations arrive in the canonical
layouts of :mod:`headkit.core.sites`; nothing is edited in place unless asked. A capture holds no state:
what it reads is a result of the run, in :class:`headkit.core.captures.Captures`.

    >>> import headkit as hk
    >>> hk.zero_ablate("L0H0 L1H2") == hk.zero_ablate([(1, 2), (0, 0)])
    True
    >>> len({hk.zero_ablate("L0H0"), hk.zero_ablate("L0H0"), hk.capture_attention("L0H0")})
    2

    zero_ablate(heads)                      z[:, :, h] = 0
    mean_ablate(heads, means)               z[:, :, h] = mean of z over a reference set
    gate(values)                            z[:, :, h] *= values[layer, h]   (or per row [batch, layer, h])
    mask_attention(heads, keys, queries)    scores[:, h, q, k] = -inf before softmax
    capture_attention(heads, pool=None)     read pattern[:, h] (optionally pooled to sentences) into the run's Captures
"""

from headkit.core.interventions.attention import (
    CaptureAttention,
    MaskAttention,
    apply_masks,
    capture_attention,
    mask_attention,
)
from headkit.core.interventions.base import Intervention, check_interventions
from headkit.core.interventions.z_edits import Gate, MeanAblate, SumZ, ZeroAblate, gate, mean_ablate, zero_ablate

__all__ = [
    "Intervention",
    "ZeroAblate",
    "MeanAblate",
    "Gate",
    "MaskAttention",
    "CaptureAttention",
    "zero_ablate",
    "mean_ablate",
    "gate",
    "mask_attention",
    "capture_attention",
    "SumZ",
    "apply_masks",
    "check_interventions",
]
