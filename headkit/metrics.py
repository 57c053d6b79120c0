"""Metrics on next-token predictions: last-token logits, target log-probability, top-1 success, KL.

All take logits ``[batch, pos, vocab]`` and, for padded batches, the attention mask ``[batch, pos]``; the
prediction of a row is read at its last real token (left or right padding both work).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

__all__ = ["last_token_logits", "target_logprob", "top1_success", "kl_divergence"]


def last_token_logits(
    logits: Float[torch.Tensor, "batch pos vocab"], attention_mask: Int[torch.Tensor, "batch pos"] | None = None
) -> Float[torch.Tensor, "batch vocab"]:
    """The logits at each row's last real token.

    Example:
        >>> import torch
        >>> from headkit.metrics import last_token_logits
        >>> logits = torch.arange(12.0).reshape(2, 3, 2)
        >>> last_token_logits(logits, torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist()
        [[2.0, 3.0], [10.0, 11.0]]
    """
    if logits.ndim != 3:
        raise fail(f"last_token_logits got logits {describe(logits)}", "logits [batch, pos, vocab]", "pass model logits")
    if attention_mask is None:
        return logits[:, -1]
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * positions).argmax(-1).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


def target_logprob(
    logits: Float[torch.Tensor, "batch pos vocab"],
    targets: Int[torch.Tensor, " batch"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
) -> Float[torch.Tensor, " batch"]:
    """log p(target) of the next token after each row's last real token.

    Example:
        >>> import torch
        >>> from headkit.metrics import target_logprob
        >>> target_logprob(torch.zeros(1, 2, 4), torch.tensor([3])).exp().item()
        0.25
    """
    last = last_token_logits(logits, attention_mask).float()
    return torch.log_softmax(last, -1).gather(-1, targets.to(last.device)[:, None])[:, 0]


def top1_success(
    logits: Float[torch.Tensor, "batch pos vocab"],
    targets: Int[torch.Tensor, " batch"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
) -> Bool[torch.Tensor, " batch"]:
    """Whether the most likely next token is the target, per row.

    Example:
        >>> import torch
        >>> from headkit.metrics import top1_success
        >>> top1_success(torch.tensor([[[0.0, 5.0, 1.0]]]), torch.tensor([1])).tolist()
        [True]
    """
    return last_token_logits(logits, attention_mask).argmax(-1) == targets.to(logits.device)


def kl_divergence(
    p_logits: Float[torch.Tensor, "*batch vocab"], q_logits: Float[torch.Tensor, "*batch vocab"]
) -> Float[torch.Tensor, "*batch"]:
    """KL(P || Q) between the distributions of two sets of logits, over the last axis, in nats.

    Example:
        >>> import torch
        >>> from headkit.metrics import kl_divergence
        >>> kl_divergence(torch.zeros(3), torch.zeros(3)).item()
        0.0
    """
    log_p = torch.log_softmax(p_logits.float(), -1)
    log_q = torch.log_softmax(q_logits.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
