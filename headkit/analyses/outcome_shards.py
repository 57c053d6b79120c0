"""One phase of masks evaluated across ranks, its outcomes logged in shards that any number of ranks resumes.

A phase's folder is an :class:`~headkit.analyses.outcome_log.OutcomeLog` holding the masks from 0 (a
one-process run writes only this), plus ``from-<first mask>`` sub-folders, one per contiguous part another
rank started. Opening a phase reads every shard (each by one rank), finds the masks no shard holds, cuts
them into whole forward passes and gives each rank a contiguous run of them; a run that starts where a
shard ends appends to it, any other run starts a shard. So a study stopped at any point resumes with any
number of ranks, and the merged outcomes are the same masks' outcomes whoever computed them.

    outcomes, evaluated = run_phase(chunks, masks, folder, log_meta, block=masks_per_pass)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import HeadkitError, fail
from headkit.shards import World, assemble, world

if TYPE_CHECKING:
    from jaxtyping import Bool, Float

__all__ = ["run_phase", "plan_runs", "shard_folders"]

_SHARD = re.compile(r"from-(\d+)")


def shard_folders(folder: Path) -> list[tuple[int, Path]]:
    """The shards of a phase folder, ``(first mask, path)``, the folder itself (first mask 0) first.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from headkit.analyses.outcome_shards import shard_folders
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "from-000000120").mkdir(); (root / "from-000000040").mkdir()
        >>> [start for start, _ in shard_folders(root)]
        [0, 40, 120]
    """
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _SHARD.fullmatch(p.name))) \
        if folder.is_dir() else []
    return [(0, folder), *found]


def plan_runs(gaps: list[tuple[int, int]], block: int, size: int) -> list[list[tuple[int, int]]]:
    """Each rank's runs ``(first, end)`` of the masks in ``gaps``: whole passes of ``block`` masks (counted
    from each gap's start, as one process would), contiguous, in order, balanced in masks.

    Example:
        >>> from headkit.analyses.outcome_shards import plan_runs
        >>> plan_runs([(0, 10)], block=2, size=2)
        [[(0, 6)], [(6, 10)]]
        >>> plan_runs([(4, 6), (20, 30)], block=4, size=3)   # a gap left by a killed run, then the rest
        [[(4, 6), (20, 24)], [(24, 28)], [(28, 30)]]
    """
    pieces = [(a, min(a + block, end)) for first, end in gaps for a in range(first, end, block)]
    total = sum(b - a for a, b in pieces)
    runs: list[list[tuple[int, int]]] = [[] for _ in range(size)]
    done = 0
    for a, b in pieces:
        rank = min(size - 1, done * size // max(1, total))
        done += b - a
        if runs[rank] and runs[rank][-1][1] == a:
            runs[rank][-1] = (runs[rank][-1][0], b)
        else:
            runs[rank].append((a, b))
    return runs


def run_phase(
    chunks: Callable[[torch.Tensor], Iterator[Float[torch.Tensor, "chunk prompt"]]],
    masks: Bool[torch.Tensor, "mask layer head"],
    folder: Path | None,
    log: dict[str, Any],
    *,
    block: int = 1,
    on_plan: Callable[[int, int], None] = lambda mine, stored: None,
    on_chunk: Callable[[int], None] = lambda n: None,
    here: World | None = None,
) -> tuple[Float[torch.Tensor, "mask prompt"], int]:
    """Every mask's outcomes, read from the phase's shards where stored and evaluated (this rank's runs) where not.

    ``chunks(masks)`` evaluates masks pass by pass; ``log`` holds the :class:`OutcomeLog` arguments
    (``n_layers``, ``n_heads``, ``n_prompts``, ``meta``); ``folder`` None keeps nothing on disk. Returns the
    outcomes of all masks (on every rank) and how many masks all ranks evaluated now. ``on_plan(mine, stored)``
    is told how many masks this rank will evaluate and how many were stored; ``on_chunk(m)`` after each pass.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from headkit.analyses.outcome_shards import run_phase
        >>> masks = torch.rand(6, 1, 2) < 0.5
        >>> score = lambda m: iter([m.float().sum((1, 2))[:, None]])      # one "pass", one prompt
        >>> folder = Path(tempfile.mkdtemp())
        >>> log = dict(n_layers=1, n_heads=2, n_prompts=1, meta={"seed": 0})
        >>> first, evaluated = run_phase(score, masks[:4], folder, log)   # stopped after 4 masks
        >>> outcomes, evaluated = run_phase(score, masks, folder, log)    # resumed: only 2 are new
        >>> evaluated, torch.equal(outcomes[:, 0], masks.float().sum((1, 2)))
        (2, True)
    """
    from headkit.analyses.outcome_log import OutcomeLog

    here = here or world()
    n = masks.shape[0]
    held: list[tuple[int, torch.Tensor]] = []  # (first mask, outcomes) this rank read or computed
    shards: list[tuple[int, int, Path]] = []  # (first mask, rows, path) of every shard, on every rank
    if folder is not None:
        listed = shard_folders(folder)
        here.barrier()  # no rank creates a shard before every rank has listed them
        problems, read = [], []
        for i, (start, path) in enumerate(listed):
            if i % here.size != here.rank:
                continue
            try:
                with OutcomeLog(path, **_meta(log, start)) as stored:
                    got_masks, got = stored.read()
            except ValueError as error:  # a damaged shard, another run's meta: every rank raises it
                problems.append(str(error))
                continue
            rows = max(0, min(len(got), n - start))
            if not torch.equal(got_masks[:rows], masks[start : start + rows]):
                problems.append(str(fail(f"the outcome log at {path} holds masks this call would not draw",
                                         "a log written by the same call", "pass another path, or delete that folder")))
                continue
            read.append((start, len(got), path))
            held.append((start, got[:rows]))
        gathered = here.gather((problems, read))
        problems = [p for ps, _ in gathered for p in ps]
        if problems:
            raise HeadkitError(problems[0])
        shards = sorted(s for _, rs in gathered for s in rs)
    gaps = _gaps([(start, min(n, start + rows)) for start, rows, _ in shards], n)
    mine = plan_runs(gaps, block, here.size)[here.rank]
    on_plan(sum(end - first for first, end in mine), n - sum(end - first for first, end in gaps))
    evaluated = 0
    for first, end in mine:
        ends_here = [(start, path) for start, rows, path in shards if start + rows == first]
        start, path = ends_here[0] if ends_here else (first, None)
        if folder is not None and path is None:
            path = folder if first == 0 else folder / f"from-{first:09d}"
        writer = OutcomeLog(path, **_meta(log, start)) if folder is not None else None
        done = first
        try:
            for chunk in chunks(masks[first:end]):
                if writer is not None:
                    writer.append(masks[done : done + len(chunk)], chunk)
                held.append((done, chunk))
                done += len(chunk)
                on_chunk(len(chunk))
        finally:
            if writer is not None:
                writer.close()
        evaluated += end - first
    pieces = [p for part in here.gather(held) for p in part]
    counts = here.gather(evaluated)
    like = next((rows for _, rows in pieces if len(rows)), torch.zeros(0, log["n_prompts"]))
    return assemble(pieces, n, like=like.float()).float(), sum(counts)


def _meta(log: dict[str, Any], start: int) -> dict[str, Any]:
    """OutcomeLog arguments of the shard whose first mask is ``start`` (the phase folder's own meta for 0)."""
    return log if start == 0 else {**log, "meta": {**log["meta"], "first_mask": start}}


def _gaps(held: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The parts of ``range(n)`` that no ``(first, end)`` interval covers, in order."""
    gaps, at = [], 0
    for first, end in sorted(held):
        if first > at:
            gaps.append((at, first))
        at = max(at, end)
    if at < n:
        gaps.append((at, n))
    return gaps
