"""Receiver heads and sentences: headkit's vectorised torch code against the seed's numpy/scipy algorithm."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import headkit as hk
from headkit import receivers
from tests.conftest import require, shared_runner

# ------------------------------------------------------------------ the reference (seed 001, verbatim logic)


def ref_vertical_scores(avg_attention_matrix, proximity_ignore=4, control_depth=True):
    """Thought Anchors' get_vertical_scores (seed 001 solution), loop over sentences, scipy ranks."""
    n = avg_attention_matrix.shape[0]
    mat = avg_attention_matrix.copy()
    mat[np.triu_indices_from(mat, k=1)] = np.nan
    mat[np.triu_indices_from(mat, k=-proximity_ignore + 1)] = np.nan
    if control_depth:
        per_row = np.sum(~np.isnan(mat), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mat = stats.rankdata(mat, axis=1, nan_policy="omit") / per_row[:, None]
    vert_scores = []
    for j in range(n):
        future_attention = mat[j + proximity_ignore :, j]
        if len(future_attention) == 0 or np.all(np.isnan(future_attention)):
            vert_scores.append(np.nan)
        else:
            vert_scores.append(np.nanmean(future_attention))
    return np.array(vert_scores)


def ref_kurtosis(vertical_scores):
    valid = vertical_scores[~np.isnan(vertical_scores)]
    if len(valid) < 4:
        return np.nan
    with warnings.catch_warnings():  # scipy warns on the constant case, which it (and headkit) answers with NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return stats.kurtosis(valid, fisher=True, bias=True)


def ref_top_k(kurts, top_k, exclude_layer0=True):
    """get_top_k_receiver_heads: plain mean over traces, layer 0 NaN, argpartition, sorted descending."""
    mean = np.mean(kurts, axis=0)
    if exclude_layer0:
        mean[0] = np.nan
    flat = mean.flatten()
    valid = ~np.isnan(flat)
    idx = np.where(valid)[0]
    part = np.argpartition(flat[valid], -top_k)[-top_k:]
    part = part[np.argsort(-flat[valid][part])]
    layers, heads = np.unravel_index(idx[part], mean.shape)
    return list(zip(layers.tolist(), heads.tolist()))


def random_matrix(s, rng, ties=False, holes=False):
    m = rng.random((s, s))
    if ties:
        m = np.round(m * 4) / 4  # many equal values per row
    if holes:
        m[rng.random((s, s)) < 0.15] = np.nan
    return m


# ------------------------------------------------------------------ vertical scores


@pytest.mark.parametrize("s", [1, 2, 3, 5, 9, 24])
@pytest.mark.parametrize("p", [0, 1, 2, 4, 7, 30])
@pytest.mark.parametrize("control_depth", [True, False])
@pytest.mark.parametrize("kind", ["plain", "ties", "holes"])
def test_vertical_scores_equal_the_seed_algorithm(s, p, control_depth, kind):
    rng = np.random.default_rng(s * 100 + p)
    m = random_matrix(s, rng, ties=kind == "ties", holes=kind == "holes")
    want = ref_vertical_scores(m, p, control_depth)
    got = receivers.vertical_scores(torch.from_numpy(m), p, control_depth).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=1e-12)


def test_vertical_scores_batched_over_layers_and_heads_equal_one_by_one():
    rng = np.random.default_rng(0)
    m = np.stack([[random_matrix(12, rng, ties=(l + h) % 2 == 0) for h in range(3)] for l in range(2)])
    got = receivers.vertical_scores(torch.from_numpy(m), 3)
    for l in range(2):
        for h in range(3):
            want = ref_vertical_scores(m[l, h], 3, True)
            np.testing.assert_allclose(got[l, h].numpy(), want, rtol=0, atol=1e-12, equal_nan=True)


def test_vertical_scores_ignore_the_future_and_the_band_by_hand():
    m = torch.full((4, 4), 100.0, dtype=torch.float64)  # the future and the band must never leak in
    m[2, 0], m[3, 0], m[3, 1] = 0.2, 0.4, 0.7
    got = receivers.vertical_scores(m, 2, control_depth=False).tolist()
    assert got[0] == pytest.approx(0.3) and got[1] == pytest.approx(0.7)
    assert np.isnan(got[2]) and np.isnan(got[3])


# ------------------------------------------------------------------ kurtosis, top heads, scores, reliability


@pytest.mark.parametrize(
    "values",
    [
        [0.1, 0.5, 0.2, 0.9, 0.3],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        [1.0, 2.0, np.nan, 3.0, 4.0, np.nan, 10.0],
        [1.0, 2.0, 3.0],  # fewer than 4 valid -> NaN
        [1.0, np.nan, 2.0, np.nan, 3.0],
        [0.5, 0.5, 0.5, 0.5],  # constant -> NaN (scipy)
        [np.nan] * 6,
    ],
)
def test_kurtosis_equals_scipy_fisher_biased(values):
    x = np.array(values)
    want = ref_kurtosis(x)
    got = receivers.kurtosis(torch.from_numpy(x)).item()
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)


def test_kurtosis_batched_random_equals_scipy():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 5, 40)) ** 3
    v[0, 1, :37] = np.nan
    got = receivers.kurtosis(torch.from_numpy(v)).numpy()
    want = np.array([[ref_kurtosis(v[a, b]) for b in range(5)] for a in range(3)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, equal_nan=True)


def test_top_heads_equal_the_reference_selection():
    rng = np.random.default_rng(2)
    kurts = rng.standard_normal((5, 6, 4)) * 3
    kurts[2, 3, 1] = np.nan  # NaN in one trace: the head is left out (plain mean)
    kurts[:, 0, 2] = 50.0  # layer 0 would win, but is excluded
    got = receivers.top_heads(torch.from_numpy(kurts), k=7)
    assert got == ref_top_k(kurts, 7)
    assert (3, 1) not in got and (0, 2) not in got
    assert receivers.top_heads(torch.from_numpy(kurts), k=1, exclude_layer0=False) == [(0, 2)]


def test_receiver_scores_and_split_half_by_hand():
    rng = np.random.default_rng(3)
    v = rng.random((3, 4, 10))
    v[1, 2, 7] = np.nan
    got = receivers.receiver_scores(torch.from_numpy(v), [(1, 2), (2, 0), (0, 3)]).numpy()
    np.testing.assert_allclose(got, np.nanmean(np.stack([v[1, 2], v[2, 0], v[0, 3]]), 0), atol=1e-12)

    kurts = rng.standard_normal((7, 3, 4))
    a, b = kurts[0::2].mean(0)[1:].flatten(), kurts[1::2].mean(0)[1:].flatten()
    assert receivers.split_half(torch.from_numpy(kurts)) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: receivers.vertical_scores(torch.zeros(3, 4)), r"matrix f32\[3, 4\].*\[\.\.\., sentence, sentence\]"),
        (lambda: receivers.vertical_scores(torch.zeros(3, 3), -1), r"proximity_ignore=-1.*>= 0"),
        (lambda: receivers.top_heads(torch.zeros(2, 3), k=0), r"k=0"),
        (lambda: receivers.top_heads(torch.zeros(2, 3), k=4), r"only 3 heads.*k <= 3"),
        (lambda: receivers.top_heads(torch.zeros(4), k=1), r"kurtosis f32\[4\]"),
        (lambda: receivers.split_half(torch.zeros(1, 2, 3)), r"at least 2 traces"),
        (lambda: receivers.receiver_scores(torch.zeros(2, 3, 5), "L2H0"), r"head L2H0.*2 layers"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(hk.HeadkitError, match=match):
        call()


# ------------------------------------------------------------------ sentences


def test_locate_maps_sentences_to_tokens_through_offsets():
    tok = hk.models.tiny_tokenizer()
    text = "Tom eats apples .\n\n  Sarah   wears hats . the cat saw a dog ."
    s = hk.sentences.locate(tok, text, ["Tom eats apples .", "Sarah wears hats .", "the cat saw a dog ."])
    ids = s.input_ids[0].tolist()
    assert ids == tok(text)["input_ids"] and ids[0] == 1  # the BOS belongs to no sentence
    pieces = [tok.decode(ids[a:b]) for a, b in s.spans]
    assert pieces == ["Tom eats apples .", "Sarah wears hats .", "the cat saw a dog ."]
    assert [text[a:b] for a, b in s.chars] == ["Tom eats apples .", "Sarah   wears hats .", "the cat saw a dog ."]
    assert s.membership().sum(1).tolist() == [4, 4, 6]


def test_locate_gives_a_straddling_token_to_the_first_sentence():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "one": 1, ".two": 2, "three": 3, ".": 4, " ": 5}
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    s = hk.sentences.locate(tok, "one .two three .", ["one .", "two three ."])  # ".two" straddles both
    assert s.input_ids[0].tolist() == [1, 2, 3, 4]
    assert s.spans == [(0, 2), (2, 4)]  # ".two" starts with the first sentence's "."


def test_locate_default_split_and_errors():
    tok = hk.models.tiny_tokenizer()
    s = hk.sentences.locate(tok, "Tom eats apples. Sarah wears hats! the cat saw a dog?")
    assert s.texts == ["Tom eats apples.", "Sarah wears hats!", "the cat saw a dog?"]
    with pytest.raises(hk.HeadkitError, match=r"sentence 1 'the dog eats'.*does not occur"):
        hk.sentences.locate(tok, "Tom eats apples . the cat eats .", ["Tom eats apples .", "the dog eats"])
    with pytest.raises(hk.HeadkitError, match=r"sentence 1 'Tom eats'.*occurs earlier.*in order"):
        hk.sentences.locate(tok, "Tom eats apples . the cat eats .", ["the cat eats", "Tom eats"])
    with pytest.raises(hk.HeadkitError, match=r"non-empty strings"):
        hk.sentences.locate(tok, "Tom eats .", ["Tom eats .", "  "])
    with pytest.raises(hk.HeadkitError, match=r"fast \(Rust\)"):
        hk.sentences.locate(object(), "Tom eats .")


# ------------------------------------------------------------------ scan on models, against full patterns

WORDS = ["cat", "dog", "boy", "girl", "man", "chef", "team", "bird", "child", "artist"]


def tiny_trace(tok, n=10):
    text = " ".join(f"the {w} eats {WORDS[(i * 3) % len(WORDS)]} ." for i, w in enumerate(WORDS[:n]))  # <= 51 tokens
    return hk.sentences.locate(tok, text)


@pytest.mark.parametrize("adapter", ["hf-eager", "hf-sdpa", "hf-chunked", "tl", "nnsight-eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_scan_equals_the_seed_pipeline_on_full_patterns(adapter, arch, monkeypatch):
    """Reference: eager output_attentions on an untouched copy, pooled by hand, the seed's scores per head.

    hf-chunked: the transformers adapter pools 3 query rows at a time (as it does for long texts).
    """
    if adapter == "hf-chunked":
        from headkit.adapters import huggingface_attention

        monkeypatch.setattr(huggingface_attention, "_POOL_CHUNK_ELEMENTS", 3 * 4 * 46)
    runner = shared_runner("hf-sdpa" if adapter == "hf-chunked" else adapter, arch)
    traces = [tiny_trace(runner.tokenizer, n) for n in (9, 10)]
    result = receivers.scan(runner.backend, traces, proximity_ignore=2, progress=False)
    reference, _ = hk.models.tiny(arch, attn_implementation="eager")
    for t, trace in enumerate(traces):
        with torch.no_grad():
            attentions = reference(trace.input_ids, output_attentions=True).attentions
        for layer, att in enumerate(attentions):
            for head in range(att.shape[1]):
                a = att[0, head].double().numpy()
                pooled = np.array([[a[q0:q1, k0:k1].mean() for k0, k1 in trace.spans] for q0, q1 in trace.spans])
                want = ref_vertical_scores(pooled, 2, True)
                np.testing.assert_allclose(result.vertical[t][layer, head].numpy(), want, atol=1e-5, equal_nan=True)
                assert result.kurtosis[t, layer, head].item() == pytest.approx(ref_kurtosis(want), abs=1e-3, nan_ok=True)
    with torch.no_grad():  # the capture leaves the model's output alone
        ids = traces[1].input_ids
        plain = reference(ids).logits[0]
        captured = runner.backend.logits(ids, hk.capture_attention(hk.Heads.all(runner.shape.n_layers, 4), pool=traces[1].spans))[0]
    assert (plain - captured).abs().max() <= 1e-5
    table = result.scores(0, k=3)
    assert list(table.columns) == ["score", "start", "end", "text"] and len(table) == len(traces[0])


def test_scan_needs_enough_sentences():
    model, tok = hk.models.tiny("llama")
    with pytest.raises(hk.HeadkitError, match=r"trace 0 with 5 sentences and proximity_ignore=4.*at least 4"):
        receivers.scan(model, [tiny_trace(tok, 5)], progress=False)
    with pytest.raises(hk.HeadkitError, match=r"list of headkit.sentences.Sentences"):
        receivers.scan(model, tiny_trace(tok, 9), progress=False)


# ------------------------------------------------------------------ command line, on a tiny model


def test_cli_receivers_suppress_and_triad_write_their_outputs(tmp_path):
    require("matplotlib")  # in the full install; a partial one (CI's legacy virtualenvs) may skip
    from headkit import cli

    model, tok = hk.models.tiny("llama", attn_implementation="eager")
    files = []
    for n in (9, 10):
        path = tmp_path / f"trace{n}.txt"
        path.write_text(tiny_trace(tok, n).text)
        files.append(str(path))
    lines: list[str] = []
    scan = cli.receivers(texts=files, proximity_ignore=2, top=3, out_dir=str(tmp_path / "r"), model=model,
                         tokenizer=tok, out=lines.append)
    assert len(scan.top_heads(3)) == 3 and any("split-half reliability" in line for line in lines)
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"receivers.png", "kurtosis.csv", "scores.csv"}
    result = cli.suppress(text=files[0], heads="L1H0 L1H3", out_dir=str(tmp_path / "s"), model=model,
                          tokenizer=tok, out=lines.append)
    assert result.matrix.shape == (9, 9)
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"suppression.png", "suppression.csv"}
    t = cli.triad(length=6, out_dir=str(tmp_path / "t"), model=model, tokenizer=tok, out=lines.append)
    assert len(t.table) == 8 and (tmp_path / "t" / "triad.csv").exists()
    with pytest.raises(hk.HeadkitError, match=r"could not read text file.*missing.txt"):
        cli.receivers(texts=[str(tmp_path / "missing.txt")], model=model, tokenizer=tok, out=lines.append)
