"""``--model DIR`` on every command, through every adapter: the files written equal the Python API's on that model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import headkit as hk
from headkit import cli, data
from headkit.analyses import gating, stochastic_ablation
from headkit.cli_inputs import open_model, read_pairs
from tests.conftest import require

ADAPTERS = ["transformers", "transformer_lens", "nnsight"]
TRACE = "Tom eats apples. Then he bought milk. Alice saw a movie. The child drew a house. He reads books."


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama and its tokenizer saved to a folder, as a user's model is."""
    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    model, tok = hk.models.tiny("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def loaded(folder):
    return hk.models.load(folder)


def same_csv(a, b, tol=1e-5):
    x, y = pd.read_csv(a), pd.read_csv(b)
    assert list(x.columns) == list(y.columns) and x.shape == y.shape
    for column in x.columns:
        if pd.api.types.is_numeric_dtype(x[column]) and not pd.api.types.is_bool_dtype(x[column]):
            assert np.allclose(x[column], y[column], rtol=0, atol=tol, equal_nan=True), column
        else:
            assert x[column].tolist() == y[column].tolist(), column


def extra(adapter):
    if adapter == "transformer_lens":
        require("transformer_lens.model_bridge")
    if adapter == "nnsight":
        require("nnsight")
        return ["--attn-implementation", "eager"]  # nnsight reads attention weights only from eager attention
    return []


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_triad_on_a_saved_model_equals_the_api(saved, adapter, tmp_path):
    args = ["triad", "--model", str(saved), "--adapter", adapter, "--length", "6", "--out", str(tmp_path / "cli")]
    assert cli.main(args + extra(adapter)) == 0
    model, tok = loaded(saved)
    ids, query, key = hk.triad.induction_sequence(6, range(25, 100), seed=0, bos=tok.bos_token_id)
    hk.triad.triad(model, ids, query=query, key=key).save(tmp_path / "api")
    same_csv(tmp_path / "cli" / "triad.csv", tmp_path / "api" / "triad.csv")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_suppress_and_receivers_on_a_saved_model_equal_the_api(saved, adapter, tmp_path):
    text = tmp_path / "trace.txt"
    text.write_text(TRACE)
    assert cli.main(["suppress", str(text), "--model", str(saved), "--adapter", adapter, "--heads", "L1H0 L1H3",
                     "--out", str(tmp_path / "s")] + extra(adapter)) == 0
    assert cli.main(["receivers", str(text), "--model", str(saved), "--adapter", adapter, "--proximity", "1",
                     "--top", "3", "--out", str(tmp_path / "r")] + extra(adapter)) == 0
    model, tok = loaded(saved)
    sentences = hk.sentences.locate(tok, TRACE)
    hk.suppression.kl_matrix(model, sentences, heads=hk.Heads.parse("L1H0 L1H3"), progress=False).save(tmp_path / "s_api")
    same_csv(tmp_path / "s" / "suppression.csv", tmp_path / "s_api" / "suppression.csv")
    hk.receivers.scan(hk.get_backend(model, tok), [sentences], proximity_ignore=1).save(tmp_path / "r_api", k=3)
    same_csv(tmp_path / "r" / "kurtosis.csv", tmp_path / "r_api" / "kurtosis.csv")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_chg_on_a_saved_model_with_a_data_file_equals_the_api(saved, adapter, tmp_path):
    pairs = data.copy_pairs()[:6]
    lines = tmp_path / "pairs.tsv"
    lines.write_text("".join(f"{p}\t{t}\n" for p, t in pairs))
    kw = dict(seeds=1, steps=2, reg_steps=2, batch_size=2, lam=0.1)
    assert cli.main(["chg", "--model", str(saved), "--adapter", adapter, "--data", str(lines), "--seeds", "1",
                     "--steps", "2", "--reg-steps", "2", "--batch-size", "2", "--ks", "", "--out",
                     str(tmp_path / "cli")] + extra(adapter)) == 0
    model, tok = loaded(saved)
    gating.fit(model, pairs, tokenizer=tok, progress=False, **kw).save(tmp_path / "api")
    same_csv(tmp_path / "cli" / "taxonomy.csv", tmp_path / "api" / "taxonomy.csv")


def test_mc_on_a_saved_model_equals_the_api(saved, tmp_path):
    model, tok = loaded(saved)
    prompts = [p for p, _ in data.copy_pairs()[:8]]
    backend = hk.get_backend(model, tok)
    own = [tok.decode([int(backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax())]) for p in prompts]
    lines = tmp_path / "prompts.tsv"
    lines.write_text("".join(f"{p}\t{' ' + t.strip() if t.strip() else t}\n" for p, t in zip(prompts, own)))
    assert cli.main(["mc", "--model", str(saved), "--device", "cpu", "--prompts", str(lines), "--masks", "6",
                     "--p-keep", "0.5,0.8", "--out", str(tmp_path / "cli")]) == 0
    texts, targets = read_pairs(str(lines))
    api = stochastic_ablation.study(model, texts, targets, tokenizer=tok, n_masks=6, p_keep=(0.5, 0.8),
                                    path=tmp_path / "api_outcomes", progress=False)
    api.save(tmp_path / "api")
    same_csv(tmp_path / "cli" / "scores.csv", tmp_path / "api" / "scores.csv")


def test_demo_runs_on_a_saved_model(tmp_path):
    folder = tmp_path / "tiny-gemma3"
    model, tok = hk.models.tiny("gemma3")  # completes one copy prompt, which the demo needs
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    lines = []
    rows = cli.demo(model=str(folder), heads="L1H1 L3H0", repeats=1, out=lines.append)
    want = cli.demo(model=model, tokenizer=tok, heads="L1H1 L3H0", repeats=1, out=lambda _: None)
    assert [r["correct"] for r in rows] == [r["correct"] for r in want]
    assert str(folder) in lines[0]


@pytest.mark.parametrize(
    "given, match",
    [
        ("meta-llama/Llama-3.2-1B", r"looks like a model hub name.*huggingface-cli download meta-llama/Llama-3.2-1B"),
        ("{tmp}/missing", r"does not exist.*check the path"),
        ("{tmp}", r"holds no config.json"),
        ("{tmp}/notes.txt", r"is a file, not a model folder or a .gguf file"),
        ("{tmp}/bert", r"'bert' model, an architecture headkit does not know"),
    ],
)
def test_bad_model_paths_are_one_line_errors(given, match, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    assert cli.main(["triad", "--model", given.format(tmp=tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("headkit: ") and "\n" not in err
    import re

    assert re.search(match, err), err


def test_version_and_a_bare_headkit(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"headkit {hk.__version__}"
    assert cli.main([]) == 0
    assert "usage: headkit" in capsys.readouterr().out


def test_the_dtype_flag_loads_those_weights(saved, tmp_path):
    model, _, name = open_model(str(saved), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and name == str(saved)
