"""Means of every head's output z over a reference set, for mean-ablation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from headkit.backend import get_backend
from headkit.core.errors import describe, fail
from headkit.core.interventions import SumZ
from headkit.readouts import NoLogits
from headkit.sweep import Rows, RowSizer, Variants, sweep

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = ["compute_means"]


def compute_means(
    model: Any,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    per_position: bool = False,
    rows_per_pass: int | None = None,
) -> Float[torch.Tensor, "layer head d_head"] | Float[torch.Tensor, "layer pos head d_head"]:
    """Mean of every head's ``z`` over a reference set, for :func:`mean_ablate`.

    Runs ``model`` (a transformers model, a TransformerLens bridge, an nnsight model, or a headkit backend) over
    ``input_ids [n, pos]``, ``rows_per_pass`` rows per forward pass (None: tuned by throughput from 32),
    without computing logits, reading ``z`` with a reader (:class:`~headkit.core.interventions.SumZ`) whose
    per-layer sums come back in each pass's captures, as captured patterns do. Padding positions (``attention_mask == 0``) are left out. Returns ``[n_layers, n_heads,
    d_head]`` averaged over rows and positions, or ``[n_layers, pos, n_heads, d_head]`` with
    ``per_position=True``.

    Example:
        >>> import torch, headkit as hk
        >>> model, tok = hk.models.tiny("gpt2")
        >>> reference = tok(["Tom eats apples", "the cat saw a dog"], return_tensors="pt", padding=True)
        >>> means = hk.compute_means(model, reference.input_ids, attention_mask=reference.attention_mask)
        >>> means.shape                                                        # [layer, head, d_head]
        torch.Size([2, 4, 16])
        >>> hk.compute_means(model, reference.input_ids, per_position=True).shape   # [layer, pos, head, d_head]
        torch.Size([2, 6, 4, 16])
        >>> ids = tok("Tom eats apples", return_tensors="pt").input_ids
        >>> own = hk.compute_means(model, ids, per_position=True)   # one row: each position's mean is its own z
        >>> backend = hk.get_backend(model)
        >>> torch.allclose(backend.logits(ids, hk.mean_ablate("L0H1 L1H0", own)), backend.logits(ids), atol=1e-5)
        True
    """
    backend = get_backend(model)
    shape = backend.shape
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise fail(
            f"compute_means got input_ids {describe(input_ids)}",
            "token ids [n_examples, pos] with at least one example",
            "tokenize the reference set into one padded tensor",
        )
    sizer = RowSizer(rows_per_pass, input_ids.shape[0], "compute_means", start=32)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or attention_mask.shape != input_ids.shape):
        raise fail(
            f"compute_means got attention_mask {describe(attention_mask)} for input_ids {describe(input_ids)}",
            "an attention mask of the same shape as input_ids",
            "pass the tokenizer's attention_mask",
        )
    weights_all = (
        torch.ones(input_ids.shape, dtype=torch.float64) if attention_mask is None else attention_mask.double().cpu()
    )
    sums: dict[int, torch.Tensor] = {}
    n = input_ids.shape[0]
    readers = Variants(1, lambda variant, prompt: (SumZ(weights_all[prompt], per_position),))
    passes = sweep(backend, input_ids, attention_mask, NoLogits(), readers, Rows(torch.zeros(n), torch.arange(n)),
                   rows_per_pass=sizer, trim=False)
    for got in passes:  # each pass's Captures: its one reader's per-layer sums
        for reader in got:
            for layer, total in got[reader].layers.items():
                sums[layer] = sums[layer] + total if layer in sums else total
    counts = weights_all.sum(0) if per_position else weights_all.sum()  # [pos] or scalar
    if (counts == 0).any():
        if per_position:
            raise fail(
                "compute_means found positions where every reference row is padding",
                "at least one real token at every position (per_position=True)",
                "use position-pooled means (per_position=False) or a reference set without padding",
            )
        raise fail(
            f"compute_means got an attention_mask {describe(attention_mask)} that is all padding",
            "at least one real token (1) in the reference set",
            "pass the tokenizer's attention_mask (1 for real tokens, 0 for padding)",
        )
    counts = counts[:, None, None] if per_position else counts
    dtype = next(iter(sums.values())).dtype
    means = torch.stack([sums[layer] / counts.to(dtype) for layer in range(shape.n_layers)])
    return means.float()
