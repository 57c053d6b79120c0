"""Token positions: half-open spans, bool position masks, and span membership for sentence pooling.

Interventions take positions as ranges ``[(start, end), ...]`` or bool masks ``[pos]`` / ``[batch, pos]``;
these helpers validate them when an intervention is built and resolve them against a sequence at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool

    Spans = Sequence[tuple[int, int]]
    PositionSpec = Union[Spans, Bool[torch.Tensor, " pos"], Bool[torch.Tensor, "batch pos"]]

__all__ = ["spans", "require_data", "position_spec", "position_mask", "membership", "spec_repr"]


def spans(spans: object, name: str) -> tuple[tuple[int, int], ...]:
    """Validate half-open, non-empty, non-negative token ranges."""
    if isinstance(spans, tuple) and len(spans) == 2 and all(isinstance(x, int) for x in spans):
        spans = [spans]  # a single (start, end)
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence) or len(spans) == 0:
        raise fail(
            f"{name} got {spans!r}",
            "a non-empty list of half-open token ranges [(start, end), ...]",
            f"pass e.g. {name}=[(4, 9)]",
        )
    out = []
    for span in spans:
        ok = (
            isinstance(span, (tuple, list))
            and len(span) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        )
        if not ok:
            raise fail(f"{name} got range {span!r}", "(start, end) pairs of ints", f"pass e.g. {name}=[(4, 9)]")
        start, end = span
        if start < 0:
            raise fail(
                f"{name} got range {span!r} with a negative start",
                "non-negative token positions",
                "count positions from the start of the sequence (position 0 is the first token)",
            )
        if end <= start:
            what = "an empty" if end == start else "a reversed"
            raise fail(
                f"{name} got {what} range {span!r}",
                "half-open ranges (start, end) with start < end",
                f"write the range as ({min(start, end)}, {max(start, end) + (1 if end == start else 0)})",
            )
        out.append((start, end))
    return tuple(out)


def require_data(tensor: torch.Tensor, name: str) -> None:
    """HeadkitError for a tensor on the meta device (shapes only, no values to compute with)."""
    if tensor.device.type == "meta":
        raise fail(
            f"{name} got a tensor on the meta device ({describe(tensor)})",
            "a tensor with data (cpu or cuda)",
            "build it on a real device, or load the model's weights before computing from them",
        )


def position_spec(spec: object, name: str) -> PositionSpec:
    if hasattr(spec, "__array__") and not isinstance(spec, torch.Tensor):  # numpy and friends
        raise fail(
            f"{name} got a {type(spec).__name__} {describe(spec)}",
            "a bool torch tensor [pos] or [batch, pos], or ranges [(start, end)]",
            f"convert with torch.as_tensor({name}).bool()",
        )
    if isinstance(spec, torch.Tensor):
        require_data(spec, name)
        if spec.dtype != torch.bool or spec.ndim not in (1, 2):
            raise fail(
                f"{name} got {describe(spec)}",
                "a bool tensor [pos] (same for every row) or [batch, pos] (one per row), or ranges [(start, end)]",
                f"convert with `{name}.bool()`",
            )
        return spec
    return spans(spec, name)


def position_mask(
    spec: PositionSpec, name: str, k_len: int, q_len: int, batch: int, device: torch.device, owner: object, where: str
) -> Bool[torch.Tensor, "batch pos"]:
    """A position spec as a bool mask [1 or batch, k_len] over absolute positions 0..k_len-1."""
    if not isinstance(spec, torch.Tensor):
        last = max(end for _, end in spec)
        if last > k_len:
            raise fail(
                f"{owner!r} at {where!r} got {name} range ending at {last}, but the sequence has {k_len} tokens",
                f"ranges within 0..{k_len}",
                "check the token positions (tokenizers often prepend a BOS token)",
            )
        pos = torch.arange(k_len, device=device)
        mask = torch.zeros(k_len, dtype=torch.bool, device=device)
        for start, end in spec:
            mask |= (pos >= start) & (pos < end)
        return mask[None]
    mask = spec.to(device)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape[0] != batch and spec.ndim == 2:
        raise fail(
            f"{owner!r} at {where!r} got a batch of {batch} rows, but its per-row {name} mask has {mask.shape[0]}",
            "one mask row per batch row",
            f"pass {name} of shape [{batch}, pos], or a [pos] mask shared by all rows",
        )
    n = mask.shape[1]
    if n == k_len:
        return mask
    if n < k_len and q_len < k_len:  # cached decoding: tokens generated after the mask was written stay unmasked
        return torch.nn.functional.pad(mask, (0, k_len - n))
    raise fail(
        f"{owner!r} at {where!r} got a {name} mask over {n} positions for a sequence of {k_len} tokens",
        f"a mask over exactly {k_len} positions",
        "build the mask from the same tokenized inputs",
    )


def membership(spans: Spans, k_len: int, device: torch.device, owner: object, where: str) -> torch.Tensor:
    """Row-normalised membership [n_spans, pos]: row i averages the positions of span i."""
    last = max(end for _, end in spans)
    if last > k_len:
        raise fail(
            f"{owner!r} at {where!r} got pool span ending at {last}, but the sequence has {k_len} tokens",
            f"spans within 0..{k_len}",
            "compute the sentence boundaries on the same tokenized text",
        )
    member = torch.zeros(len(spans), k_len, dtype=torch.float32, device=device)
    for i, (start, end) in enumerate(spans):
        member[i, start:end] = 1.0 / (end - start)
    return member


def spec_repr(spec: PositionSpec) -> str:
    return describe(spec) if isinstance(spec, torch.Tensor) else repr(list(spec))
