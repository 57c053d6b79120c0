"""The row-sweep engine: prompts x variants -> readouts, many variants per forward pass, one per batch row.

Every analysis is a choice of variants plus a readout. A *variant* is what differs between rows (a gate
``[layer, head]``, a key mask ``[pos]``, a reader); a *row* pairs one variant with one prompt. The engine
packs rows into forward passes, sizes the passes by one policy (measured throughput, halving on
out-of-memory), cuts trailing padding no row of a pass needs, computes logits only where the readout asks
(each row's last token, chosen positions, or none), and keeps gradients when asked.

    rows = Rows.product(n_variants, n_prompts)          # every variant on every prompt, variant-major
    for values in sweep(backend, ids, mask, readout, gates(masks), rows):   # one tensor per pass
        ...

Rows per pass is the one name for the size of a pass (``rows_per_pass``; a :class:`RowSizer` carries the
measured size across calls). Rows of one *group* (e.g. one mask over all prompts) always share a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail
from headkit.core.interventions import Intervention, gate, mask_attention
from headkit.readouts import Readout

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

    from headkit.backend import Backend
    from headkit.core.heads import HeadsLike

__all__ = ["Variants", "gates", "key_masks", "fixed", "Rows", "RowSizer", "sweep", "sweep_all", "is_out_of_memory"]


# ------------------------------------------------------------------------------------------------- variants
class Variants:
    """What differs between rows: ``build(variant, prompt)`` gives the interventions of a pass's rows.

    ``variant`` and ``prompt`` are the rows' indices ``[rows]``; the interventions act per row (per-row
    gate values, per-row key masks) or on every row alike.

    Example:
        >>> import torch
        >>> from headkit.sweep import gates
        >>> v = gates(torch.ones(5, 2, 4))
        >>> len(v), v.build(torch.tensor([0, 3]), torch.tensor([0, 0]))[0].values.shape
        (5, torch.Size([2, 2, 4]))
    """

    def __init__(self, n: int, build: Callable[[torch.Tensor, torch.Tensor], tuple[Intervention, ...]]) -> None:
        self.n, self.build = n, build

    def __len__(self) -> int:
        return self.n


def gates(values: Float[torch.Tensor, "variant layer head"]) -> Variants:
    """One gate per variant: row r is gated by ``values[variant[r]]`` (1 keeps a head, 0 ablates it).

    Gradients flow to ``values`` when it requires them.

    Example:
        >>> import torch
        >>> from headkit.sweep import gates
        >>> len(gates(torch.rand(7, 2, 4)))
        7
    """
    return Variants(values.shape[0], lambda variant, prompt: (gate(values[variant.to(values.device)]),))


def key_masks(heads: HeadsLike, keys: Bool[torch.Tensor, "variant pos"]) -> Variants:
    """One key mask per variant: in row r, ``heads`` give zero attention to the keys ``keys[variant[r]]``.

    Example:
        >>> import torch
        >>> from headkit.sweep import key_masks
        >>> v = key_masks("L0H1", torch.eye(3, dtype=torch.bool))
        >>> v.build(torch.tensor([2]), torch.tensor([0]))[0]
        MaskAttention(heads='L0H1', keys=bool[1, 3])
    """
    return Variants(keys.shape[0], lambda variant, prompt: (mask_attention(heads, keys=keys[variant]),))


def fixed(*interventions: Intervention) -> Variants:
    """A single variant: the same interventions (possibly none) on every row.

    Example:
        >>> from headkit.sweep import fixed
        >>> len(fixed())
        1
    """
    return Variants(1, lambda variant, prompt: interventions)


# ------------------------------------------------------------------------------------------------- rows
class Rows:
    """The (variant, prompt) pair of every row, in evaluation order, and the size of the groups kept together.

    Example:
        >>> from headkit.sweep import Rows
        >>> rows = Rows.product(2, 3)
        >>> rows.variant.tolist(), rows.prompt.tolist(), rows.group
        ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], 3)
    """

    def __init__(self, variant: Int[torch.Tensor, " rows"], prompt: Int[torch.Tensor, " rows"], group: int = 1) -> None:
        if variant.shape != prompt.shape or variant.ndim != 1 or len(variant) % group:
            raise fail(f"Rows got {len(variant)} variants, {len(prompt)} prompts, groups of {group}",
                       "one variant and one prompt index per row, a whole number of groups",
                       "build rows with Rows.product(n_variants, n_prompts)")
        self.variant, self.prompt, self.group = variant.long().cpu(), prompt.long().cpu(), group

    @staticmethod
    def product(n_variants: int, n_prompts: int) -> Rows:
        """Every variant on every prompt, variant-major; one group per variant."""
        return Rows(torch.arange(n_variants).repeat_interleave(n_prompts), torch.arange(n_prompts).repeat(n_variants),
                    group=n_prompts)

    def __len__(self) -> int:
        return len(self.variant)


# ------------------------------------------------------------------------------------------------- sizing
class RowSizer:
    """Rows per forward pass: fixed, or tuned (double while evaluations per second improve; halve on OOM).

    Every pass is real work, so tuning wastes nothing. Tuning starts at ``start`` rows (default ``step``,
    one group of rows that must share a pass) and doubles from there, up to ``total``. Pass one sizer to
    several calls to keep what it measured (the gate fitter does, step after step).

    Example:
        >>> from headkit.sweep import RowSizer
        >>> s = RowSizer(None, total=64)
        >>> s.size, s.record(1, 1.0), s.size
        (1, None, 2)
        >>> s = RowSizer(None, total=64, start=16)          # a known good size to grow from
        >>> s.size, s.record(16, 1.0), s.size, s.record(32, 2.0), s.size   # 32 rows were no faster: back to 16
        (16, None, 32, None, 16)
    """

    def __init__(
        self,
        fixed: int | None,
        total: int,
        owner: str = "sweep",
        name: str = "rows_per_pass",
        step: int = 1,
        start: int | None = None,
    ) -> None:
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1):
            raise fail(f"{owner} got {name}={fixed!r}", "a whole number >= 1, or None to tune it by throughput",
                       f"pass e.g. {name}=64")
        first = fixed or max(step, min(start or step, max(1, total)))
        self.size, self.best, self.settled, self.total = first, 0.0, fixed is not None, max(1, total)

    def record(self, rows: int, seconds: float) -> None:
        """Record one pass's rows and time; double while the rate improves by 5 %, then settle."""
        if self.settled:
            return
        rate = rows / max(seconds, 1e-9)
        if rate > self.best * 1.05:
            self.best = rate
            if self.size * 2 <= self.total:
                self.size *= 2
                return
        else:
            self.size = max(1, self.size // 2)  # the last doubling did not pay
        self.settled = True

    def out_of_memory(self) -> None:
        """Halve after an allocation failure, and stop growing."""
        self.size = max(1, self.size // 2)
        self.settled = True


_OOM_TEXTS = ("out of memory", "can't allocate memory", "alloc_failed", "failed to allocate")
"""Fallback for allocation failures raised as plain RuntimeErrors (CPU allocator, MPS, cuBLAS/cuDNN workspaces)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure on any device: by type first, by message as a fallback.

    ``torch.OutOfMemoryError`` (CUDA; also ``torch.cuda.OutOfMemoryError``) and Python's ``MemoryError`` are
    recognised by type; the CPU allocator ("can't allocate memory"), MPS ("MPS backend out of memory") and
    cuBLAS/cuDNN workspace failures ("..._ALLOC_FAILED") raise plain RuntimeErrors, recognised by text.

    Example:
        >>> from headkit.sweep import is_out_of_memory
        >>> is_out_of_memory(MemoryError()), is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
        (True, True)
        >>> is_out_of_memory(RuntimeError("shape mismatch"))
        False
    """
    types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                  if isinstance(t, type))
    if isinstance(error, (MemoryError, *types)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(t in text for t in _OOM_TEXTS)


# ------------------------------------------------------------------------------------------------- the engine
def sweep(
    backend: Backend,
    input_ids: Int[torch.Tensor, "prompt pos"],
    attention_mask: Int[torch.Tensor, "prompt pos"] | None,
    readout: Readout,
    variants: Variants | None = None,
    rows: Rows | None = None,
    *,
    rows_per_pass: int | RowSizer | None = None,
    grad: bool = False,
    trim: bool = True,
    progress: bool = False,
    desc: str = "rows",
    unit: str = "row",
) -> Iterator[Any]:
    """Evaluate ``rows`` (default: every variant on every prompt), one readout value set per forward pass.

    Yields what ``readout`` returns for each pass's rows, in row order; a pass holds whole groups of rows
    (at least one). ``rows_per_pass`` is a fixed size, a :class:`RowSizer` to share, or None (tuned by
    measured throughput from 1 row, halving on out-of-memory). Prompts are padded token ids (left-padded
    for last-token readouts); trailing columns that are padding in every row of a pass are cut off
    (``trim=False`` keeps every column, e.g. for per-position sums). Without
    ``grad`` the passes run under ``torch.no_grad()``; the grad mode is never changed around the yield.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.readouts import NextToken
        >>> from headkit.sweep import Rows, gates, sweep
        >>> model, tok = hk.models.tiny("llama")
        >>> backend = hk.get_backend(model)
        >>> ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 5]])
        >>> masks = torch.ones(3, 2, 4)
        >>> out = list(sweep(backend, ids, None, NextToken(torch.tensor([5, 6]), "logprob"), gates(masks),
        ...                  rows_per_pass=4))
        >>> [o.shape[0] for o in out]      # two masks (4 rows) in the first pass, one in the second
        [4, 2]
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise fail(f"sweep got input_ids {describe(input_ids)}", "padded token ids [n_prompts, pos], n_prompts >= 1",
                   "tokenise the prompts into one padded tensor (left-padded for last-token readouts)")
    if not isinstance(readout, Readout):
        raise fail(f"sweep got readout {readout!r:.60}", "a headkit.readouts readout (NextToken, SequenceLogProb, KL, "
                   "NoLogits)", "pass e.g. NextToken(targets, 'logprob')")
    variants = variants if variants is not None else fixed()
    rows = rows if rows is not None else Rows.product(len(variants), input_ids.shape[0])
    if len(rows) and (int(rows.variant.max()) >= len(variants) or int(rows.prompt.max()) >= input_ids.shape[0]
                      or int(rows.variant.min()) < 0 or int(rows.prompt.min()) < 0):
        raise fail(f"sweep got rows naming variant {int(rows.variant.max())} and prompt {int(rows.prompt.max())}",
                   f"variant indices below {len(variants)} and prompt indices below {input_ids.shape[0]}",
                   "build the rows for these variants and prompts, e.g. Rows.product(len(variants), n_prompts)")
    sizer = rows_per_pass if isinstance(rows_per_pass, RowSizer) else RowSizer(rows_per_pass, len(rows), step=rows.group)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    return _passes(backend, input_ids, mask, attention_mask is not None, readout, variants, rows, sizer,
                   grad, trim, progress, desc, unit)


def _passes(
    backend: Backend, ids: torch.Tensor, mask: torch.Tensor, masked: bool, readout: Readout, variants: Variants,
    rows: Rows, sizer: RowSizer, grad: bool, trim: bool, progress: bool, desc: str, unit: str,
) -> Iterator[Any]:
    from tqdm.auto import tqdm

    total, group = len(rows), rows.group
    done = 0
    with tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False) as bar:
        while done < total:
            size = min(max(group, sizer.size // group * group), total - done)
            variant, prompt = rows.variant[done : done + size], rows.prompt[done : done + size]
            started = time.perf_counter()
            try:
                with torch.set_grad_enabled(grad):
                    out = _one_pass(backend, ids, mask, masked, readout, variants, variant, prompt, trim)
            except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(error) or size <= group:
                    raise
                sizer.out_of_memory()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            sizer.record(size, time.perf_counter() - started)
            done += size
            bar.update(size)
            yield out


def _one_pass(
    backend: Backend, ids: torch.Tensor, mask: torch.Tensor, masked: bool, readout: Readout, variants: Variants,
    variant: torch.Tensor, prompt: torch.Tensor, trim: bool,
) -> Any:
    row_ids, row_mask = ids[prompt], mask[prompt]
    cols = _needed_columns(row_mask) if trim else slice(0, ids.shape[1])
    row_ids, row_mask = row_ids[:, cols], row_mask[:, cols]
    interventions = variants.build(variant, prompt)
    attention_mask = row_mask if masked else None
    if readout.at == "none":
        got = backend.captures(row_ids, *interventions, attention_mask=attention_mask)
        return readout(got, variant, prompt, cols)
    if readout.at == "last":
        logits = backend.logits(row_ids, *interventions, attention_mask=attention_mask, last_only=True)[:, -1]
    else:
        where = readout.positions(variant, prompt, cols)
        logits = backend.logits(row_ids, *interventions, attention_mask=attention_mask, positions=where)
    return readout(logits, variant, prompt, cols)


def _needed_columns(mask: torch.Tensor) -> slice:
    """The columns some row needs: trailing columns that are padding in every row (right padding) are cut."""
    real = mask.bool().any(0).nonzero()[:, 0]
    return slice(0, int(real[-1]) + 1 if len(real) else mask.shape[1])


def sweep_all(*args: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`sweep`, concatenated: the readout of every row in order (for readouts returning tensors).

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.readouts import NextToken
        >>> from headkit.sweep import gates, sweep_all
        >>> model, tok = hk.models.tiny("llama")
        >>> ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 5]])
        >>> sweep_all(hk.get_backend(model), ids, None, NextToken(torch.tensor([5, 6])), gates(torch.ones(3, 2, 4))).shape
        torch.Size([6])
    """
    return torch.cat(list(sweep(*args, **kwargs)))
