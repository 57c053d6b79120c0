"""``headkit bench``: the tables it prints and the results file it writes, on a named shape and on a saved model."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import headkit as hk
from headkit import bench, cli


def test_bench_on_a_shape_prints_the_table_and_writes_every_raw_timing(tmp_path, capsys):
    argv = ["bench", "--shape", "gpt2-small", "--masks", "16", "--prompts", "4", "--rounds", "1",
            "--overhead-rounds", "0", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| naive loop (evals/s) | fused (evals/s) | plain forward (evals/s) | fused / naive" in printed
    record = json.loads((tmp_path / "bench.json").read_text())
    meta, t = record["meta"], record["throughput"]
    assert meta["command"] == "headkit " + " ".join(argv) and meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["model"] == "gpt2-small shape (random weights)" and meta["versions"]["torch"] == torch.__version__
    assert t["evaluations"] == 16 * 4 and t["decisions_equal"] is True
    for k in ("naive", "fused", "plain"):  # the rates are read off the raw timings
        assert len(t["seconds"][k]) == 1 and t["evals_per_s"][k] == pytest.approx(64 / t["seconds"][k][0])
    assert record["overhead"] is None  # --overhead-rounds 0 skips it
    assert (tmp_path / "bench.md").read_text().startswith("# headkit bench: gpt2-small shape (random weights), cpu")


def test_bench_on_a_saved_model_and_the_whole_study(tmp_path):
    model, tok = hk.models.tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    result = bench.run(str(tmp_path / "m"), masks=4, prompts=6, rounds=1, study=8, overhead_rounds=0, device="cpu")
    assert result.meta["model"] == str(tmp_path / "m") and result.overhead is None
    assert result.study["masks"] == 8 and result.study["prompts"] <= 6 and result.study["seconds"] > 0


def test_the_shapes_have_the_real_models_sizes():
    want = {"pythia-160m": (12, 12, 162.3), "gpt2-small": (12, 12, 124.4), "gemma-3-270m": (18, 4, 268.1),
            "llama-3.2-1b": (16, 32, 1235.8)}
    from transformers import AutoConfig, AutoModelForCausalLM

    for name, (layers, heads, millions) in want.items():
        spec = dict(bench.SHAPES[name])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        shape = hk.get_backend(model).shape
        assert (shape.n_layers, shape.n_heads) == (layers, heads), name
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1), name


@pytest.mark.parametrize(
    "argv, match",
    [
        (["bench", "--shape", "gpt2-small", "--model", "x"], r"both a model and --shape"),
        (["bench", "--shape", "gpt2-small", "--masks", "0"], r"masks=0"),
    ],
)
def test_bad_bench_input_is_one_line(argv, match, tmp_path, capsys):
    assert cli.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headkit: ") and err.count("\n") == 1
    import re

    assert re.search(match, err)


def test_the_overhead_table_covers_each_installed_adapter():
    model, tok = hk.models.tiny("llama")
    o = bench.overhead(model, tok, torch.randint(4, 100, (2, 8)), rounds=2)
    rows = o["ratio"]
    assert rows["transformers: plain forward"] == 1.0 and "transformers: mask_attention (same heads)" in rows
    assert all(len(t) == 2 for t in o["seconds"].values())
    if importlib.util.find_spec("nnsight"):
        assert "nnsight: plain trace" in rows and "nnsight: gate (every head, every layer)" in rows
    if importlib.util.find_spec("transformer_lens"):
        assert "TransformerLens: capture_attention (same heads)" in rows
    for name, ms in o["ms"].items():  # each ratio is to its own framework's plain forward
        base = next(v for k, v in o["ms"].items() if k.split(":")[0] == name.split(":")[0] and "plain" in k)
        assert rows[name] == pytest.approx(ms / base, abs=1e-4)
