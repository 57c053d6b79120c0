"""Fused batched Monte Carlo head masking: many keep/ablate masks evaluated in few forward passes.

The prompt batch is repeated once per mask and every batch row carries its own mask through a per-row
:func:`headkit.gate` (1 keeps a head, 0 zero-ablates it), so one forward pass evaluates many masks.
Logits are computed at each prompt's last token only. The number of masks per pass is tuned online by
measured throughput (doubling while evaluations per second improve) and halved on out-of-memory; every
chunk is real work, so tuning wastes nothing. Results equal one forward pass per mask.

    masks = montecarlo.bernoulli(2000, p_keep=0.3, n_layers=18, n_heads=4, seed=0)
    scores = montecarlo.evaluate(model, prompts, targets, masks, metric="top1")   # [n_masks, n_prompts]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail
from headkit.prompts import left_padded, single_tokens
from headkit.readouts import METRICS, NextToken
from headkit.sweep import Rows, RowSizer, gates, sweep

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

__all__ = ["evaluate", "evaluate_chunks", "calibrate", "bernoulli", "single_heads", "k_subsets",
           "masks_per_pass", "METRICS"]

def bernoulli(n: int, p_keep: float, n_layers: int, n_heads: int, *, seed: int = 0) -> Bool[torch.Tensor, "n layer head"]:
    """``n`` random masks, each head kept independently with probability ``p_keep`` (seeded, reproducible).

    Example:
        >>> from headkit.analyses.montecarlo import bernoulli
        >>> m = bernoulli(1000, 0.3, 12, 12, seed=0)
        >>> m.shape, round(m.float().mean().item(), 1)
        (torch.Size([1000, 12, 12]), 0.3)
    """
    sizes_ok = all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in (n, n_layers, n_heads))
    try:
        p_ok = 0.0 <= float(p_keep) <= 1.0
    except (TypeError, ValueError):
        p_ok = False
    if not sizes_ok or not p_ok:
        raise fail(
            f"bernoulli got n={n!r}, p_keep={p_keep!r}, n_layers={n_layers!r}, n_heads={n_heads!r}",
            "n, n_layers and n_heads whole numbers >= 1, and 0 <= p_keep <= 1",
            "pass e.g. bernoulli(10000, 0.3, n_layers, n_heads) with the model's shape",
        )
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_layers, n_heads, generator=g) < float(p_keep)


def single_heads(n_layers: int, n_heads: int) -> Bool[torch.Tensor, "n layer head"]:
    """One mask per head with only that head ablated, in (layer, head) order.

    Example:
        >>> from headkit.analyses.montecarlo import single_heads
        >>> single_heads(2, 3)[4].int().tolist()
        [[1, 1, 1], [1, 0, 1]]
    """
    masks = torch.ones(n_layers * n_heads, n_layers * n_heads, dtype=torch.bool)
    masks.fill_diagonal_(False)
    return masks.reshape(-1, n_layers, n_heads)


def k_subsets(
    k: int, n_layers: int, n_heads: int, *, n: int | None = None, seed: int = 0
) -> Bool[torch.Tensor, "n layer head"]:
    """Masks ablating ``k`` heads each: every k-subset in order (``n=None``), or ``n`` random distinct ones.

    Example:
        >>> from headkit.analyses.montecarlo import k_subsets
        >>> k_subsets(2, 1, 3).int()[:, 0].tolist()
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    """
    total = n_layers * n_heads
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
        raise fail(f"k_subsets got k={k!r}", f"1 <= k <= {total} (the model's heads)", "pass a smaller k")
    if n is None:
        subsets = torch.tensor(list(combinations(range(total), k)), dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(seed)
        subsets = torch.rand(n, total, generator=g).argsort(-1)[:, :k]
    masks = torch.ones(len(subsets), total, dtype=torch.bool)
    masks.scatter_(1, subsets, False)
    return masks.reshape(-1, n_layers, n_heads)


def calibrate(
    model: Any,
    prompts: Sequence[str] | Int[torch.Tensor, "prompt pos"],
    targets: Sequence[str] | Int[torch.Tensor, " prompt"],
    *,
    success: float | Sequence[float] = 0.5,
    n_masks: int = 64,
    seed: int = 0,
    attention_mask: Int[torch.Tensor, "prompt pos"] | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> float | tuple[float, ...]:
    """The keep probability at which random masks leave a ``success`` fraction of (mask, prompt) records top-1 correct.

    Evaluates ``n_masks`` masks whose keep probabilities are spread evenly over (0, 1) (mask i keeps each
    head with probability ``(i + 0.5) / n_masks``), fits a logistic curve ``P(success) = sigmoid(a + b p)``
    to their successes by maximum likelihood, and inverts it at each requested rate, so one set of masks
    serves several targets (pass a tuple, get a tuple). On tasks where masks differ a lot, a curve through
    many keep probabilities is far steadier than a search that re-measures a few masks at each step.
    Results are clipped to [0.01, 1].

    Example:
        >>> import headkit as hk
        >>> from headkit import montecarlo
        >>> model, tok = hk.models.tiny("llama")
        >>> prompt = "Tom eats apples . Tom eats"
        >>> target = model(**tok(prompt, return_tensors="pt")).logits[0, -1].argmax()  # what the full model says
        >>> low, high = montecarlo.calibrate(model, [prompt], target[None], tokenizer=tok, success=(0.25, 0.75),
        ...                                  n_masks=32, progress=False)
        >>> round(low, 2), round(high, 2)   # keep more heads for more successes
        (0.48, 0.88)
        >>> mid = montecarlo.calibrate(model, [prompt], target[None], tokenizer=tok, success=0.5, n_masks=32,
        ...                            progress=False)   # the same masks: the curve's midpoint lies halfway
        >>> round(mid, 6) == round((low + high) / 2, 6)
        True
    """
    from headkit.backend import get_backend

    rates = (success,) if isinstance(success, (int, float)) else tuple(success)
    if not rates or not all(isinstance(r, (int, float)) and 0.0 < float(r) < 1.0 for r in rates):
        raise fail(f"calibrate got success={success!r}", "target rates strictly between 0 and 1",
                   "pass e.g. success=0.5 or success=(0.25, 0.75)")
    if isinstance(n_masks, bool) or not isinstance(n_masks, int) or n_masks < 8:
        raise fail(f"calibrate got n_masks={n_masks!r}", "n_masks >= 8 (a curve needs points)", "pass e.g. n_masks=64")
    shape = get_backend(model, tokenizer).shape
    p = (torch.arange(n_masks, dtype=torch.float64) + 0.5) / n_masks
    u = torch.rand(n_masks, shape.n_layers, shape.n_heads, generator=torch.Generator().manual_seed(seed))
    outcomes = evaluate(model, prompts, targets, u < p[:, None, None].float(), attention_mask=attention_mask,
                        tokenizer=tokenizer, progress=progress)
    a, b = _logistic_fit(p, outcomes.double().sum(1), float(outcomes.shape[1]))
    if not b > 0:
        raise fail(
            f"calibrate found success does not rise with p_keep (fitted slope {b:.3g} over {n_masks} masks)",
            "a task the model solves more often with more heads kept",
            "check that the full model solves the prompts (study() filters them), or raise n_masks",
        )
    found = tuple(min(1.0, max(0.01, (math.log(r / (1 - r)) - a) / b)) for r in rates)
    return found[0] if isinstance(success, (int, float)) else found


def _logistic_fit(x: torch.Tensor, successes: torch.Tensor, trials: float) -> tuple[float, float]:
    """(a, b) maximising the Binomial(trials, sigmoid(a + b x)) log-likelihood of ``successes`` minus
    ``1e-3 * (a^2 + b^2) / 2`` (a ridge too weak to move real fits, which keeps a perfectly separated curve
    finite), by Newton's method."""
    design = torch.stack([torch.ones_like(x), x], 1)
    theta = torch.zeros(2, dtype=torch.float64)
    ridge = 1e-3
    for _ in range(200):
        q = torch.sigmoid(design @ theta)
        gradient = design.T @ (successes - trials * q) - ridge * theta
        hessian = design.T @ (design * (trials * q * (1 - q))[:, None]) + ridge * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hessian, gradient)
        theta = theta + step
        if float(step.abs().max()) < 1e-12:
            break
    return float(theta[0]), float(theta[1])


def evaluate(
    model: Any,
    prompts: Sequence[str] | Int[torch.Tensor, "prompt pos"],
    targets: Sequence[str] | Int[torch.Tensor, " prompt"],
    masks: Bool[torch.Tensor, "mask layer head"] | Float[torch.Tensor, "mask layer head"],
    *,
    metric: str = "top1",
    distractors: Sequence[str] | Int[torch.Tensor, " prompt"] | None = None,
    attention_mask: Int[torch.Tensor, "prompt pos"] | None = None,
    tokenizer: Any = None,
    rows_per_pass: int | None = None,
    progress: bool = True,
) -> Float[torch.Tensor, "mask prompt"]:
    """Evaluate every mask on every prompt, many masks per forward pass; returns ``[n_masks, n_prompts]``.

    ``prompts`` are strings (tokenised here, left-padded) or token ids ``[prompt, pos]`` (left-padded, with
    ``attention_mask``); ``targets`` (and ``distractors`` for ``logit_diff``) are single-token strings or
    token ids ``[prompt]``. ``masks`` are ``[n_masks, n_layers, n_heads]``, 1/True = keep, 0/False =
    zero-ablate (fractions scale the head). A forward pass evaluates whole masks on every prompt, at most
    ``rows_per_pass`` rows (masks x prompts, at least one mask); None tunes it by measured throughput.

    In a torch.distributed process group (e.g. under ``torchrun``) each rank evaluates one contiguous part
    of the masks (cut at whole passes, :mod:`headkit.shards`) and every rank returns all scores; with a fixed
    ``rows_per_pass`` they equal a one-process run's bit for bit.

    Example:
        >>> import headkit as hk
        >>> from headkit import montecarlo
        >>> model, tok = hk.models.tiny("llama")
        >>> masks = montecarlo.bernoulli(8, 0.5, 2, 4)
        >>> montecarlo.evaluate(model, ["Tom eats apples . Tom eats"], [" apples"], masks, tokenizer=tok,
        ...                     progress=False).shape
        torch.Size([8, 1])
    """
    from headkit.shards import assemble, world

    here = world()
    kw = dict(metric=metric, distractors=distractors, attention_mask=attention_mask, tokenizer=tokenizer,
              rows_per_pass=rows_per_pass, progress=progress and here.first)
    if here.size == 1:
        return torch.cat(list(evaluate_chunks(model, prompts, targets, masks, **kw)))
    chunks = evaluate_chunks(model, prompts, targets, masks, **kw)  # checks the inputs on every rank
    n_masks, n_prompts = masks.shape[0], chunks.n_prompts
    mine = here.part(n_masks, block=masks_per_pass(rows_per_pass, n_prompts))
    scores = torch.cat(list(chunks.over(masks[mine.start : mine.stop]))) if len(mine) else torch.zeros(0, n_prompts)
    return assemble(here.gather((mine.start, scores)), n_masks, like=scores)


def masks_per_pass(rows_per_pass: int | None, n_prompts: int) -> int:
    """Masks in each forward pass at a fixed ``rows_per_pass`` (whole masks, at least one); 1 when it is tuned.

    Work is split across ranks at multiples of it, so every pass holds the masks it holds in one process.

    Example:
        >>> from headkit.analyses.montecarlo import masks_per_pass
        >>> masks_per_pass(64, 10), masks_per_pass(4, 10), masks_per_pass(None, 10)
        (6, 1, 1)
    """
    return max(1, rows_per_pass // n_prompts) if rows_per_pass else 1


def evaluate_chunks(
    model: Any,
    prompts: Sequence[str] | Int[torch.Tensor, "prompt pos"],
    targets: Sequence[str] | Int[torch.Tensor, " prompt"],
    masks: Bool[torch.Tensor, "mask layer head"] | Float[torch.Tensor, "mask layer head"],
    *,
    metric: str = "top1",
    distractors: Sequence[str] | Int[torch.Tensor, " prompt"] | None = None,
    attention_mask: Int[torch.Tensor, "prompt pos"] | None = None,
    tokenizer: Any = None,
    rows_per_pass: int | None = None,
    progress: bool = True,
) -> Iterator[Float[torch.Tensor, "chunk prompt"]]:
    """:func:`evaluate`, chunk by chunk: yields the scores ``[m, n_prompts]`` of each forward pass's masks, in order.

    Inputs are checked at the call (not at the first ``next``). Use it to stream outcomes into
    accumulators or to disk while a long run goes on. It evaluates every mask in this process (it does not
    split work across ranks; :func:`evaluate` and the study do).

    Example:
        >>> import headkit as hk
        >>> from headkit import montecarlo
        >>> model, tok = hk.models.tiny("llama")
        >>> masks = montecarlo.bernoulli(8, 0.5, 2, 4)
        >>> chunks = montecarlo.evaluate_chunks(model, ["Tom eats apples . Tom eats"], [" apples"], masks,
        ...                                     tokenizer=tok, rows_per_pass=4, progress=False)
        >>> [c.shape[0] for c in chunks]
        [4, 4]
    """
    from headkit.backend import get_backend

    backend = get_backend(model, tokenizer)
    shape = backend.shape
    if metric not in METRICS:
        raise fail(f"evaluate got metric {metric!r}", f"one of {list(METRICS)}", "pass metric='top1' (or 'logprob')")
    tok = tokenizer if tokenizer is not None else getattr(backend, "tokenizer", None)
    ids, attn = left_padded(prompts, attention_mask, tok)
    vocab = backend.vocab_size
    target_ids = single_tokens(targets, "targets", prompts, ids.shape[0], tok, vocab)
    other_ids = None
    if metric == "logit_diff":
        if distractors is None:
            raise fail("evaluate got metric='logit_diff' without distractors", "one distractor per prompt",
                       "pass distractors=[' wrong answer', ...]")
        other_ids = single_tokens(distractors, "distractors", prompts, ids.shape[0], tok, vocab)
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3 or tuple(masks.shape[1:]) != (shape.n_layers, shape.n_heads):
        raise fail(
            f"evaluate got masks {describe(masks)}",
            f"a tensor [n_masks, {shape.n_layers}, {shape.n_heads}] (1 = keep, 0 = ablate)",
            f"sample them with montecarlo.bernoulli(n, p_keep, {shape.n_layers}, {shape.n_heads})",
        )
    if masks.shape[0] == 0:
        raise fail("evaluate got 0 masks", "at least one mask", "pass masks [n_masks, n_layers, n_heads] with n >= 1")
    if masks.device.type == "meta" or (masks.is_floating_point() and not bool(torch.isfinite(masks).all())):
        raise fail(f"evaluate got masks {describe(masks)} with NaN/inf values (or on the meta device)",
                   "finite masks: 1 keeps a head, 0 ablates it, fractions scale it",
                   "sample them with montecarlo.bernoulli, or torch.nan_to_num the ones you built")
    n_prompts = ids.shape[0]
    RowSizer(rows_per_pass, masks.shape[0] * n_prompts, "evaluate", step=n_prompts)  # names a bad size now
    readout = NextToken(target_ids, metric, other_ids)

    def over(some: torch.Tensor) -> Iterator[torch.Tensor]:
        sizer = RowSizer(rows_per_pass, some.shape[0] * n_prompts, "evaluate", step=n_prompts)
        passes = sweep(backend, ids, attn, readout, gates(some.float()), Rows.product(some.shape[0], n_prompts),
                       rows_per_pass=sizer, progress=progress, desc="masks", unit="row")
        return (scores.reshape(-1, n_prompts).cpu() for scores in passes)

    return _Chunks(over(masks), over, n_prompts)


class _Chunks:
    """The chunks of :func:`evaluate_chunks` (an iterator), and ``over(masks)``: the same evaluation on other
    masks of the same shape (checked inputs, reused: the study runs its parts of the masks through it)."""

    def __init__(self, chunks: Iterator[torch.Tensor], over: Any, n_prompts: int) -> None:
        self._chunks, self.over, self.n_prompts = chunks, over, n_prompts

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._chunks)
