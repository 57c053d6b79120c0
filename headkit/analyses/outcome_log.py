"""Monte Carlo outcomes on disk: crash-consistent, checksummed, one writer at a time, readable read-only.

A log is a folder:

- ``meta.json``: what was run (it must match to resume), written atomically (temporary file, fsync,
  rename, fsync of the folder), so a kill or a full disk leaves the old file or the new one, never half;
- ``rows.bin``: append-only blocks, one per forward pass. A block is a 16-byte header (``HKB2``, its row
  count, a CRC-32 and the byte length of its payload) and the payload: each mask's keep bits packed 8 to a
  byte, then one float32 per prompt per mask (little-endian). The CRC covers the payload and the run's
  identity (a digest of ``meta.json``), so a torn, bit-flipped or truncated block, or a ``rows.bin``
  copied from another run or phase, is detected. Each block is fsynced before the next pass;
- ``lock``: held (``flock``) by the one process writing; it holds that process's id. The kernel releases
  it when the process dies, so a killed run's lock is taken over by the next run.

Opening verifies every block. A torn last block (a kill mid-append) is cut off when the log is opened
for writing; damage before the last block is refused with the byte offset to truncate at. A folder that
cannot be written (read-only filesystem) still opens and reads; only appending needs write access. A
failed write (full disk, file-size limit) cuts the partial block back off and raises HeadkitError: the
folder stays resumable once space is back.

    log = OutcomeLog("runs/importance", n_layers=18, n_heads=4, n_prompts=51, meta={"p_keep": 0.3, "seed": 0})
    log.append(masks, outcomes)            # masks [n, 18, 4] bool, outcomes [n, 51]
    masks, outcomes = log.read()
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float

__all__ = ["OutcomeLog", "write_json_atomic", "read_json"]


FORMAT = "headkit outcome log 2"
_MAGIC = b"HKB2"
_HEADER = struct.Struct("<4sIII")  # magic, rows, crc32, payload bytes


# ------------------------------------------------------------------------------------------------- files
def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer); the seam tests use to kill a write half-way."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder (the rename is still atomic there)
        return
    try:
        _fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> None:
    """Write JSON so that the file holds the old content or the new, whatever happens (kill, full disk).

    A temporary file beside it is written and fsynced, renamed over the target, and the folder fsynced.

    Example:
        >>> import tempfile, pathlib
        >>> from headkit.analyses.outcome_log import read_json, write_json_atomic
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "meta.json"
        >>> write_json_atomic(target, {"seed": 0})
        >>> read_json(target)
        {'seed': 0}
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(value, indent=1).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            _fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise _write_error(path, error, "the file keeps its previous content") from None
    _fsync_folder(path.parent)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`; HeadkitError naming the file if it is damaged.

    Example:
        >>> import tempfile, pathlib
        >>> from headkit.analyses.outcome_log import read_json
        >>> bad = pathlib.Path(tempfile.mkdtemp()) / "meta.json"
        >>> _ = bad.write_bytes(b"{trunc")
        >>> try:
        ...     read_json(bad)
        ... except ValueError as error:
        ...     print(type(error).__name__)
        HeadkitError
    """
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise fail(
            f"{path} is damaged ({type(error).__name__}: {error})",
            "a JSON file written by headkit",
            f"restore it from a copy, or delete {path.parent} to start that run afresh",
        ) from None


def _write_error(path: Path, error: OSError, state: str) -> Exception:
    reason = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file-size limit was reached",
              errno.EDQUOT: "the disk quota is exhausted", errno.EROFS: "the filesystem is read-only",
              errno.EACCES: "permission was denied"}.get(error.errno, os.strerror(error.errno or 0) or str(error))
    return fail(
        f"could not write {path}: {reason} ({type(error).__name__}: {error})",
        "room and permission to write the outcome log",
        f"{state}; free space (or raise the limit) and run the same call again to resume, or pass another path",
    )


# ------------------------------------------------------------------------------------------------- the log
class OutcomeLog:
    """An append-only log of (mask, outcomes) rows in a folder; opening an existing log resumes it.

    ``meta`` (JSON-serialisable) records what produced the rows; reopening with different ``meta`` or shape
    raises instead of mixing two runs. Use it as a context manager (or call :meth:`close`) to release the
    folder's writer lock; it is also released when the object is garbage-collected or the process ends.

    Example:
        >>> import tempfile, torch
        >>> from headkit.analyses.outcome_log import OutcomeLog
        >>> folder = tempfile.mkdtemp()
        >>> with OutcomeLog(folder, n_layers=2, n_heads=3, n_prompts=4, meta={"seed": 0}) as log:
        ...     log.append(torch.ones(5, 2, 3, dtype=torch.bool), torch.zeros(5, 4))
        >>> len(OutcomeLog(folder, n_layers=2, n_heads=3, n_prompts=4, meta={"seed": 0}))
        5
    """

    def __init__(self, path: str | os.PathLike[str], *, n_layers: int, n_heads: int, n_prompts: int,
                 meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.shape = (n_layers, n_heads)
        self.n_prompts = n_prompts
        self._mask_bytes = (n_layers * n_heads + 7) // 8
        self._row_bytes = self._mask_bytes + 4 * n_prompts
        self._lock_fd: int | None = None
        if self.path.exists() and not self.path.is_dir():
            raise fail(f"OutcomeLog got path {self.path}, which is a file", "a folder (created if missing)",
                       "pass a folder path, e.g. the file's name without its extension")
        header = {"format": FORMAT, "n_layers": n_layers, "n_heads": n_heads, "n_prompts": n_prompts,
                  "meta": meta or {}}
        try:
            header = json.loads(json.dumps(header))  # as it reads back (tuples become lists)
        except (TypeError, ValueError) as error:
            raise fail(f"OutcomeLog got meta that is not JSON ({error})", "JSON-serialisable meta",
                       "pass plain numbers, strings, lists and dicts") from None
        self._rows_file, self._meta_file = self.path / "rows.bin", self.path / "meta.json"
        self.writable = self._lock()
        self._open_meta(header)
        self._key = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).digest()[:8]
        self._masks: list[np.ndarray] = []
        self._outcomes: list[np.ndarray] = []
        self._rows = 0
        self._end = self._verify()

    # -------------------------------------------------------------------------------------------- opening
    def _lock(self) -> bool:
        """Take the folder's writer lock; False (read-only) where the folder cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and self._meta_file.exists():
                return False  # an existing log on a read-only filesystem: readable, not appendable
            raise _write_error(self.path, error, "nothing was written") from None
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: one writer is up to the user
            self._lock_fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise fail(
                f"the outcome log at {self.path} is being written by another process (pid {holder})",
                "one writer per folder (two would interleave their rows)",
                "wait for that run to finish (or stop it), or pass another path",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return True

    def _open_meta(self, header: dict[str, Any]) -> None:
        data_exists = self._rows_file.exists() and self._rows_file.stat().st_size > 0
        if not self._meta_file.exists():
            if data_exists:
                self.close()
                raise fail(
                    f"the outcome log at {self.path} has rows but no meta.json (deleted or lost?)",
                    "a meta.json beside rows.bin saying which run wrote the rows",
                    f"restore meta.json from a copy, or delete {self._rows_file} to start afresh (its rows "
                    "cannot be checked against this run)",
                )
            if (self.path / "masks.bin").exists():
                self.close()
                raise fail(f"the folder {self.path} holds an outcome log of an older format",
                           f"a log in the format {FORMAT!r}", "delete or move that folder and run again")
            if not self.writable:
                raise fail(f"the outcome log at {self.path} has no meta.json and cannot be written",
                           "an existing log, or a writable folder", "pass another path")
            write_json_atomic(self._meta_file, header)
            return
        try:
            stored = read_json(self._meta_file)
            if not isinstance(stored, dict) or "format" not in stored:
                raise fail(f"{self._meta_file} is damaged (it holds a {type(stored).__name__}, not a log header)",
                           "a meta.json written by headkit",
                           f"restore it from a copy, or delete {self.path} to start that run afresh")
        except ValueError:
            if data_exists:
                self.close()
                raise
            write_json_atomic(self._meta_file, header)  # no rows to lose: a damaged meta.json is rewritten
            return
        if stored.get("format") != FORMAT and (self.path / "masks.bin").exists():
            self.close()
            raise fail(f"the folder {self.path} holds an outcome log of an older format ({stored.get('format')!r})",
                       f"a log in the format {FORMAT!r}", "delete or move that folder and run again")
        if stored != header:
            smeta = stored.get("meta") if isinstance(stored.get("meta"), dict) else {}
            differ = sorted(k for k in {**smeta, **header["meta"]} if smeta.get(k) != header["meta"].get(k))
            differ += [k for k in ("n_layers", "n_heads", "n_prompts", "format") if stored.get(k) != header[k]]
            self.close()
            raise fail(
                f"OutcomeLog at {self.path} was written by a different run (differs in: {', '.join(differ)})",
                "the same model, prompts and settings to resume a run",
                "pass another folder, or delete this one to start afresh",
            )

    def _verify(self) -> int:
        """Read and check every block; cut a torn last block (if writable); return the end of the valid data."""
        try:
            data = self._rows_file.read_bytes()
        except FileNotFoundError:
            data = b""
        offset, index = 0, 0
        while offset < len(data):
            problem = self._check_block(data, offset)
            if problem is None:
                magic, rows, crc, size = _HEADER.unpack_from(data, offset)
                payload = np.frombuffer(data, dtype=np.uint8, count=size, offset=offset + _HEADER.size)
                cut = rows * self._mask_bytes
                self._masks.append(payload[:cut].reshape(rows, self._mask_bytes))
                self._outcomes.append(payload[cut:].view("<f4").reshape(rows, self.n_prompts))
                self._rows += rows
                offset += _HEADER.size + size
                index += 1
                continue
            torn, reason = problem
            if not torn:
                self.close()
                raise fail(
                    f"{self._rows_file} is damaged at block {index} (byte {offset}): {reason}",
                    "blocks whose checksums match this run",
                    f"keep the {self._rows} rows before it with `truncate -s {offset} {self._rows_file}` and run "
                    "again (they are verified), or delete the folder to start afresh",
                )
            if self.writable:  # a kill mid-append: drop the partial block
                os.truncate(self._rows_file, offset)
            break
        return offset

    def _check_block(self, data: bytes, offset: int) -> tuple[bool, str] | None:
        """None if the block at ``offset`` is sound; else (torn, reason), torn when it can only be a cut tail.

        A kill mid-append leaves a prefix of the last block; a crash of the machine may leave zeros after
        it. Anything else (a bad block before the end, flipped bits) is damage.
        """
        rest = data[offset:]
        if len(rest) < _HEADER.size:
            return True, "a partial block header"
        magic, rows, crc, size = _HEADER.unpack_from(data, offset)
        if magic != _MAGIC or rows == 0 or size != rows * self._row_bytes:
            return not rest.strip(b"\0"), "not a block header (wrong magic or size)"
        if len(rest) < _HEADER.size + size:
            return True, "a partial block"
        payload = rest[_HEADER.size : _HEADER.size + size]
        if zlib.crc32(payload, zlib.crc32(self._key)) != crc:
            last = len(rest) == _HEADER.size + size
            return last and payload.endswith(b"\0" * 4), (
                "its checksum does not match (flipped bits, or a rows.bin copied from another run or phase)"
            )
        values = np.frombuffer(payload, dtype="<f4", offset=rows * self._mask_bytes)
        if not np.isfinite(values).all():
            return False, "it holds NaN or infinite outcomes"
        return None

    # -------------------------------------------------------------------------------------------- use
    def __len__(self) -> int:
        return self._rows

    def append(self, masks: Bool[torch.Tensor, "n layer head"], outcomes: Float[torch.Tensor, "n prompt"]) -> None:
        """Append rows as one checksummed block and fsync it (masks must be 0/1: they are stored as bits)."""
        if (not isinstance(masks, torch.Tensor) or not isinstance(outcomes, torch.Tensor) or masks.ndim != 3
                or tuple(masks.shape[1:]) != self.shape or outcomes.ndim != 2
                or tuple(outcomes.shape) != (masks.shape[0], self.n_prompts) or masks.shape[0] == 0):
            raise fail(
                f"OutcomeLog.append got masks {describe(masks)} and outcomes {describe(outcomes)}",
                f"masks [n, {self.shape[0]}, {self.shape[1]}] and outcomes [n, {self.n_prompts}], n >= 1",
                "append evaluate's masks with its result",
            )
        bits = masks.reshape(masks.shape[0], -1)
        if not bool(((bits == 0) | (bits == 1)).all()):
            raise fail("OutcomeLog.append got masks with values other than 0 and 1", "keep/ablate masks",
                       "log fractional gates elsewhere; this log stores one bit per head")
        values = outcomes.detach().float().cpu().numpy().astype("<f4")
        if not np.isfinite(values).all():
            raise fail(f"OutcomeLog.append got outcomes {describe(outcomes)} with NaN or infinite values",
                       "finite outcomes", "check the model and the metric (a NaN logit gives NaN margins)")
        if not self.writable or self._lock_fd is None:
            raise fail(f"OutcomeLog.append on {self.path}, which was opened read-only (or closed)",
                       "a writable folder", "copy the folder somewhere writable and resume there")
        packed = np.packbits(bits.bool().cpu().numpy(), axis=1)
        payload = packed.tobytes() + values.tobytes()
        block = _HEADER.pack(_MAGIC, masks.shape[0], zlib.crc32(payload, zlib.crc32(self._key)), len(payload))
        try:
            fd = os.open(self._rows_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise _write_error(self._rows_file, error, f"the log keeps its {self._rows} rows") from None
        try:
            _write_all(fd, block + payload)
            _fsync(fd)
        except OSError as error:
            try:  # cut the partial block so the folder stays resumable
                os.ftruncate(fd, self._end)
                _fsync(fd)
            except OSError:
                pass  # the next open cuts it as a torn tail
            raise _write_error(self._rows_file, error, f"the log keeps its {self._rows} rows") from None
        finally:
            os.close(fd)
        if self._end == 0:
            _fsync_folder(self.path)  # the new file's entry
        self._end += len(block) + len(payload)
        self._masks.append(packed)
        self._outcomes.append(values)
        self._rows += masks.shape[0]

    def read(self) -> tuple[Bool[torch.Tensor, "n layer head"], Float[torch.Tensor, "n prompt"]]:
        """All verified rows: masks ``[n, n_layers, n_heads]`` (bool) and outcomes ``[n, n_prompts]`` (float32)."""
        n, (n_layers, n_heads) = self._rows, self.shape
        packed = np.concatenate(self._masks) if self._masks else np.zeros((0, self._mask_bytes), np.uint8)
        values = np.concatenate(self._outcomes) if self._outcomes else np.zeros((0, self.n_prompts), "<f4")
        bits = np.unpackbits(packed, axis=1, count=n_layers * n_heads)
        return (torch.from_numpy(bits.astype(bool)).reshape(n, n_layers, n_heads),
                torch.from_numpy(values.astype(np.float32)))

    def close(self) -> None:
        """Release the folder's writer lock (appending afterwards raises)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> OutcomeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "" if self.writable else ", read-only"
        return f"OutcomeLog({str(self.path)!r}, {self._rows} rows{mode})"
