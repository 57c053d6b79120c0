"""The outcome log loses nothing and mixes nothing: kills inside every write, damaged files, full disks,
file-size limits, two writers, read-only folders. Each killed study resumes to bit-identical scores."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import headkit as hk
from headkit import montecarlo
from headkit.analyses import outcome_log
from headkit.analyses.outcome_log import OutcomeLog
from tests import kill_study

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layers=73, n_heads=1, n_prompts=3)  # 73 heads: not a whole number of bytes


def rows(n=9, seed=0):
    return montecarlo.bernoulli(n, 0.5, 73, 1, seed=seed), torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))


def written(folder, meta=None, blocks=((0, 4), (4, 9))):
    masks, outcomes = rows()
    with OutcomeLog(folder, **SHAPE, meta=meta or {"a": (1, 2)}) as log:
        for a, b in blocks:
            log.append(masks[a:b], outcomes[a:b])
    return masks, outcomes


def block_size(n):
    return 16 + n * (10 + 12)  # header + ceil(73 / 8) mask bytes + 3 float32 per row


def reopen(folder, meta=None):
    return OutcomeLog(folder, **SHAPE, meta=meta or {"a": [1, 2]})


# ------------------------------------------------------------------------------------------------- format
def test_rows_round_trip_bit_packed_and_checksummed_per_block(tmp_path):
    masks, outcomes = written(tmp_path)
    assert (tmp_path / "rows.bin").stat().st_size == block_size(4) + block_size(5)
    with reopen(tmp_path) as log:
        got_masks, got = log.read()
    assert torch.equal(got_masks, masks) and torch.equal(got, outcomes)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["format"] == "headkit outcome log 2" and meta["meta"] == {"a": [1, 2]}
    with pytest.raises(hk.HeadkitError, match=r"differs in: a\b"):
        reopen(tmp_path, {"a": 1})
    with pytest.raises(hk.HeadkitError, match="n_prompts"):
        OutcomeLog(tmp_path, n_layers=73, n_heads=1, n_prompts=4, meta={"a": [1, 2]})


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    log = OutcomeLog(tmp_path, **SHAPE)
    masks, _ = rows()
    for bad_masks, bad_outcomes, match in [
        (torch.full((1, 73, 1), 0.5), torch.zeros(1, 3), "other than 0 and 1"),
        (masks[:1], torch.zeros(2, 3), r"outcomes \[n, 3\]"),
        (masks[:1], torch.tensor([[0.0, float("nan"), 1.0]]), "NaN or infinite"),
        (masks[:1], torch.tensor([[0.0, float("inf"), 1.0]]), "NaN or infinite"),
        (masks[:0], torch.zeros(0, 3), r"n >= 1"),
    ]:
        with pytest.raises(hk.HeadkitError, match=match):
            log.append(bad_masks, bad_outcomes)
    assert not (tmp_path / "rows.bin").exists() or (tmp_path / "rows.bin").stat().st_size == 0
    log.close()
    with pytest.raises(hk.HeadkitError, match="read-only \\(or closed\\)"):
        log.append(masks[:1], torch.zeros(1, 3))
    with pytest.raises(hk.HeadkitError, match="which is a file"):
        OutcomeLog(tmp_path / "meta.json", **SHAPE)


# ------------------------------------------------------------------------------------------------- damage
def test_a_torn_last_block_is_cut_and_the_log_goes_on(tmp_path):
    masks, outcomes = written(tmp_path, blocks=((0, 4),))
    full = (tmp_path / "rows.bin").read_bytes()
    extra, more = rows(3, seed=1)
    with reopen(tmp_path) as log:
        log.append(extra, more)
    whole = (tmp_path / "rows.bin").read_bytes()
    for cut in (len(full) + 3, len(full) + 16, len(whole) - 1):  # in the header, right after it, one byte short
        (tmp_path / "rows.bin").write_bytes(whole[:cut])
        with reopen(tmp_path) as log:
            assert len(log) == 4 and torch.equal(log.read()[0], masks[:4])
            assert (tmp_path / "rows.bin").stat().st_size == len(full)  # cut back to the complete block
            log.append(extra, more)
        assert (tmp_path / "rows.bin").read_bytes() == whole
    (tmp_path / "rows.bin").write_bytes(whole + b"\0" * 40)  # a machine crash may leave zeros after the data
    assert len(reopen(tmp_path)) == 7


@pytest.mark.parametrize("where", ["first block's mask bits", "first block's outcomes", "last block's outcomes",
                                   "a block header"])
def test_flipped_bits_are_detected_with_the_offset_to_cut_at(tmp_path, where):
    written(tmp_path)
    data = bytearray((tmp_path / "rows.bin").read_bytes())
    at = {"first block's mask bits": 16 + 3, "first block's outcomes": 16 + 40 + 2,
          "last block's outcomes": len(data) - 2, "a block header": block_size(4) + 5}[where]
    data[at] ^= 0x80  # e.g. a float's sign bit
    (tmp_path / "rows.bin").write_bytes(bytes(data))
    block = 0 if at < block_size(4) else 1
    offset = 0 if block == 0 else block_size(4)
    with pytest.raises(hk.HeadkitError, match=rf"damaged at block {block} \(byte {offset}\).*truncate -s {offset}"):
        reopen(tmp_path)
    assert (tmp_path / "rows.bin").read_bytes() == bytes(data)  # refused, not "repaired"
    os.truncate(tmp_path / "rows.bin", offset)  # the fix the message gives
    assert len(reopen(tmp_path)) == (0 if block == 0 else 4)


def test_rows_of_another_run_or_phase_are_refused(tmp_path):
    written(tmp_path / "many_ablated", meta={"phase": "many_ablated"})
    written(tmp_path / "few_ablated", meta={"phase": "few_ablated"})
    a, b = tmp_path / "many_ablated" / "rows.bin", tmp_path / "few_ablated" / "rows.bin"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)  # the two phases' files swapped: same shapes, same sizes
    with pytest.raises(hk.HeadkitError, match="copied from another run or phase"):
        OutcomeLog(tmp_path / "many_ablated", **SHAPE, meta={"phase": "many_ablated"})


def test_a_missing_meta_beside_rows_is_refused_not_adopted(tmp_path):
    written(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(hk.HeadkitError, match=r"has rows but no meta.json.*restore meta.json.*or delete"):
        reopen(tmp_path, {"a": "another run"})
    assert not (tmp_path / "meta.json").exists()  # nothing written over the orphaned rows
    (tmp_path / "rows.bin").unlink()
    assert len(reopen(tmp_path)) == 0 and (tmp_path / "meta.json").exists()


@pytest.mark.parametrize("content", [b"", b'{"format": "headkit outc', b"\xff\xfe\x00", b"[1, 2]", b'"text"'])
def test_a_damaged_meta_is_named_and_never_a_raw_error(tmp_path, content):
    written(tmp_path)
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(hk.HeadkitError, match=r"meta.json|different run"):
        reopen(tmp_path)
    (tmp_path / "rows.bin").unlink()  # no rows to lose: the damaged file is simply rewritten
    assert len(reopen(tmp_path)) == 0 and json.loads((tmp_path / "meta.json").read_text())["meta"] == {"a": [1, 2]}


# ------------------------------------------------------------------------------------------------- disks
@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk quota is exhausted")])
def test_a_full_disk_is_a_headkit_error_and_the_log_stays_resumable(tmp_path, monkeypatch, code, reason):
    masks, outcomes = written(tmp_path, blocks=((0, 4),))
    size = (tmp_path / "rows.bin").stat().st_size
    real = outcome_log._write_all

    def full(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))  # part of the block lands, then the disk is full
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(outcome_log, "_write_all", full)
    log = reopen(tmp_path)
    with pytest.raises(hk.HeadkitError, match=rf"could not write .*rows.bin: {reason}.*keeps its 4 rows.*resume"):
        log.append(masks[4:], outcomes[4:])
    assert (tmp_path / "rows.bin").stat().st_size == size  # the partial block was cut back off
    monkeypatch.setattr(outcome_log, "_write_all", real)  # space is back
    log.append(masks[4:], outcomes[4:])
    log.close()
    got_masks, got = reopen(tmp_path).read()
    assert torch.equal(got_masks, masks) and torch.equal(got, outcomes)
    monkeypatch.setattr(outcome_log, "_write_all", full)
    with pytest.raises(hk.HeadkitError, match=rf"could not write .*meta.json: {reason}.*previous content"):
        OutcomeLog(tmp_path / "new", **SHAPE)
    assert not (tmp_path / "new" / "meta.json").exists() and not list((tmp_path / "new").glob(".*tmp"))


def test_a_file_size_limit_is_a_headkit_error_and_the_log_stays_resumable(tmp_path):
    """A real RLIMIT_FSIZE in a child process (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    code = f"""
import resource, torch
from headkit.analyses.outcome_log import OutcomeLog
import headkit as hk
log = OutcomeLog({str(tmp_path)!r}, n_layers=73, n_heads=1, n_prompts=3)
resource.setrlimit(resource.RLIMIT_FSIZE, (500, 500))
masks = torch.ones(4, 73, 1, dtype=torch.bool)
try:
    for i in range(10):
        log.append(masks, torch.full((4, 3), float(i)))
except hk.HeadkitError as error:
    print(len(log), str(error))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    n, message = done.stdout.split(" ", 1)
    assert "the file-size limit was reached" in message and "resume" in message, done.stdout + done.stderr
    with OutcomeLog(tmp_path, **SHAPE) as log:  # every complete block is there, nothing torn
        assert len(log) == int(n) > 0 and (tmp_path / "rows.bin").stat().st_size == int(n) // 4 * block_size(4)
        assert torch.equal(log.read()[1][:, 0], torch.arange(int(n) // 4).repeat_interleave(4).float())


def test_a_read_only_folder_is_read_without_being_touched(tmp_path, monkeypatch):
    masks, outcomes = written(tmp_path)
    (tmp_path / "rows.bin").write_bytes((tmp_path / "rows.bin").read_bytes() + b"\x01\x02")  # a torn tail too
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(os, "truncate", lambda *a: pytest.fail("truncated a read-only log"))
    log = reopen(tmp_path)
    got_masks, got = log.read()
    assert not log.writable and torch.equal(got_masks, masks) and torch.equal(got, outcomes)
    with pytest.raises(hk.HeadkitError, match="opened read-only"):
        log.append(masks[:1], outcomes[:1])
    monkeypatch.undo()
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()} == before


# ------------------------------------------------------------------------------------------------- writers
def test_one_writer_per_folder_and_a_dead_writers_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from headkit.analyses.outcome_log import OutcomeLog; import sys, time\n"
         f"log = OutcomeLog({str(tmp_path)!r}, n_layers=73, n_heads=1, n_prompts=3, meta={{'a': [1, 2]}})\n"
         "print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(hk.HeadkitError, match=rf"being written by another process \(pid {holder.pid}\)"):
            reopen(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # killed while holding the lock
        holder.wait()
    masks, outcomes = rows()
    with reopen(tmp_path) as log:  # the kernel released it: taken over
        log.append(masks, outcomes)
        with pytest.raises(hk.HeadkitError, match=rf"pid {os.getpid()}"):  # and now this process holds it
            reopen(tmp_path)
    assert len(reopen(tmp_path)) == 9


# ------------------------------------------------------------------------------------------------- kills
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    calls = subprocess.run([sys.executable, "-m", "tests.kill_study", str(folder / "count"), "count"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert calls.returncode == 0, calls.stderr[-2000:]
    return kill_study.run(folder / "run"), json.loads(calls.stdout.strip().splitlines()[-1])


def killed_at(folder, seam: str, n: int) -> int:
    """Run ``tests/kill_study.py``'s study in a child process that SIGKILLs itself at the n-th call of ``seam``.

    The child is a fork of this process where there is one: it starts with torch, transformers and headkit
    already imported (a fresh ``python -m tests.kill_study`` spends seconds importing them) and dies by the
    same SIGKILL, leaving the same files behind; it shares nothing with the resuming process but the folder.
    Returns the child's wait status. (The uninterrupted run above is a fresh interpreter.)
    """
    if not hasattr(os, "fork"):
        died = subprocess.run([sys.executable, "-m", "tests.kill_study", str(folder), seam, str(n)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        return -died.returncode if died.returncode < 0 else died.returncode << 8
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            kill_study.main(str(folder), seam, n)
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def kill_points():
    # write: meta.json (x2 phases), calibration.json, 6 blocks; replace: the 3 renames; fsync: a few of 14
    return [("write", n) for n in range(1, 10)] + [("replace", n) for n in (1, 2, 3)] + [("fsync", n) for n in (1, 4, 9)]


@pytest.mark.slow
@pytest.mark.parametrize("seam, n", kill_points(), ids=lambda x: str(x))
def test_a_study_killed_inside_any_write_resumes_to_identical_scores(uninterrupted, tmp_path, seam, n):
    whole, calls = uninterrupted
    assert calls == {"write": 9, "replace": 3, "fsync": 14}  # the kill points above cover every write
    status = killed_at(tmp_path, seam, n)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"wait status {status}"
    resumed = kill_study.run(tmp_path)
    for name in ("many_ablated", "few_ablated"):
        assert resumed.phases[name].p_keep == whole.phases[name].p_keep
        assert torch.equal(resumed.phases[name].masks, whole.phases[name].masks)
        assert torch.equal(resumed.phases[name].margins, whole.phases[name].margins)
    assert resumed.scores.equals(whole.scores) and resumed.validation.equals(whole.validation)
    again = kill_study.run(tmp_path)
    assert again.evaluations == 0  # complete now
