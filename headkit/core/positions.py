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
    """Validate half-open, non-empty, non-negative token ranges; a single ``(start, end)`` becomes a list of one.

    Example:
        >>> from headkit.core.positions import spans
        >>> spans((4, 9), "keys"), spans([(0, 2), [5, 7]], "keys")
        (((4, 9),), ((0, 2), (5, 7)))
        >>> try:
        ...     spans([(5, 2)], "keys")
        ... except ValueError as error:
        ...     given, fix = str(error).split("; expected ")[0], str(error).split("Fix: ")[1]
        ...     print(given, "->", fix)
        keys got a reversed range (5, 2) -> write the range as (2, 5)
    """
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
    """HeadkitError for a tensor on the meta device (shapes only, no values to compute with).

    Example:
        >>> import torch
        >>> from headkit.core.positions import require_data
        >>> require_data(torch.zeros(2, 3), "gate")   # has data: returns None
        >>> try:
        ...     require_data(torch.empty(2, 3, device="meta"), "gate")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        gate got a tensor on the meta device (f32[2, 3])
    """
    if tensor.device.type == "meta":
        raise fail(
            f"{name} got a tensor on the meta device ({describe(tensor)})",
            "a tensor with data (cpu or cuda)",
            "build it on a real device, or load the model's weights before computing from them",
        )


def position_spec(spec: object, name: str) -> PositionSpec:
    """Validate a position spec when an intervention is built: a bool mask ``[pos]`` / ``[batch, pos]`` or ranges.

    A bool tensor is returned as it is; anything else is validated as ranges (:func:`spans`).

    Example:
        >>> import torch
        >>> from headkit.core.positions import position_spec
        >>> position_spec(torch.tensor([True, False, True]), "keys"), position_spec((1, 3), "keys")
        (tensor([ True, False,  True]), ((1, 3),))
        >>> try:
        ...     position_spec(torch.tensor([1, 0, 1]), "keys")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        keys got i64[3]
    """
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
    """A position spec as a bool mask [1 or batch, k_len] over absolute positions 0..k_len-1.

    Ranges and a ``[pos]`` mask give one row shared by the batch. During cached decoding (``q_len < k_len``)
    a mask shorter than the keys is padded with False: tokens generated after it was written stay unmasked.

    Example:
        >>> import torch
        >>> from headkit.core.positions import position_mask
        >>> cpu = torch.device("cpu")
        >>> position_mask(((1, 3),), "keys", 5, 5, 2, cpu, "mask", "L0").int().tolist()
        [[0, 1, 1, 0, 0]]
        >>> position_mask(torch.tensor([True, False, True]), "keys", 5, 1, 2, cpu, "mask", "L0").int().tolist()
        [[1, 0, 1, 0, 0]]
        >>> try:
        ...     position_mask(((1, 9),), "keys", 5, 5, 2, cpu, "mask", "L0")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        'mask' at 'L0' got keys range ending at 9, but the sequence has 5 tokens
    """
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
    """Row-normalised membership [n_spans, pos]: row i averages the positions of span i.

    Example:
        >>> import torch
        >>> from headkit.core.positions import membership
        >>> member = membership(((0, 2), (2, 5)), 5, torch.device("cpu"), "pool", "L0")
        >>> member.shape, member.sum(-1).tolist()
        (torch.Size([2, 5]), [1.0, 1.0])
        >>> (member @ torch.arange(5.0)).tolist()   # the mean position of each span
        [0.5, 3.0]
    """
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
    """A short repr of a position spec for intervention reprs: a mask's dtype and shape, or the ranges.

    Example:
        >>> import torch
        >>> from headkit.core.positions import spec_repr
        >>> spec_repr(torch.ones(2, 5, dtype=torch.bool)), spec_repr(((1, 3), (4, 6)))
        ('bool[2, 5]', '[(1, 3), (4, 6)]')
    """
    return describe(spec) if isinstance(spec, torch.Tensor) else repr(list(spec))
