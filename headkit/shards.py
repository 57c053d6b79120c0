"""Work split over torch.distributed ranks: which part of a sweep this process runs, and the merge.

When a process group is initialised (``torchrun --nproc-per-node N ...``, or your own
``torch.distributed.init_process_group``), the analyses split their work across ranks: masks for Monte Carlo
and the stochastic-ablation study, seeds for causal head gating, suppressed sentences for the suppression
matrix. Each rank takes one contiguous part (cut at whole forward passes, so with a fixed ``rows_per_pass``
every pass holds the rows it would hold in one process); parts are merged by gathering, never by summing, so
a merged result equals a one-process run bit for bit wherever each pass does.

    world = shards.world()                  # World(rank=0, size=1) without a process group
    mine = world.part(n_masks, block=masks_per_pass)
    pieces = world.gather((mine.start, scores))        # every rank's (start, rows), in rank order

:func:`init_from_env` starts the group the ``headkit`` command runs in under ``torchrun`` (gloo on CPUs,
nccl with one GPU per rank, ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from headkit.core.errors import fail

__all__ = ["World", "world", "init_from_env", "assemble"]


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` ranks (``World()`` is one process on its own).

    Example:
        >>> from headkit.shards import World
        >>> [World(rank, 3).part(10, block=2) for rank in range(3)]   # whole blocks of 2, in order
        [range(0, 2), range(2, 6), range(6, 10)]
        >>> World().gather("x"), World().first
        (['x'], True)
    """

    rank: int = 0
    size: int = 1

    @property
    def first(self) -> bool:
        """Whether this is rank 0 (the rank that prints, shows progress and writes results)."""
        return self.rank == 0

    def parts(self, n: int, block: int = 1) -> list[range]:
        """Every rank's contiguous part of ``range(n)``, cut at multiples of ``block`` and balanced in blocks."""
        block = max(1, int(block))
        blocks = -(-n // block)
        cuts = [min(n, (r * blocks // self.size) * block) for r in range(self.size)] + [n]
        return [range(cuts[r], cuts[r + 1]) for r in range(self.size)]

    def part(self, n: int, block: int = 1) -> range:
        """This rank's part of ``range(n)`` (see :meth:`parts`); empty when there are more ranks than blocks."""
        return self.parts(n, block)[self.rank]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank; exact (no arithmetic)."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        got: list[Any] = [None] * self.size
        dist.all_gather_object(got, value)
        return got

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in one process)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def world() -> World:
    """The current world: torch.distributed's rank and size when a process group is initialised, else one process.

    Example:
        >>> from headkit.shards import world
        >>> world()
        World(rank=0, size=1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def assemble(pieces: list[tuple[int, torch.Tensor]], n: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``[n, ...]`` from ``(start, rows)`` pieces that together cover ``range(n)`` (e.g. gathered parts).

    Example:
        >>> import torch
        >>> from headkit.shards import assemble
        >>> assemble([(2, torch.tensor([[3.0], [4.0]])), (0, torch.tensor([[1.0], [2.0]]))], 4).flatten().tolist()
        [1.0, 2.0, 3.0, 4.0]
    """
    filled = [p for p in pieces if len(p[1])]
    template = like if like is not None else filled[0][1]
    out = torch.empty((n, *template.shape[1:]), dtype=template.dtype)
    covered = torch.zeros(n, dtype=torch.bool)
    for start, rows in filled:
        out[start : start + len(rows)] = rows.cpu()
        covered[start : start + len(rows)] = True
    if not bool(covered.all()):
        missing = int((~covered).nonzero()[0, 0])
        raise fail(f"assemble got pieces that leave row {missing} of {n} empty", "pieces covering every row",
                   "gather every rank's part (World.gather) before assembling")
    return out


def init_from_env() -> World:
    """Start the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), or do nothing.

    The backend is nccl when CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. An
    already initialised group is used as it is. Returns :func:`world`.

    Example:
        >>> from headkit.shards import init_from_env
        >>> init_from_env()          # not under torchrun: one process
        World(rank=0, size=1)
    """
    import torch.distributed as dist

    size = os.environ.get("WORLD_SIZE", "1")
    if dist.is_initialized() or size == "1":
        return world()
    if not size.isdigit() or not dist.is_available():
        raise fail(f"WORLD_SIZE={size!r} in the environment", "a whole number of ranks and a torch with distributed",
                   "launch with torchrun --nproc-per-node N, or unset WORLD_SIZE")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return world()
