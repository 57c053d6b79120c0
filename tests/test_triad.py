"""The induction triad against hand-written references: eager patterns, weight-zeroed copies, norms by hand."""

from __future__ import annotations

import pytest
import torch

import headkit as hk
from headkit.analyses.triad import induction_sequence, triad
from tests import reference as ref

ARCHS = ["gpt2", "llama", "gemma3"]


def setup(arch, seed=0):
    model, _ = hk.models.tiny(arch, attn_implementation="eager", seed=seed)
    model.requires_grad_(False)  # the references below read weights as plain numbers
    ids, q, key = induction_sequence(7, range(4, 100), seed=seed, bos=1)
    return model, ids, q, key


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_and_ablation_equal_the_references(arch):
    model, ids, q, key = setup(arch)
    t = triad(model, ids, key=key, rows_per_pass=5)  # several passes of 5 heads
    target = int(ids[0, key])
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        p = out.logits[0, q].softmax(-1)[target]
        for (layer, head), row in t.table.iterrows():
            assert row["attention"] == pytest.approx(out.attentions[layer][0, head, q, key].item(), abs=1e-6)
            zeroed = ref.scale_heads(model, {(layer, head): 0.0})
            p_ablated = zeroed(ids).logits[0, q].softmax(-1)[target]
            assert row["ablation"] == pytest.approx((p - p_ablated).item(), abs=1e-6)
    assert t.p_target == pytest.approx(p.item(), abs=1e-6)


def unembed_direction(model, ids, q, target):
    with torch.no_grad():
        logits = model(ids).logits[0, q].double()
    g = -logits.softmax(-1)
    g[target] += 1
    return g @ model.get_output_embeddings().weight.detach().double()  # W_U^T (e_x - p)


def capture(model, ids, q):
    """Inputs of every W_O at q and the input of the final norm at q, through plain torch hooks."""
    z, final = {}, {}
    norm = model.transformer.ln_f if model.config.model_type == "gpt2" else model.model.norm

    def keep(store, name):
        def hook(module, args):  # returns None: a pre-hook that returns something replaces the input
            store[name] = args[0][0, q].double()

        return hook

    hooks = [norm.register_forward_pre_hook(keep(final, "r"))]
    for layer in range(model.config.num_hidden_layers):
        hooks.append(ref.out_proj(model, layer).register_forward_pre_hook(keep(z, layer)))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return z, final["r"], norm


def test_direct_effect_by_hand_llama():
    """RMSNorm final norm, no block norm: DE = (W_O[h] z_h * rsqrt(mean r^2 + eps) * w) . W_U^T (e_x - p)."""
    model, ids, q, key = setup("llama")
    target = int(ids[0, key])
    t = triad(model, ids, key=key)
    u = unembed_direction(model, ids, q, target)
    z, r, norm = capture(model, ids, q)
    scale = (r.pow(2).mean() + norm.variance_epsilon).rsqrt()
    d = ref.head_dim(model)
    for (layer, head), row in t.table.iterrows():
        c = ref.head_slice(model, layer, head).detach().double() @ z[layer][head * d : (head + 1) * d]
        want = float((c * scale * norm.weight.detach().double()) @ u)
        assert row["direct"] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_direct_effects_of_a_layer_add_up_to_its_output(arch):
    """Sum over heads (+ the W_O bias) = the layer's actual attention output through the norms, by hand.

    GPT-2: LayerNorm ln_f, c_proj bias. Gemma 3: the block's post-attention RMSNorm (1 + w) and the final
    RMSNorm (1 + w), both with frozen scales.
    """
    model, ids, q, key = setup(arch, seed=1)
    target = int(ids[0, key])
    t = triad(model, ids, key=key)
    u = unembed_direction(model, ids, q, target)
    z, r, final = capture(model, ids, q)
    if arch == "gpt2":
        var = r.var(unbiased=False)
        scale = (var + final.eps) ** -0.5
        through_final = lambda c: (c - c.mean()) * scale * final.weight.double()  # noqa: E731
    else:
        scale = (r.pow(2).mean() + final.eps).rsqrt()
        through_final = lambda c: c * scale * (1 + final.weight.double())  # noqa: E731
    for layer in range(model.config.num_hidden_layers):
        proj = ref.out_proj(model, layer)
        with torch.no_grad():
            a = proj(z[layer].float()[None])[0].double()  # the layer's attention output at q
        if arch == "gpt2":
            bias = proj.bias.detach().double()
            want = float(through_final(a - bias) @ u)  # heads only; the bias is not a head
        else:
            block = model.model.layers[layer].post_attention_layernorm
            s = (a.pow(2).mean() + block.eps).rsqrt()
            want = float(through_final(a * s * (1 + block.weight.double())) @ u)
        got = t.table.loc[layer, "direct"].sum()
        assert got == pytest.approx(want, abs=1e-4), layer


def test_overlap_and_top_by_hand():
    model, ids, q, key = setup("llama")
    t = triad(model, ids, key=key)
    k = 3
    tops = {m: set(t.table[m].nlargest(k).index) for m in ("attention", "direct", "ablation")}
    ov = t.overlap(k)["shared"]
    assert ov["attention & direct"] == len(tops["attention"] & tops["direct"])
    assert ov["all three"] == len(tops["attention"] & tops["direct"] & tops["ablation"])
    assert list(t.top("direct", 2).columns) == ["direct", "attention", "ablation"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"key": 99}, r"key=99.*position in 0\.\."),
        ({"key": 3, "query": 2}, r"key=3 after query=2"),
        ({"key": 2, "ids": torch.tensor([1, 5, 6])}, r"input_ids i64\[3\].*\[1, pos\]"),
    ],
)
def test_bad_input(kwargs, match):
    model, ids, q, key = setup("llama")
    ids = kwargs.pop("ids", ids)
    with pytest.raises(hk.HeadkitError, match=match):
        triad(model, ids, **kwargs)
    with pytest.raises(hk.HeadkitError, match=r"metric 'x'"):
        triad(model, setup("llama")[1], key=key).top("x")


def test_every_adapter_gives_the_same_triad(runner):
    """Through each adapter (TransformerLens bridges and HookedTransformer, nnsight, transformers with either
    attention) the triad equals the plain eager model's, which the tests above check by hand."""
    ids, q, key = induction_sequence(7, range(4, 100), seed=0, bos=1)
    if runner.adapter == "nnsight-remote":
        with pytest.raises(hk.HeadkitError, match="remote nnsight backend.*local copy"):
            triad(runner.backend, ids, key=key)
        return
    if runner.adapter == "nnsight-sdpa":
        with pytest.raises(hk.HeadkitError, match="eager"):  # nnsight reads patterns from eager attention only
            triad(runner.backend, ids, key=key)
        return
    plain, _ = hk.models.tiny(runner.arch, attn_implementation="eager")
    want = triad(plain, ids, key=key).table
    got = triad(runner.backend, ids, key=key, rows_per_pass=7).table
    assert (got - want).abs().max().max() <= 1e-5, (got - want).abs().max()
