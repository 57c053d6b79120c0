"""Checks of model inputs that every backend runs before a forward pass, and real-token position ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

__all__ = ["real_token_positions", "check_inputs", "check_token_ids", "check_last_only", "check_positions"]


def real_token_positions(attention_mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
    """Position ids counting real tokens only, so a left-padded row sees the positions it has alone.

    This is what ``generate()`` and TransformerLens do; the transformers and nnsight backends pass it.

    Example:
        >>> import torch
        >>> from headkit.core.inputs import real_token_positions
        >>> real_token_positions(torch.tensor([[0, 0, 1, 1, 1]])).tolist()
        [[0, 0, 0, 1, 2]]
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def check_inputs(
    input_ids: object, attention_mask: object, vocab_size: int | None, owner: str
) -> None:
    """HeadkitError unless ``input_ids`` are token ids ``[batch, pos]`` in the vocabulary and the mask fits them.

    Every backend calls this before a forward pass, so a wrong dtype, an id beyond the vocabulary or a mask
    of another shape is named here instead of surfacing as a raw torch error (or as logits that match
    neither input).

    Example:
        >>> import torch
        >>> from headkit.core.inputs import check_inputs
        >>> check_inputs(torch.tensor([[1, 5, 6]]), None, 100, "example")   # fine: returns None
        >>> try:
        ...     check_inputs(torch.tensor([[1, 500]]), None, 100, "example")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        example got token id 500 in input_ids i64[1, 2]
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise fail(f"{owner} got input_ids {describe(input_ids)}", "token ids [batch, pos] with batch, pos >= 1",
                   "tokenize into a tensor, e.g. tokenizer(texts, return_tensors='pt').input_ids")
    check_token_ids(input_ids, vocab_size, owner)
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise fail(f"{owner} got attention_mask {describe(attention_mask)} for input_ids {describe(input_ids)}",
                   f"a 0/1 tensor of the same shape {list(input_ids.shape)}",
                   "pass the tokenizer's attention_mask for these same ids")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise fail(f"{owner} got attention_mask {describe(attention_mask)} with values other than 0 and 1",
                   "1 for real tokens, 0 for padding", "pass the tokenizer's attention_mask")


def check_token_ids(
    ids: torch.Tensor, vocab_size: int | None, owner: str, name: str = "input_ids", item: str = "token"
) -> None:
    """HeadkitError unless a tensor holds integer ids inside the vocabulary (and has data: not on meta).

    Used for the inputs of every backend and for the targets of the analyses.

    Example:
        >>> import torch
        >>> from headkit.core.inputs import check_token_ids
        >>> try:
        ...     check_token_ids(torch.tensor([3, -1]), 100, "evaluate", "targets", "target")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        evaluate got target id -1 in targets i64[2]
    """
    if ids.device.type == "meta":
        raise fail(f"{owner} got {name} on the meta device", "token ids with data (cpu or cuda)",
                   "build the ids on a real device (torch.tensor(...) or .to('cpu'))")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise fail(f"{owner} got {name} {describe(ids)} of dtype {ids.dtype}", "integer token ids",
                   f"convert with {name}.long() (and check they are ids, not embeddings or probabilities)")
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bad = low if low < 0 else high
        raise fail(f"{owner} got {item} id {bad} in {name} {describe(ids)}",
                   f"ids in 0..{vocab_size - 1 if vocab_size else 'vocab - 1'} (this model's vocabulary)",
                   "tokenize with this model's own tokenizer")


def check_last_only(last_only: bool, attention_mask: torch.Tensor | None) -> None:
    """``last_only`` reads the last column, which is every row's last real token only under left padding.

    Example:
        >>> import torch
        >>> from headkit.core.inputs import check_last_only
        >>> check_last_only(True, torch.tensor([[0, 1, 1], [1, 1, 1]]))   # left padding: fine, returns None
        >>> try:
        ...     check_last_only(True, torch.tensor([[1, 1, 0], [1, 1, 1]]))   # right padding
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        logits(last_only=True) got an attention mask whose last column has padding
    """
    if last_only and attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise fail(
            "logits(last_only=True) got an attention mask whose last column has padding",
            "left-padded inputs (every row ends in a real token)",
            'pad on the left (tokenizer.padding_side = "left"), or drop last_only and read each row\'s '
            "last real token with logits(..., positions=the last real tokens)",
        )


def check_positions(
    positions: Bool[torch.Tensor, "batch pos"] | None, input_ids: torch.Tensor, last_only: bool
) -> None:
    """``positions`` must be a bool ``[batch, pos]`` mask like ``input_ids``, and excludes ``last_only``.

    Example:
        >>> import torch
        >>> from headkit.core.inputs import check_positions
        >>> ids = torch.tensor([[1, 5, 6]])
        >>> check_positions(torch.tensor([[False, True, True]]), ids, last_only=False)   # fine: returns None
        >>> for positions, last_only in [(torch.tensor([[True, True]]), False), (ids.bool(), True)]:
        ...     try:
        ...         check_positions(positions, ids, last_only)
        ...     except ValueError as error:
        ...         print(str(error).split(";")[0])
        logits got positions bool[1, 2] for input_ids i64[1, 3]
        logits got both last_only=True and positions
    """
    if positions is None:
        return
    if last_only:
        raise fail(
            "logits got both last_only=True and positions",
            "one way to choose the positions to unembed",
            "pass positions with the last column set, or last_only=True alone",
        )
    if not isinstance(positions, torch.Tensor) or positions.dtype != torch.bool or positions.shape != input_ids.shape:
        raise fail(
            f"logits got positions {describe(positions)} for input_ids {describe(input_ids)}",
            f"a bool tensor of the input's shape {list(input_ids.shape)}, True where logits are wanted",
            "build it like the input, e.g. `positions = attention_mask.bool()` or a target mask",
        )
