"""TransformerLens specifics: the hook contract used directly, live hook names, delegating attention,
and the value-bias folding trap of compatibility mode."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import headkit as hk
from headkit.adapters import transformer_lens as hk_tl
from tests import reference as ref
from tests.conftest import Runner, max_diff, require, shared_runner, token_ids


@pytest.fixture(params=["tl", "tl-compat", "tl-hooked"])
def tl_runner(request):
    """A tiny Llama behind every kind of TransformerLens model this virtualenv has (bridge 3.x/4.x, HookedTransformer)."""
    return shared_runner(request.param, "llama")


def test_interventions_are_transformer_lens_hooks_themselves(tl_runner):
    runner = tl_runner
    ids = token_ids()
    ablate = hk.zero_ablate("L1H2")
    direct = runner.model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    assert torch.equal(direct, runner.logits(ids, ablate))
    assert max_diff(direct, runner.logits(ids)) > 1e-3
    # a hook point of a layer it does not act on: refused (it would silently do nothing), model untouched
    for where in ["blocks.0.attn.hook_z", lambda name: name.endswith("hook_z")]:
        with pytest.raises(hk.HeadkitError, match=r"ZeroAblate\(heads='L1H2'\) was called at hook point "
                           r"'blocks\.0\.attn\.(hook_z|o\.hook_in)', in layer 0.*Fix: attach it at 'blocks\.1\.attn\.hook_z'"):
            runner.model.run_with_hooks(ids, fwd_hooks=[(where, ablate)])
    assert torch.equal(runner.model(ids), runner.logits(ids))
    # a gate covers every layer, so a filter over every hook_z is fine for it
    g = torch.ones(2, 4)
    g[1, 2] = 0
    swept = runner.model.run_with_hooks(ids, fwd_hooks=[(lambda name: name.endswith("hook_z"), hk.gate(g))])
    assert max_diff(swept, direct) <= 1e-6
    # hook passed positionally (as some TransformerLens wrappers do) works too
    z, point = torch.randn(2, 3, 4, 16), runner.model.hook_dict["blocks.1.attn.hook_z"]
    assert torch.equal(ablate(z, point), ablate(z, hook=point))
    # remove_batch_dim squeezes the batch axis away: refused with the layout it expects (bridges' run_with_hooks)
    if hk_tl.is_bridge(runner.model):
        with pytest.raises(hk.HeadkitError, match=r"got activation f32\[9, 4, 16\]; expected the z layout \[batch, pos"):
            runner.model.run_with_hooks(ids[:1], fwd_hooks=[("blocks.1.attn.hook_z", ablate)], remove_batch_dim=True)
    mask = hk.mask_attention("L0H1", keys=[(0, 3)])
    by_hand = runner.model.run_with_hooks(
        ids, fwd_hooks=[("blocks.0.attn.hook_attn_scores", mask), ("blocks.0.attn.hook_pattern", mask)]
    )
    assert torch.equal(by_hand, runner.logits(ids, mask))


def test_captures_as_plain_hooks_record_into_the_hooks_captures(tl_runner):
    runner = tl_runner
    ids = token_ids()
    cap = hk.capture_attention("L0H1 L1H3")
    hooks = hk_tl.fwd_hooks(runner.model, cap)
    assert isinstance(hooks, list) and len(hooks) == 2 and len(hooks.captures) == 0
    runner.model.run_with_hooks(ids, fwd_hooks=hooks)
    want = runner.backend.run(ids, cap).captures[cap].patterns
    assert torch.equal(hooks.captures[cap].patterns, want)
    with hk_tl.applied(runner.model, cap) as got:
        runner.model(ids)
    assert torch.equal(got[cap].patterns, want)
    with pytest.raises(hk.HeadkitError, match=r"plain TransformerLens hook at 'blocks\.0\.attn\.hook_pattern'.*hooks\.captures\[cap\]"):
        runner.model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", cap)])


def test_fwd_hooks_use_live_names_in_both_modes():
    default = shared_runner("tl", "gpt2")
    names = [name for name, _ in hk_tl.fwd_hooks(default.model, hk.zero_ablate("L1H0"), hk.capture_attention("L0H0"))]
    assert names == ["blocks.0.attn.hook_pattern", "blocks.1.attn.o.hook_in"]
    compat = shared_runner("tl-compat", "gpt2")
    names = [name for name, _ in hk_tl.fwd_hooks(compat.model, hk.zero_ablate("L1H0"))]
    assert names == ["blocks.1.attn.hook_z"]
    with default.model.hooks(fwd_hooks=hk_tl.fwd_hooks(default.model, hk.zero_ablate("L1H0"))):
        inside = default.model(token_ids())
    assert torch.equal(inside, default.logits(token_ids(), hk.zero_ablate("L1H0")))


def test_repr_of_the_torch_hook_names_the_interventions():
    runner = shared_runner("tl", "llama")
    [(_, fn)] = hk_tl.fwd_hooks(runner.model, hk.zero_ablate("L0H1"), hk.gate(torch.ones(2, 4)))[:1]
    assert repr(fn) == "headkit[ZeroAblate(heads='L0H1'), Gate(values=f32[2, 4])]"


@pytest.fixture(scope="module")
def opt_bridge():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=64, architectures=["OPTForCausalLM"],
    )
    torch.manual_seed(0)
    hf = OPTForCausalLM(config).eval()
    hf.set_attn_implementation("eager")
    plain = copy.deepcopy(hf)
    require("transformer_lens.model_bridge", "this TransformerLens has no TransformerBridge")
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers("tiny/opt", hf_model=hf, tokenizer=hk.models.tiny_tokenizer(), device="cpu")
    return bridge, plain


def test_masks_are_refused_where_the_bridge_delegates_attention(opt_bridge):
    bridge, plain = opt_bridge
    with pytest.raises(hk.HeadkitError, match=r"layer 1 .*computed by transformers.*discards edits.*huggingface"):
        hk_tl.fwd_hooks(bridge, hk.mask_attention("L1H0", keys=[(0, 2)]))
    # z still works there: zero-ablation equals the zeroed out-projection slice
    ids = token_ids()
    d = 16
    reference = copy.deepcopy(plain)
    with torch.no_grad():
        reference.model.decoder.layers[1].self_attn.out_proj.weight[:, 2 * d : 3 * d] = 0
        want = reference(ids).logits
    assert max_diff(hk.get_backend(bridge).logits(ids, hk.zero_ablate("L1H2")), want) <= 1e-5


def test_value_bias_folding_trap_is_warned_and_real():
    # Qwen2 has q/k/v biases (the tiny model's are random). After compatibility mode's default weight
    # processing, zeroing hook_z leaves W_O b_V in the output: not the same as removing the head.
    runner = Runner("tl", "qwen2")  # its own: switched to compatibility mode below
    ids = token_ids()
    want = shared_runner("tl", "qwen2").same_path(ref.scale_heads(runner.plain, {(1, 1): 0.0}))(ids)
    runner.model.enable_compatibility_mode(disable_warnings=True)  # fold_value_biases=True
    with pytest.warns(UserWarning, match="fold_value_biases"):
        folded = runner.logits(ids, hk.zero_ablate("L1H1"))
    assert max_diff(folded, want) > 1e-3
    exact = Runner("tl", "qwen2")  # its own, likewise
    exact.model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing was processed
        assert max_diff(exact.logits(ids, hk.zero_ablate("L1H1")), want) <= 1e-5


def test_plain_models_are_pointed_to_the_right_adapter():
    model, _ = hk.models.tiny("llama")
    with pytest.raises(hk.HeadkitError, match=r"got a LlamaForCausalLM.*TransformerBridge.*huggingface"):
        hk_tl.fwd_hooks(model, hk.zero_ablate("L0H0"))
