"""Sentence-suppression KL matrix against one forward pass per sentence through the hand-written attention."""

from __future__ import annotations

import copy

import pytest
import torch

import headkit as hk
from headkit import suppression
from tests import reference as ref
from tests.conftest import require, shared_runner

TEXT = "the cat eats apples . Tom reads books . the dog saw a bird . Sarah wears hats . the man drinks milk ."


def reference_matrix(model, sentences, heads, temperature=1.0, log=False):
    """One forward per suppressed sentence, reference attention blocking its keys, full logits, KL by hand."""
    model = ref.use_reference_attention(copy.deepcopy(model))
    ids = sentences.input_ids
    n_layers = model.config.num_hidden_layers
    ref.BLOCKED.clear()
    with torch.no_grad():
        base = model(ids).logits[0].double() / temperature
    s = len(sentences)
    out = torch.full((s, s), torch.nan, dtype=torch.float64)
    try:
        for j, (a, b) in enumerate(sentences.spans):
            for layer in range(n_layers):
                in_layer = [h for (l, h) in heads if l == layer]
                if in_layer:
                    ref.BLOCKED[layer] = ref.Block(in_layer, set(range(a, b)))
            with torch.no_grad():
                sup = model(ids).logits[0].double() / temperature
            ref.BLOCKED.clear()
            for i in range(j, s):
                kls = []
                for t in range(*sentences.spans[i]):
                    p = torch.softmax(base[t], -1)
                    kl = float((p * (torch.log_softmax(base[t], -1) - torch.log_softmax(sup[t], -1))).sum())
                    kls.append(torch.tensor(max(kl, 0.0) + 1e-9).log().item() if log else max(kl, 0.0))
                out[i, j] = sum(kls) / len(kls)
    finally:
        ref.BLOCKED.clear()
    return out


@pytest.mark.parametrize("adapter", ["hf-eager", "hf-sdpa", "tl", "nnsight-sdpa", "nnsight-remote"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_kl_matrix_equals_one_forward_per_sentence(adapter, arch):
    runner = shared_runner(adapter, arch)
    sentences = hk.sentences.locate(runner.tokenizer, TEXT)
    every = [(l, h) for l in range(runner.shape.n_layers) for h in range(runner.shape.n_heads)]
    want = reference_matrix(runner.plain, sentences, every)
    got = suppression.kl_matrix(runner.backend, sentences, rows_per_pass=3, progress=False)
    assert torch.equal(got.matrix.isnan(), want.isnan())
    assert (got.matrix - want).nan_to_num(0).abs().max() <= 1e-5
    assert (want.nan_to_num(0) > 1e-4).sum() >= 5  # suppression changes something on these random models


def test_head_subset_temperature_log_and_rows_per_pass():
    model, tok = hk.models.tiny("llama")
    sentences = hk.sentences.locate(tok, TEXT)
    heads = [(0, 1), (1, 0), (1, 3)]
    want = reference_matrix(model, sentences, heads, temperature=0.6, log=True)
    for rows in (1, 2, 5, None):
        got = suppression.kl_matrix(model, sentences, heads="L0H1 L1H0 L1H3", temperature=0.6, log=True, rows_per_pass=rows, progress=False)
        assert (got.matrix - want).nan_to_num(0).abs().max() <= 1e-5, rows


def test_heads_that_cannot_reach_the_output_change_nothing():
    """Zero W_O for the suppressed heads: masking their attention cannot change any prediction."""
    model, tok = hk.models.tiny("llama")
    with torch.no_grad():
        ref.head_slice(model, 1, 2).zero_()
    sentences = hk.sentences.locate(tok, TEXT)
    got = suppression.kl_matrix(model, sentences, heads="L1H2", progress=False).matrix
    assert got.nan_to_num(0).abs().max() <= 1e-9


def test_table_centring_and_plot(tmp_path):
    model, tok = hk.models.tiny("gpt2")
    sentences = hk.sentences.locate(tok, TEXT)
    result = suppression.kl_matrix(model, sentences, progress=False)
    table = result.table()
    assert len(table) == 10 and set(table.columns) >= {"affected", "suppressed", "kl"}
    centred = result.centred()
    for i in range(1, 5):
        row = result.matrix[i, :i]
        assert torch.allclose(centred[i, :i], row - row.mean())
        assert centred[i, i:].isnan().all()
    require("matplotlib")  # in the full install; a partial one (CI's legacy virtualenvs) may skip
    result.plot(str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"heads": "L2H0"}, r"head L2H0.*2 layers"),
        ({"temperature": 0}, r"temperature=0.*> 0"),
        ({"rows_per_pass": 0}, r"rows_per_pass=0"),
    ],
)
def test_bad_input(kwargs, match):
    model, tok = hk.models.tiny("llama")
    sentences = hk.sentences.locate(tok, TEXT)
    with pytest.raises(hk.HeadkitError, match=match):
        suppression.kl_matrix(model, sentences, progress=False, **kwargs)


def test_bad_sentences():
    model, tok = hk.models.tiny("llama")
    with pytest.raises(hk.HeadkitError, match=r"Sentences.*hk.sentences.locate"):
        suppression.kl_matrix(model, TEXT, progress=False)
