"""Induction-head candidates: the heads that attend most from the last token to the earlier copy of the answer.

On a copy task (``Tom eats apples . Tom eats`` -> `` apples``) an induction head looks from the last token
back to the token after the earlier ``eats``, the word being copied; :func:`induction_heads` ranks every head
by that attention, averaged over the prompts, from one pass that captures every head's pattern.
"""

from __future__ import annotations

from typing import Any

import torch

from headkit.core.errors import fail
from headkit.core.heads import Heads
from headkit.prompts import Prompts

__all__ = ["induction_heads", "copy_attention"]


def copy_attention(model: Any, task: Prompts) -> torch.Tensor:
    """Each head's attention from the last token to the earlier copy of the answer, mean over prompts ``[layer * head]``.

    The keys are the positions of the first sentence (the marked span of :func:`~headkit.prompts.copy_task`)
    holding the target token; heads are in
    ``Heads.all(n_layers, n_heads)`` order. ``model`` is any model headkit has an adapter for, or a backend.

    Example:
        >>> import headkit as hk
        >>> from headkit.analyses.induction import copy_attention
        >>> from headkit.prompts import copy_task
        >>> model, tok = hk.models.tiny("llama")
        >>> score = copy_attention(model, copy_task(tok))
        >>> score.shape, bool(((score >= 0) & (score <= 1)).all())
        (torch.Size([8]), True)
    """
    from headkit.backend import get_backend
    from headkit.core.interventions import capture_attention

    if not isinstance(task, Prompts) or task.marked_spans is None or task.left.targets is None:
        raise fail(
            f"copy_attention got {type(task).__name__}" + ("" if not isinstance(task, Prompts) else " without marked first sentences"),
            "a copy task: prompts with a target each and their first sentences marked",
            "build it with headkit.prompts.copy_task(tokenizer) (or your pairs: copy_task(tokenizer, pairs))",
        )
    view = task.left
    backend = get_backend(model)
    shape = backend.shape
    capture = capture_attention(Heads.all(shape.n_layers, shape.n_heads))
    with torch.no_grad():
        got = backend.run(view.input_ids, capture, attention_mask=view.attention_mask, last_only=True).captures
    target_keys = (view.input_ids == view.targets[:, None]) & view.marked  # [n, pos]
    last_row = got[capture].patterns[:, :, -1, :]  # [n, heads, key]
    return (last_row * target_keys[:, None, :]).sum(-1).mean(0)  # [heads]


def induction_heads(model: Any, task: Prompts, top: int = 4) -> Heads:
    """The ``top`` heads with the most attention from the last token to the earlier copy of the answer.

    Ranked by :func:`copy_attention`; the result is a :class:`headkit.Heads` set (sorted by layer and head). ``model`` is any model headkit has an adapter for, or a backend.

    Example:
        >>> import headkit as hk
        >>> from headkit.analyses.induction import copy_attention, induction_heads
        >>> from headkit.prompts import copy_task
        >>> model, tok = hk.models.tiny("llama")
        >>> task = copy_task(tok)
        >>> str(induction_heads(model, task, top=2))   # as a set: sorted by layer and head
        'L0H3 L1H3'
        >>> copy_attention(model, task).topk(2).indices.tolist()   # L1H3 first, then L0H3
        [7, 3]
    """
    from headkit.backend import get_backend

    shape = get_backend(model).shape
    score = copy_attention(model, task)
    best = score.topk(min(top, score.numel())).indices.tolist()
    every = Heads.all(shape.n_layers, shape.n_heads)
    return Heads([every.pairs[i] for i in best])
