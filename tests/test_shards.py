"""Sharding over torch.distributed ranks: the split, the plan of a resumed phase, and real 2-process gloo runs
(torchrun) compared with the same work in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import headkit as hk
from headkit.analyses.outcome_shards import plan_runs, run_phase
from headkit.shards import World, assemble

WORKER = Path(__file__).with_name("shard_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun gives each rank one thread; so does the one-process run


# ------------------------------------------------------------------------------------------------- the split
@pytest.mark.parametrize("n,block,size", [(10, 1, 3), (10, 4, 3), (7, 2, 8), (0, 3, 2), (100, 7, 4), (5, 5, 2)])
def test_parts_cover_every_item_once_in_order_cut_at_blocks_and_balanced(n, block, size):
    parts = World(0, size).parts(n, block)
    assert [i for part in parts for i in part] == list(range(n))
    assert all(p.start % block == 0 for p in parts)
    blocks = [-(-len(p) // block) for p in parts]
    assert max(blocks) - min(blocks) <= 1
    assert [World(r, size).part(n, block) for r in range(size)] == parts


@pytest.mark.parametrize("gaps,block,size", [([(0, 20)], 3, 2), ([(4, 6), (20, 31)], 4, 3), ([(5, 9)], 2, 8),
                                             ([(0, 3), (7, 8), (9, 30)], 5, 2)])
def test_plan_runs_covers_the_gaps_once_in_passes_counted_from_each_gap(gaps, block, size):
    runs = plan_runs(gaps, block, size)
    assert len(runs) == size
    flat = sorted(i for rank in runs for a, b in rank for i in range(a, b))
    assert flat == [i for a, b in gaps for i in range(a, b)]
    order = [(a, b) for rank in runs for a, b in rank]
    assert order == sorted(order)  # rank r's masks come before rank r+1's
    for rank in runs:
        for a, b in rank:
            gap = next(g for g in gaps if g[0] <= a < g[1])
            assert (a - gap[0]) % block == 0 and b <= gap[1]  # whole passes, as one process would cut them


def test_assemble_refuses_pieces_that_leave_a_row_empty():
    with pytest.raises(hk.HeadkitError, match="row 2 of 4"):
        assemble([(0, torch.ones(2, 1)), (3, torch.ones(1, 1))], 4)


def test_a_shard_holding_other_masks_is_refused(tmp_path):
    masks = torch.rand(8, 1, 2) < 0.5
    score = lambda m: iter([m.float().sum((1, 2))[:, None]])  # noqa: E731
    log = dict(n_layers=1, n_heads=2, n_prompts=1, meta={"seed": 0})
    run_phase(score, masks[:4], tmp_path, log)
    other = torch.rand(8, 1, 2) < 0.5
    other[:4] = masks[:4]
    other[5] = ~masks[5]
    from headkit.analyses.outcome_log import OutcomeLog

    with OutcomeLog(tmp_path / "from-000000004", n_layers=1, n_heads=2, n_prompts=1,
                    meta={"seed": 0, "first_mask": 4}) as shard:
        shard.append(other[4:6], torch.zeros(2, 1))
    with pytest.raises(hk.HeadkitError, match="from-000000004 holds masks this call would not draw"):
        run_phase(score, masks, tmp_path, log)


def test_a_resumed_phase_reads_its_shards_and_fills_only_the_gaps(tmp_path):
    masks = torch.rand(12, 1, 2) < 0.5
    calls = []

    def score(m):
        calls.append(len(m))
        return iter([m.float().sum((1, 2))[:, None] * 10])

    log = dict(n_layers=1, n_heads=2, n_prompts=1, meta={"seed": 0})
    here = World(0, 1)
    run_phase(score, masks[:3], tmp_path, log, here=here)  # a first run stopped after 3 masks
    from headkit.analyses.outcome_log import OutcomeLog

    with OutcomeLog(tmp_path / "from-000000008", n_layers=1, n_heads=2, n_prompts=1,
                    meta={"seed": 0, "first_mask": 8}) as shard:  # another rank's part, masks 8 and 9
        shard.append(masks[8:10], masks[8:10].float().sum((1, 2))[:, None] * 10)
    calls.clear()
    outcomes, evaluated = run_phase(score, masks, tmp_path, log, here=here)
    assert calls == [5, 2] and evaluated == 7  # masks 3-7, then 10-11
    assert torch.equal(outcomes[:, 0], masks.float().sum((1, 2)) * 10)
    assert len(OutcomeLog(tmp_path, n_layers=1, n_heads=2, n_prompts=1, meta={"seed": 0})) == 8  # appended 3..7


# ------------------------------------------------------------------------------------------------- 2 processes
def launch(ranks: int, *args: object, module: bool = False) -> subprocess.CompletedProcess:
    """Run the worker (or ``-m headkit`` with module=True) in ``ranks`` gloo processes, or alone for ranks=0."""
    target = ["-m", "headkit"] if module else [str(WORKER)]
    prefix = [sys.executable] if ranks == 0 else [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                                  str(ranks), *(["-m"] if module else [])]
    command = prefix + (target if ranks == 0 else target[1:] if module else target) + [str(a) for a in args]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or module, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same work alone and on 2 gloo ranks."""
    root = tmp_path_factory.mktemp("shards")
    launch(0, root / "one.pt", root / "one", 20)
    launch(2, root / "two.pt", root / "two", 20)
    load = lambda name: torch.load(root / name, weights_only=False)  # noqa: E731
    return root, load("one.pt"), load("two.pt")


def test_two_ranks_give_the_one_process_results_bit_for_bit(runs):
    root, one, two = runs
    assert one["world"] == 1 and two["world"] == 2
    assert torch.equal(one["mc"], two["mc"])
    for phase in one["study_margins"]:
        assert torch.equal(one["study_margins"][phase], two["study_margins"][phase])
    pd.testing.assert_frame_equal(one["study_scores"], two["study_scores"], check_exact=True)
    assert one["evaluations"] == two["evaluations"] == 2 * 20 * 4
    assert torch.equal(one["suppression"].nan_to_num(-1.0), two["suppression"].nan_to_num(-1.0))
    # each rank logged its own shard of each phase
    assert sorted(p.name for p in (root / "two" / "many_ablated").iterdir() if p.is_dir()) == ["from-000000010"]


def test_two_ranks_fit_each_seed_as_one_process_does(runs):
    _, one, two = runs
    for a, b in zip(one["chg"][:3], two["chg"][:3]):
        assert a.shape == b.shape == (3, 2, 4)
        assert (a - b).abs().max() <= 1e-6  # float32 rounding: other seeds' rows share the passes in one process
    assert one["chg"][3] == two["chg"][3] == (0, 1, 2)
    h1, h2 = one["chg"][4], two["chg"][4]
    pd.testing.assert_frame_equal(h1.drop(columns="nll"), h2.drop(columns="nll"))  # the same rows, in order
    assert (h1["nll"] - h2["nll"]).abs().max() <= 1e-5
    assert one["contrastive"][1] == two["contrastive"][1] == (5, 2, 7)
    assert (one["contrastive"][0] - two["contrastive"][0]).abs().max() <= 1e-6
    assert (one["chg"][0][0] - one["chg"][0][1]).abs().max() > 1e-3  # the seeds really differ


def test_a_study_resumes_on_another_number_of_ranks_with_the_same_scores(runs, tmp_path):
    _, one, _ = runs
    launch(2, tmp_path / "a.pt", tmp_path / "log", 12, "study")  # 2 ranks, 12 masks per phase
    torn = tmp_path / "log" / "many_ablated" / "from-000000006" / "rows.bin"
    os.truncate(torn, torn.stat().st_size - 5)  # rank 1 was killed mid-append
    launch(0, tmp_path / "b.pt", tmp_path / "log", 16, "study")  # resumed alone, extended to 16
    launch(3, tmp_path / "c.pt", tmp_path / "log", 20, "study")  # and on 3 ranks to 20
    c = torch.load(tmp_path / "c.pt", weights_only=False)
    for phase in one["study_margins"]:
        assert torch.equal(c["study_margins"][phase], one["study_margins"][phase])
    pd.testing.assert_frame_equal(c["study_scores"], one["study_scores"], check_exact=True)
    assert c["evaluations"] == 2 * 4 * 4  # only masks 16-19 of each phase were new


# ------------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    model, tok = hk.models.tiny("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_headkit_mc_and_suppress_under_torchrun_write_what_one_process_writes(saved, tmp_path):
    text = tmp_path / "trace.txt"
    text.write_text("Tom eats apples. Then he bought milk. Alice saw a movie. The child drew a house. He reads books.")
    model, tok = hk.models.load(saved)
    backend = hk.get_backend(model, tok)
    prompts = [p for p, _ in hk.data.copy_pairs()[:8]]  # targets: the model's own answers, so none is dropped
    own = [tok.decode([int(backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax())]) for p in prompts]
    lines = tmp_path / "prompts.tsv"
    lines.write_text("".join(f"{p}\t{' ' + t.strip() if t.strip() else t}\n" for p, t in zip(prompts, own)))
    for ranks, out in ((0, "one"), (2, "two")):
        common = ["--model", saved, "--device", "cpu"]
        done = launch(ranks, "mc", *common, "--prompts", lines, "--masks", "10", "--p-keep", "0.5,0.8",
                      "--rows-per-pass", "16", "--out", tmp_path / out / "mc", module=True)
        assert done.returncode == 0, done.stderr[-3000:]
        done = launch(ranks, "suppress", text, *common, "--rows-per-pass", "1", "--out", tmp_path / out / "sup",
                      module=True)
        assert done.returncode == 0, done.stderr[-3000:]
    for table in ("mc/scores.csv", "mc/synergy.csv", "sup/suppression.csv"):
        assert (tmp_path / "one" / table).read_bytes() == (tmp_path / "two" / table).read_bytes(), table


def test_a_command_that_does_not_shard_is_refused_under_torchrun(saved, tmp_path):
    done = launch(2, "triad", "--model", saved, "--out", tmp_path / "t", module=True)
    assert done.returncode != 0
    assert "headkit triad was started by torchrun (WORLD_SIZE=2)" in done.stderr
    assert not (tmp_path / "t" / "triad.csv").exists()
