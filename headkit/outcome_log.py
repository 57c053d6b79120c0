"""Monte Carlo outcomes on disk: masks bit-packed, outcomes as float32, append-only, resumable.

A log is a folder: ``meta.json`` (what was run: it must match to resume), ``masks.bin`` (each mask's keep
bits, packed 8 to a byte, ``ceil(n_layers * n_heads / 8)`` bytes per mask) and ``outcomes.bin`` (one float32
per prompt per mask, little-endian). Each chunk is appended and flushed to disk before the next forward
pass, so a run killed at any moment loses at most the chunk in flight; reopening drops a partly written
last row and goes on from the last complete one.

    log = OutcomeLog("runs/importance", n_layers=18, n_heads=4, n_prompts=51, meta={"p_keep": 0.3, "seed": 0})
    log.append(masks, outcomes)            # masks [n, 18, 4] bool, outcomes [n, 51]
    masks, outcomes = log.read()
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headkit.errors import StaysLocal, describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float

__all__ = ["OutcomeLog"]

_stays_local = StaysLocal(__name__)  # pickling this module for a remote trace fails with the fix


class OutcomeLog:
    """An append-only log of (mask, outcomes) rows in a folder; opening an existing log resumes it.

    ``meta`` (JSON-serialisable) records what produced the rows; reopening with different ``meta`` or shape
    raises instead of mixing two runs.

    Example:
        >>> import tempfile, torch
        >>> from headkit.outcome_log import OutcomeLog
        >>> folder = tempfile.mkdtemp()
        >>> log = OutcomeLog(folder, n_layers=2, n_heads=3, n_prompts=4, meta={"seed": 0})
        >>> log.append(torch.ones(5, 2, 3, dtype=torch.bool), torch.zeros(5, 4))
        >>> len(OutcomeLog(folder, n_layers=2, n_heads=3, n_prompts=4, meta={"seed": 0}))
        5
    """

    def __init__(self, path: str | os.PathLike[str], *, n_layers: int, n_heads: int, n_prompts: int,
                 meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.shape = (n_layers, n_heads)
        self.n_prompts = n_prompts
        self._mask_bytes = (n_layers * n_heads + 7) // 8
        self._outcome_bytes = 4 * n_prompts
        header = {"format": "headkit outcome log 1", "n_layers": n_layers, "n_heads": n_heads,
                  "n_prompts": n_prompts, "meta": meta or {}}
        header = json.loads(json.dumps(header))  # as it reads back (tuples become lists)
        meta_file = self.path / "meta.json"
        if meta_file.exists():
            stored = json.loads(meta_file.read_text())
            if stored != header:
                differ = sorted(k for k in {**stored.get("meta", {}), **header["meta"]}
                                if stored.get("meta", {}).get(k) != header["meta"].get(k))
                differ += [k for k in ("n_layers", "n_heads", "n_prompts", "format") if stored.get(k) != header[k]]
                raise fail(
                    f"OutcomeLog at {self.path} was written by a different run (differs in: {', '.join(differ)})",
                    "the same model, prompts and settings to resume a run",
                    "pass another folder, or delete this one to start afresh",
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            meta_file.write_text(json.dumps(header, indent=1))
        self._masks_file, self._outcomes_file = self.path / "masks.bin", self.path / "outcomes.bin"
        for f in (self._masks_file, self._outcomes_file):
            f.touch()
        self._rows = min(self._masks_file.stat().st_size // self._mask_bytes,
                         self._outcomes_file.stat().st_size // self._outcome_bytes)
        # a run killed mid-append leaves a partial or unmatched row: cut both files to the complete rows
        os.truncate(self._masks_file, self._rows * self._mask_bytes)
        os.truncate(self._outcomes_file, self._rows * self._outcome_bytes)

    def __len__(self) -> int:
        return self._rows

    def append(self, masks: Bool[torch.Tensor, "n layer head"], outcomes: Float[torch.Tensor, "n prompt"]) -> None:
        """Append rows and flush them to disk (masks must be 0/1: they are stored as bits)."""
        if (masks.ndim != 3 or tuple(masks.shape[1:]) != self.shape or outcomes.ndim != 2
                or tuple(outcomes.shape) != (masks.shape[0], self.n_prompts)):
            raise fail(
                f"OutcomeLog.append got masks {describe(masks)} and outcomes {describe(outcomes)}",
                f"masks [n, {self.shape[0]}, {self.shape[1]}] and outcomes [n, {self.n_prompts}]",
                "append evaluate's masks with its result",
            )
        bits = masks.reshape(masks.shape[0], -1)
        if not bool(((bits == 0) | (bits == 1)).all()):
            raise fail("OutcomeLog.append got masks with values other than 0 and 1", "keep/ablate masks",
                       "log fractional gates elsewhere; this log stores one bit per head")
        packed = np.packbits(bits.bool().cpu().numpy(), axis=1)
        values = outcomes.detach().cpu().numpy().astype("<f4")
        for f, data in ((self._outcomes_file, values), (self._masks_file, packed)):
            with open(f, "ab") as handle:
                handle.write(data.tobytes())
                handle.flush()
                os.fsync(handle.fileno())
        self._rows += masks.shape[0]

    def read(self) -> tuple[Bool[torch.Tensor, "n layer head"], Float[torch.Tensor, "n prompt"]]:
        """All complete rows: masks ``[n, n_layers, n_heads]`` (bool) and outcomes ``[n, n_prompts]`` (float32)."""
        n, (n_layers, n_heads) = self._rows, self.shape
        packed = np.fromfile(self._masks_file, dtype=np.uint8, count=n * self._mask_bytes)
        bits = np.unpackbits(packed.reshape(n, self._mask_bytes), axis=1, count=n_layers * n_heads)
        values = np.fromfile(self._outcomes_file, dtype="<f4", count=n * self.n_prompts).reshape(n, self.n_prompts)
        return (torch.from_numpy(bits.astype(bool)).reshape(n, n_layers, n_heads),
                torch.from_numpy(values.astype(np.float32)))
