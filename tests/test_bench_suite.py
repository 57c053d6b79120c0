"""The prepared benchmark suite at toy sizes (what benchmarks/gpu.sh --quick runs in CI): every part runs,
writes its file as it finishes, and the summary reports the figures its JSON holds."""

from __future__ import annotations

import json
import statistics

import pytest

from headkit import HeadkitError
from headkit.bench_suite import TARGETS, suite


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    lines: list[str] = []
    record = suite(out, quick=True, device="cpu", shapes=["pythia-160m"], say=lines.append)
    return out, record, lines


def test_every_part_is_written_and_the_summary_reports_the_measured_figures(quick):
    out, record, lines = quick
    assert sorted(record["parts"]) == ["chg", "precision", "study", "suppression", "throughput"]
    for name in record["parts"]:
        assert json.loads((out / f"{name}.json").read_text()) == json.loads(json.dumps(record["parts"][name]))
    assert (out / "pythia-160m" / "bench.json").exists()
    t = record["parts"]["throughput"]["pythia-160m"]
    prompts, masks = record["meta"]["sizes"]["prompts"], record["meta"]["sizes"]["masks"]
    fused = masks * prompts / statistics.median(t["seconds"]["fused"])  # the rate is the raw timings' median
    assert t["evals_per_s"]["fused"] == pytest.approx(fused)
    summary = (out / "summary.md").read_text()
    assert f"| pythia-160m | {t['evals_per_s']['naive']:.0f} | {t['evals_per_s']['fused']:.0f} |" in summary
    chg = record["parts"]["chg"]
    assert chg["ratio"] == pytest.approx(chg["many_s"] / chg["one_s"])
    assert f"{chg['ratio']:.2f} | " in summary and "(quick)" in summary  # against the targets, marked as toy sizes
    assert all(text in summary for _, _, text in TARGETS.values())
    assert record["parts"]["suppression"]["max_difference"] < 1e-5  # batched = one sentence per pass
    assert record["meta"]["quick"] is True and lines[-1].rstrip("\n") == summary.rstrip("\n")


def test_parts_pick_what_runs_and_an_unknown_part_is_refused_before_anything_is_written(tmp_path):
    record = suite(tmp_path / "one", quick=True, device="cpu", shapes=["pythia-160m"], parts=["precision"],
                   say=lambda text: None)
    assert list(record["parts"]) == ["precision"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["precision.json", "suite.json", "summary.md"]
    with pytest.raises(HeadkitError, match=r"unknown suite part\(s\) \['studies'\].*leave parts out"):
        suite(tmp_path / "two", quick=True, device="cpu", parts=["studies"], say=lambda text: None)
    assert not (tmp_path / "two").exists()
