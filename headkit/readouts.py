"""Readouts: what the sweep engine reads from each row of a forward pass, declared once.

A readout says where it needs logits (``at``: each row's last token, chosen positions, or none) and turns
them into one value per row (or per position). The engine computes logits only where the readout asks.

    NextToken(targets, metric="top1")     top-1 / log p / margin / logit difference of the next token
    SequenceLogProb(target_mask)          mean log p of each row's target tokens (a continuation)
    KL(reference, positions)              KL(reference || row) at chosen positions, per position
    NoLogits()                            no logits at all: the pass's Captures (what its readers collected)

The scoring functions on ``[rows, vocab]`` logits are public too: :func:`score_next_token`, :func:`kl`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

__all__ = ["METRICS", "Readout", "NextToken", "SequenceLogProb", "KL", "NoLogits", "score_next_token", "kl"]

METRICS = ("top1", "logprob", "logit_diff", "margin", "prob")
"""Next-token metrics. top1: 1.0 where the target is the most likely next token; logprob: log p(target);
logit_diff: logit(target) - logit(distractor); margin: logit(target) - the largest other logit (> 0 exactly
where the target is the unique top-1 token); prob: p(target)."""

At = Literal["last", "positions", "none"]


def score_next_token(
    logits: Float[torch.Tensor, "rows vocab"],
    targets: Int[torch.Tensor, " rows"],
    metric: str = "top1",
    distractors: Int[torch.Tensor, " rows"] | None = None,
) -> Float[torch.Tensor, " rows"]:
    """One next-token metric per row, from that row's logits (bf16/fp16 logits are scored in fp32).

    Example:
        >>> import torch
        >>> from headkit.readouts import score_next_token
        >>> logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
        >>> score_next_token(logits, torch.tensor([1, 1])).tolist(), score_next_token(logits, torch.tensor([1, 1]), "margin").tolist()
        ([1.0, 0.0], [2.0, -2.0])
    """
    if metric not in METRICS:
        raise fail(f"score got metric {metric!r}", f"one of {list(METRICS)}", "pass metric='top1' (or 'logprob')")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    t = targets.to(logits.device)[:, None]
    if metric == "top1":
        return (logits.argmax(-1) == t[:, 0]).float()
    if metric == "logprob":
        return torch.log_softmax(logits, -1).gather(-1, t)[:, 0]
    if metric == "margin":
        return logits.gather(-1, t)[:, 0] - logits.scatter(-1, t, float("-inf")).amax(-1)
    if metric == "prob":
        return logits.softmax(-1).gather(-1, t)[:, 0]
    if distractors is None:
        raise fail("score got metric='logit_diff' without distractors", "one distractor per row",
                   "pass distractors=[' wrong answer', ...]")
    return logits.gather(-1, t)[:, 0] - logits.gather(-1, distractors.to(logits.device)[:, None])[:, 0]


def kl(
    reference_logp: Float[torch.Tensor, "n vocab"], logits: Float[torch.Tensor, "n vocab"], temperature: float = 1.0
) -> Float[torch.Tensor, " n"]:
    """KL(P || Q) in nats, P given as log-probabilities, Q as logits (divided by ``temperature``); >= 0.

    Example:
        >>> import torch
        >>> from headkit.readouts import kl
        >>> kl(torch.log_softmax(torch.zeros(2, 3), -1), torch.zeros(2, 3)).tolist()
        [0.0, 0.0]
    """
    logq = torch.log_softmax(logits.float() / temperature, -1)
    logp = reference_logp.to(logq.device)
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0)


class Readout:
    """Base of the readouts: ``at`` says where logits are needed; calling it scores one forward pass.

    ``variant`` and ``prompt`` are each row's indices (``[rows]``), ``cols`` the columns of the prompts'
    padded ids this pass kept (``slice(0, width)``: the engine cuts trailing padding no row needs).

    Example:
        >>> from headkit.readouts import NextToken, NoLogits, Readout
        >>> import torch
        >>> [r.at for r in (NextToken(torch.tensor([1])), NextToken(torch.tensor([1]), position=2), NoLogits())]
        ['last', 'positions', 'none']
    """

    at: At = "last"

    def positions(
        self, variant: Int[torch.Tensor, " rows"], prompt: Int[torch.Tensor, " rows"], cols: slice
    ) -> Bool[torch.Tensor, "rows pos"]:
        """Where the rows need logits (``at == "positions"`` only)."""
        raise NotImplementedError

    def __call__(
        self, logits: torch.Tensor | None, variant: torch.Tensor, prompt: torch.Tensor, cols: slice
    ) -> torch.Tensor | None:
        raise NotImplementedError


class NextToken(Readout):
    """A next-token metric at each row's last token (left-padded prompts), or at ``position``: one value per row.

    Example:
        >>> import torch
        >>> from headkit.readouts import NextToken
        >>> read = NextToken(torch.tensor([2]), "logprob")
        >>> read(torch.zeros(3, 4), torch.arange(3), torch.zeros(3, dtype=torch.long), slice(None)).exp().tolist()
        [0.25, 0.25, 0.25]
    """

    at: At = "last"

    def __init__(
        self, targets: Int[torch.Tensor, " prompt"], metric: str = "top1",
        distractors: Int[torch.Tensor, " prompt"] | None = None, position: int | None = None,
    ) -> None:
        if metric not in METRICS:
            raise fail(f"NextToken got metric {metric!r}", f"one of {list(METRICS)}", "pass metric='top1'")
        if metric == "logit_diff" and distractors is None:
            raise fail("NextToken got metric='logit_diff' without distractors", "one distractor per prompt",
                       "pass distractors=[' wrong answer', ...]")
        self.targets, self.metric, self.distractors, self.position = targets, metric, distractors, position
        self.at = "last" if position is None else "positions"

    def positions(self, variant, prompt, cols):  # type: ignore[override]
        where = torch.zeros(len(prompt), cols.stop - cols.start, dtype=torch.bool)
        where[:, self.position - cols.start] = True
        return where

    def __call__(self, logits, variant, prompt, cols):  # type: ignore[override]
        others = None if self.distractors is None else self.distractors[prompt]
        return score_next_token(logits, self.targets[prompt], self.metric, others)


class SequenceLogProb(Readout):
    """Each row's mean log-probability per target token (``target_mask``: True on the target tokens).

    The logits predicting a target sit one position before it; only those positions are unembedded.

    Example:
        >>> import torch
        >>> from headkit.readouts import SequenceLogProb
        >>> read = SequenceLogProb(torch.tensor([[1, 5, 6]]), torch.tensor([[False, True, True]]))
        >>> read.positions(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), slice(None)).tolist()
        [[True, True, False]]
    """

    at: At = "positions"

    def __init__(self, input_ids: Int[torch.Tensor, "prompt pos"], target_mask: Bool[torch.Tensor, "prompt pos"]) -> None:
        if not isinstance(target_mask, torch.Tensor) or target_mask.dtype != torch.bool or target_mask.shape != input_ids.shape:
            raise fail(f"SequenceLogProb got target_mask {describe(target_mask)} for ids {describe(input_ids)}",
                       "a bool mask of the ids' shape, True on target tokens", "build it with headkit.prompts.tokenize(tok, pairs).right.target_mask")
        self.input_ids, self.target_mask = input_ids, target_mask

    def positions(self, variant, prompt, cols):  # type: ignore[override]
        target = self.target_mask[prompt][:, cols]
        where = torch.zeros_like(target)
        where[:, :-1] = target[:, 1:]
        return where

    def __call__(self, logits, variant, prompt, cols):  # type: ignore[override]
        where = self.positions(variant, prompt, cols)
        target = self.target_mask[prompt][:, cols]
        labels = self.input_ids[prompt][:, cols][:, 1:][target[:, 1:]]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
        logp = torch.log_softmax(logits, -1).gather(-1, labels.to(logits.device)[:, None])[:, 0]
        row_of = where.nonzero()[:, 0].to(logp.device)
        total = torch.zeros(len(prompt), dtype=logp.dtype, device=logp.device).index_add(0, row_of, logp)
        return total / where.sum(-1).to(logp.device)


class KL(Readout):
    """KL(reference || row) at chosen positions of each row.

    ``reference_logp`` holds the reference log-probabilities ``[n, vocab]`` of the cells of ``reference_at``
    (a bool ``[pos]`` mask; cell ``k`` is its k-th True position); ``where(variant) -> Bool[rows, pos]`` picks
    each row's positions among them. Reads ``(variant, position, kl)`` of every chosen cell, row-major.

    Example:
        >>> import torch
        >>> from headkit.readouts import KL
        >>> at = torch.tensor([False, True, True])
        >>> read = KL(torch.log_softmax(torch.zeros(2, 5), -1), at, lambda v: at.expand(len(v), 3))
        >>> v, pos, value = read(torch.zeros(2, 5), torch.tensor([4]), torch.tensor([0]), slice(0, 3))
        >>> v.tolist(), pos.tolist(), value.tolist()
        ([4, 4], [1, 2], [0.0, 0.0])
    """

    at: At = "positions"

    def __init__(self, reference_logp, reference_at, where, temperature: float = 1.0) -> None:  # type: ignore[no-untyped-def]
        self.reference_logp, self.where, self.temperature = reference_logp, where, temperature
        self.index = torch.full(reference_at.shape, -1, dtype=torch.long)
        self.index[reference_at] = torch.arange(int(reference_at.sum()))

    def positions(self, variant, prompt, cols):  # type: ignore[override]
        return self.where(variant)[:, cols]

    def __call__(self, logits, variant, prompt, cols):  # type: ignore[override]
        row, col = self.positions(variant, prompt, cols).nonzero(as_tuple=True)
        col = col + cols.start
        return variant[row], col, kl(self.reference_logp[self.index[col]], logits, self.temperature)


class NoLogits(Readout):
    """No logits: the pass runs for its reader interventions (captures, sums of z); reads their Captures.

    Example:
        >>> import torch
        >>> from headkit.core.captures import Captures
        >>> from headkit.readouts import NoLogits
        >>> got = Captures()
        >>> NoLogits()(got, torch.arange(2), torch.arange(2), slice(0, 3)) is got
        True
    """

    at: At = "none"

    def __call__(self, captures, variant, prompt, cols):  # type: ignore[override]
        return captures
