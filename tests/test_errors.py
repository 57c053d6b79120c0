"""Bad input gets a HeadkitError naming what was given, what was expected and a fix, and nothing is left
attached: not after a validation error, not after a run-time error, not after an exception in the block."""

from __future__ import annotations

import pytest
import torch

import headkit as hk
from tests.conftest import Runner, attachments, shared_runner, token_ids


@pytest.fixture(params=["hf-sdpa", "tl"])
def llama(request):
    return shared_runner(request.param, "llama")  # 2 layers, 4 query heads, 2 key/value heads


def settled_attachments(runner):
    """Attachments after one plain forward pass (TransformerLens adds its own hooks on the first one)."""
    runner.logits(token_ids())
    return attachments(runner.model)


def expect_error(runner, interventions, match, ids=None):
    before = settled_attachments(runner)
    with pytest.raises(hk.HeadkitError, match=match) as err:
        runner.logits(token_ids() if ids is None else ids, *interventions)
    assert isinstance(err.value, ValueError)
    assert attachments(runner.model) == before, "something stayed attached"
    return str(err.value)


# ------------------------------------------------------------------------------------------------- at attach time
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"positions": torch.ones(2, 3, dtype=torch.bool)}, r"positions bool\[2, 3\].*input's shape \[2, 9\]"),
        ({"positions": torch.ones(2, 9, dtype=torch.long)}, r"bool tensor of the input's shape"),
        ({"positions": torch.ones(2, 9, dtype=torch.bool), "last_only": True}, r"both last_only=True and positions"),
    ],
)
def test_bad_positions(llama, kwargs, match):
    before = settled_attachments(llama)
    with pytest.raises(hk.HeadkitError, match=match):
        llama.backend.logits(token_ids(), hk.zero_ablate("L0H0"), **kwargs)
    assert attachments(llama.model) == before


def test_layer_out_of_range(llama):
    msg = expect_error(llama, [hk.zero_ablate("L0H0"), hk.zero_ablate("L2H0")], r"L2H0.*2 layers.*layer indices 0\.\.1")
    assert "Fix:" in msg


def test_head_beyond_the_query_heads_on_a_gqa_model(llama):
    expect_error(
        llama, [hk.mask_attention("L1H4", keys=[(0, 1)])], r"L1H4.*4 query heads per layer \(and 2 key/value heads.*query heads"
    )


def test_gate_shape_mismatch(llama):
    expect_error(llama, [hk.gate(torch.ones(3, 4))], r"values of shape \[3, 4\].*2 layers and 4 query heads.*torch\.ones\(2, 4\)")
    expect_error(llama, [hk.gate(torch.ones(5, 2, 5))], r"\[batch, 2, 4\]")


def test_means_with_the_wrong_shape(llama):
    expect_error(llama, [hk.mean_ablate("L0H0", torch.zeros(2, 4, 8))], r"means of shape \[2, 4, 8\].*\[2, 4, 16\].*compute_means")


def test_not_an_intervention(llama):
    expect_error(llama, [hk.zero_ablate("L0H0"), lambda z, hook: z], r"as intervention 1.*headkit interventions")


# ------------------------------------------------------------------------------------------------- at build time
@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: hk.gate(torch.ones(2, 4, dtype=torch.int64)), r"non-float dtype.*values\.float\(\)"),
        (lambda: hk.gate(torch.ones(4)), r"f32\[4\].*\[n_layers, n_heads\]"),
        (lambda: hk.mask_attention("L0H0", keys=[]), r"non-empty list"),
        (lambda: hk.mask_attention("L0H0", keys=[(3, 3)]), r"an empty range \(3, 3\).*start < end"),
        (lambda: hk.mask_attention("L0H0", keys=[(5, 2)]), r"a reversed range \(5, 2\).*\(2, 5\)"),
        (lambda: hk.mask_attention("L0H0", keys=[(-1, 2)]), r"negative start"),
        (lambda: hk.mask_attention("L0H0", keys=[(0, 2)], queries=[(4, 1)]), r"queries got a reversed range"),
        (lambda: hk.mask_attention("L0H0", keys=torch.ones(5)), r"keys got f32\[5\].*bool tensor"),
        (lambda: hk.mask_attention("", keys=[(0, 1)]), r"mask_attention got no heads"),
        (lambda: hk.zero_ablate("L0H0 L1"), r"zero_ablate: .*could not read 'L1'"),
        (lambda: hk.mean_ablate("L0H0", torch.full((2, 4, 16), float("nan"))), r"NaN or inf.*attention_mask"),
        (lambda: hk.mean_ablate("L0H0", torch.zeros(2, 4, 16, dtype=torch.int32)), r"float tensor.*compute_means"),
        (lambda: hk.capture_attention("L0H0", pool=[(0, 2), (2, 2)]), r"pool got an empty range"),
    ],
)
def test_bad_arguments_fail_where_they_are_written(build, match):
    with pytest.raises(hk.HeadkitError, match=match) as err:
        build()
    assert "Fix:" in str(err.value)


# ------------------------------------------------------------------------------------------------- at run time
def test_per_row_gate_batch_mismatch_names_the_hook_point(llama):
    msg = expect_error(llama, [hk.gate(torch.ones(3, 2, 4))], r"batch of 2 rows.*3", ids=token_ids(batch=2))
    point = "blocks.0.attn" if llama.adapter == "tl" else "model.layers.0.self_attn.o_proj"
    assert point in msg


def test_per_row_key_mask_batch_mismatch(llama):
    keys = torch.zeros(3, 9, dtype=torch.bool)
    expect_error(llama, [hk.mask_attention("L1H0", keys=keys)], r"batch of 2 rows.*per-row keys mask has 3")


def test_key_range_beyond_the_sequence(llama):
    msg = expect_error(llama, [hk.mask_attention("L1H0", keys=[(5, 20)])], r"ending at 20.*9 tokens.*BOS")
    assert "hook_attn_scores" in msg or "self_attn" in msg


def test_explicit_key_mask_of_the_wrong_length(llama):
    expect_error(llama, [hk.mask_attention("L0H0", keys=torch.ones(12, dtype=torch.bool))], r"over 12 positions.*9 tokens")


def test_per_position_means_of_the_wrong_length(llama):
    expect_error(llama, [hk.mean_ablate("L0H0", torch.zeros(2, 5, 4, 16))], r"9 positions.*cover 5.*position-pooled")


def test_pooled_capture_beyond_the_sequence(llama):
    expect_error(llama, [hk.capture_attention("L0H0", pool=[(0, 4), (4, 12)])], r"pool span ending at 12.*9 tokens")


def test_exception_inside_the_block_removes_everything(llama):
    before = settled_attachments(llama)
    interventions = [
        hk.zero_ablate("L0H1"),
        hk.gate(torch.ones(2, 4)),
        hk.mask_attention("L1H0", keys=[(0, 2)]),
        hk.capture_attention("L0H0 L1H3"),
    ]
    with pytest.raises(RuntimeError, match="user code failed"):
        with llama.applied(*interventions):
            assert attachments(llama.model) != before  # really attached
            llama.model(token_ids())
            raise RuntimeError("user code failed")
    assert attachments(llama.model) == before
    plain = hk.get_backend(llama.model).logits(token_ids())
    assert torch.equal(plain, llama.logits(token_ids()))  # and the model behaves as before


def test_nested_blocks_unwind_in_order(llama):
    before = settled_attachments(llama)
    ids = token_ids()
    outer_ivs = [hk.mask_attention("L1H0", keys=[(0, 3)]), hk.zero_ablate("L0H2")]
    inner_ivs = [hk.mask_attention("L1H0", keys=[(5, 7)])]
    with llama.applied(*outer_ivs):
        outer = llama.model(ids)
        with llama.applied(*inner_ivs):
            both = llama.model(ids)
        again = llama.model(ids)
    unwrap = (lambda out: out) if llama.adapter == "tl" else (lambda out: out.logits)
    assert torch.equal(unwrap(outer), unwrap(again))
    assert torch.allclose(unwrap(both), llama.logits(ids, *outer_ivs, *inner_ivs), atol=1e-6)
    assert attachments(llama.model) == before


def test_flash_attention_is_refused_for_masks():
    runner = Runner("hf-sdpa", "llama")
    runner.model.config._attn_implementation = "flash_attention_2"  # as if loaded with flash attention
    try:
        with pytest.raises(hk.HeadkitError, match=r"'flash_attention_2'.*set_attn_implementation"):
            with runner.applied(hk.zero_ablate("L0H1"), hk.mask_attention("L0H0", keys=[(0, 1)])):
                pass
        assert attachments(runner.model) == set()
    finally:
        runner.model.config._attn_implementation = "sdpa"


def test_unsupported_models_are_named():
    with pytest.raises(hk.HeadkitError, match=r"get_backend got a builtins\.object.*TransformerBridge"):
        hk.get_backend(object())
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(hk.HeadkitError, match=r"model_type 'bert'.*\['gemma3_text', 'gpt2'"):
        hk.get_backend(bert)
