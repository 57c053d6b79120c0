"""The specification: every intervention, through every adapter, on every architecture, equals an
independent computation (weight edits, hand-written attention, separate runs, finite differences)."""

from __future__ import annotations

import copy

import pytest
import torch

import headkit as hk
from tests import reference as ref
from tests.conftest import ADAPTERS, ARCHS, Runner, max_diff, shared_runner, token_ids

TOL = 1e-5


def plain_logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


CAPTURING = [adapter for adapter in ADAPTERS if adapter != "nnsight-sdpa"]
"""The adapters that capture attention patterns: nnsight sees attention weights only under eager attention,
so its sdpa runner refuses captures (test_captures_under_nnsight_sdpa_are_refused_with_the_fix) and the
capture tests are not generated for it."""


def generate(runner, ids, interventions, max_new_tokens):
    """Greedy generation with interventions at every step, through the runner's framework."""
    if runner.adapter.startswith("nnsight"):
        from headkit.adapters import nnsight as hk_nn

        model, remote = runner.model, runner.backend.remote  # the block references only what a server needs
        where = {"backend": remote} if remote else {}
        with model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, **where) as tracer:
            for _ in tracer.iter[:max_new_tokens]:  # one forward pass per new token (code after an open loop never runs)
                hk_nn.apply(model, *interventions)
            tokens = tracer.result.save()
        return tokens
    if runner.adapter.startswith("tl"):  # headkit's path: the bridge's own cached generate is broken upstream
        return runner.backend.generate(ids, *interventions, max_new_tokens=max_new_tokens)  # on transformers >= 5.24
    with runner.applied(*interventions):
        return runner.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)


def same_path_logits(runner, model, ids, **kwargs):
    """A reference model's logits through the runner's own framework path (bridge or plain)."""
    with torch.no_grad():
        return runner.same_path(model)(ids, **kwargs)


# ------------------------------------------------------------------------------------------------- z site
def test_no_intervention_equals_plain_model(runner):
    ids = token_ids()
    assert max_diff(runner.logits(ids), plain_logits(runner.plain, ids)) <= TOL


def test_zero_ablate_equals_zeroed_wo_slice(runner):
    ids = token_ids()
    heads = hk.Heads.parse("L0H1 L1H2 L1H3")
    want = same_path_logits(runner, ref.scale_heads(runner.plain, {h: 0.0 for h in heads}), ids)
    got = runner.logits(ids, hk.zero_ablate(heads))
    assert max_diff(got, want) <= TOL
    assert max_diff(got, plain_logits(runner.plain, ids)) > 1e-3  # the ablation did something


def test_gate_one_is_identity_zero_is_ablation_half_is_halved(runner):
    ids = token_ids()
    n_layers, n_heads = runner.shape.n_layers, runner.shape.n_heads
    ones = torch.ones(n_layers, n_heads)
    assert max_diff(runner.logits(ids, hk.gate(ones)), runner.logits(ids)) <= TOL

    zero = ones.clone()
    zero[1, 2] = 0.0
    want = same_path_logits(runner, ref.scale_heads(runner.plain, {(1, 2): 0.0}), ids)
    assert max_diff(runner.logits(ids, hk.gate(zero)), want) <= TOL
    assert max_diff(runner.logits(ids, hk.gate(zero)), runner.logits(ids, hk.zero_ablate("L1H2"))) <= TOL

    half = ones.clone()
    half[0, 1] = 0.5
    want = same_path_logits(runner, ref.scale_heads(runner.plain, {(0, 1): 0.5}), ids)
    assert max_diff(runner.logits(ids, hk.gate(half)), want) <= TOL


def test_gate_with_arbitrary_values_equals_scaled_wo(adapter, arch):
    # z * g and W_O * g round differently in float32, so this one runs in float64
    runner = shared_runner(adapter, arch, torch.float64)
    ids = token_ids()
    values = torch.rand(runner.shape.n_layers, runner.shape.n_heads, generator=torch.Generator().manual_seed(1)) * 2
    scales = {(l, h): values[l, h].item() for l in range(values.shape[0]) for h in range(values.shape[1])}
    want = same_path_logits(runner, ref.scale_heads(runner.plain, scales), ids)
    assert max_diff(runner.logits(ids, hk.gate(values)), want) <= 1e-10


def test_compute_means_equals_independent_means(runner):
    ids = token_ids(batch=5, seed=3)
    want = ref.reference_means(runner.plain, ids)
    got = hk.compute_means(runner.model, ids, rows_per_pass=2)
    assert got.shape == (runner.shape.n_layers, runner.shape.n_heads, runner.shape.d_head)
    for layer, mean in want.items():
        assert max_diff(got[layer], mean) <= TOL


def test_mean_ablate_equals_substituting_the_mean(runner):
    reference_ids, ids = token_ids(batch=5, seed=3), token_ids(seed=4)
    means = ref.reference_means(runner.plain, reference_ids)
    heads = hk.Heads.parse("L0H0 L1H3")
    want = same_path_logits(runner, ref.substitute_means(runner.plain, heads, means), ids)
    stacked = torch.stack([means[layer] for layer in range(runner.shape.n_layers)])
    got = runner.logits(ids, hk.mean_ablate(heads, stacked))
    assert max_diff(got, want) <= TOL
    assert max_diff(got, runner.logits(ids, hk.zero_ablate(heads))) > 1e-4  # not the same as zeroing


def test_per_position_means(runner):
    reference_ids, ids = token_ids(batch=4, seed=5), token_ids(seed=6)
    means = hk.compute_means(runner.model, reference_ids, per_position=True)
    # independent: mean over rows of z read with a plain torch hook, substituted with a plain torch hook
    d, n_heads = runner.shape.d_head, runner.shape.n_heads
    zs = {}
    hooks = [
        ref.out_proj(runner.plain, l).register_forward_pre_hook(
            lambda m, a, l=l: zs.__setitem__(l, a[0].detach().unflatten(-1, (n_heads, d)))
        )
        for l in range(runner.shape.n_layers)
    ]
    plain_logits(runner.plain, reference_ids)
    for h in hooks:
        h.remove()
    for layer in range(runner.shape.n_layers):
        assert max_diff(means[layer], zs[layer].mean(0)) <= TOL

    def substitute(module, args):
        z = args[0].unflatten(-1, (n_heads, d)).clone()
        z[:, :, 2] = means[1, :, 2]
        return (z.flatten(-2),)

    handle = ref.out_proj(runner.plain, 1).register_forward_pre_hook(substitute)
    want = plain_logits(runner.plain, ids)
    handle.remove()
    assert max_diff(runner.logits(ids, hk.mean_ablate("L1H2", means)), want) <= TOL


def test_per_row_gate_equals_separate_runs(runner):
    ids = token_ids(batch=3, seed=7)
    values = torch.rand(3, runner.shape.n_layers, runner.shape.n_heads, generator=torch.Generator().manual_seed(2))
    fused = runner.logits(ids, hk.gate(values))
    for row in range(3):
        single = runner.logits(ids[row : row + 1], hk.gate(values[row]))
        assert max_diff(fused[row : row + 1], single) <= TOL


def test_logits_at_positions_equal_full_logits_indexed(runner):
    ids = token_ids(batch=3, seed=5)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding in one row
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, [2, 8]] = positions[1, 5] = positions[2, [0, 3, 4]] = True
    values = torch.rand(3, runner.shape.n_layers, runner.shape.n_heads, generator=torch.Generator().manual_seed(1))
    full = runner.logits(ids, hk.gate(values), attention_mask=mask)
    picked = runner.logits(ids, hk.gate(values), attention_mask=mask, positions=positions)
    assert picked.shape == (6, full.shape[-1])
    assert max_diff(picked, full[positions]) <= TOL


# ------------------------------------------------------------------------------------------------- scores
# The hand-written attention sums in another order than the model, and fp32 rounding differences grow
# where a mask leaves a head one key; these comparisons therefore run in float64, where any real
# deviation stands far above rounding.
@pytest.fixture
def runner64(adapter, arch):
    return shared_runner(adapter, arch, torch.float64)


@pytest.fixture
def reference_attention_model(runner64):
    model = ref.use_reference_attention(copy.deepcopy(runner64.plain))
    yield model
    ref.BLOCKED.clear()


def test_reference_attention_reproduces_the_model(runner64, reference_attention_model):
    ids = token_ids()
    assert max_diff(plain_logits(reference_attention_model, ids), plain_logits(runner64.plain, ids)) <= TOL


@pytest.mark.parametrize(
    "keys, queries",
    [
        ([(2, 5)], None),  # a span in the middle
        ([(0, 1), (6, 8)], None),  # BOS and a later span
        ([(3, 7)], None),  # fills a 4-token sliding window for query 6: a dead row only on Gemma 3's layers 0-2
        ([(0, 4)], None),  # every key of queries 0-3: dead rows everywhere
        ([(1, 4)], [(5, 9)]),  # only some queries
    ],
)
def test_mask_attention_equals_hand_written_attention(runner64, reference_attention_model, keys, queries):
    runner = runner64
    ids = token_ids()
    mask = hk.mask_attention("L0H1 L1H2 L1H0", keys=keys, queries=queries)
    key_set = {k for s, e in keys for k in range(s, e)}
    query_set = None if queries is None else {q for s, e in queries for q in range(s, e)}
    ref.BLOCKED.update({0: ref.Block([1], key_set, query_set), 1: ref.Block([2, 0], key_set, query_set)})
    want = plain_logits(reference_attention_model, ids)
    got = runner.logits(ids, mask)
    assert torch.isfinite(got).all()
    assert max_diff(got, want) <= TOL
    assert max_diff(got, plain_logits(runner.plain, ids)) > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("adapter", CAPTURING)  # (ids adapter-arch, as with the runner fixture)
def test_mask_zeroes_blocked_keys_and_leaves_other_heads_untouched(runner):
    ids = token_ids()
    n_heads = runner.shape.n_heads
    everything = hk.capture_attention(hk.Heads.all(runner.shape.n_layers, n_heads))
    plain = runner.backend.run(ids, everything).captures[everything].patterns.clone()
    masked = hk.capture_attention(hk.Heads.all(runner.shape.n_layers, n_heads))
    after = runner.backend.run(ids, hk.mask_attention("L1H2", keys=[(0, 4)]), masked).captures[masked].patterns
    for i, (layer, head) in enumerate(masked.heads):
        if (layer, head) == (1, 2):
            assert (after[:, i, :, 0:4] == 0).all()
            assert (after[:, i, :4] == 0).all()  # queries 0-3 had only blocked keys: the whole row is zero
            assert torch.allclose(after[:, i, 4:].sum(-1), torch.ones(1), atol=1e-5)
        elif layer == 0:
            assert max_diff(after[:, i], plain[:, i]) <= TOL  # before the masked layer: unchanged
    same_layer = [i for i, (l, h) in enumerate(masked.heads) if l == 1 and h != 2]
    assert max_diff(after[:, same_layer], plain[:, same_layer]) <= TOL
    assert torch.triu(after, diagonal=1).abs().max() == 0  # never attention to the future


def test_per_row_key_mask_equals_separate_runs(runner):
    ids = token_ids(batch=3, seed=8)
    keys = torch.zeros(3, ids.shape[1], dtype=torch.bool)
    keys[0, 1:3] = True
    keys[1, 4:8] = True  # row 2 masks nothing
    fused = runner.logits(ids, hk.mask_attention("L0H0 L1H1", keys=keys))
    for row in range(3):
        single = runner.logits(ids[row : row + 1], hk.mask_attention("L0H0 L1H1", keys=keys[row]))
        assert max_diff(fused[row : row + 1], single) <= TOL


def test_two_masks_on_one_head_compose(runner64, reference_attention_model):
    runner = runner64
    ids = token_ids()
    ref.BLOCKED[1] = ref.Block([1], {0, 1, 2, 3, 5})
    want = plain_logits(reference_attention_model, ids)
    got = runner.logits(ids, hk.mask_attention("L1H1", keys=[(0, 2)]), hk.mask_attention("L1H1", keys=[(2, 4), (5, 6)]))
    assert max_diff(got, want) <= TOL


def test_mask_with_left_padding(runner):
    # float32: transformers' own eager attention turns left-padded rows into NaN in float64
    ids = token_ids(batch=2, pos=9, seed=9)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # row 1 is left-padded by three tokens
    ids[1, :3] = 0
    mask = hk.mask_attention("L0H2", keys=[(3, 6)])  # in row 1, queries 3 and 4 see only masked keys
    got = runner.logits(ids, mask, attention_mask=attention_mask)
    real = attention_mask.bool()
    if runner.adapter.startswith("tl"):
        # TransformerLens places padded rows differently from transformers (GPT-2 differs without any
        # intervention), so the reference stays in TransformerLens: compatibility mode, where a hand-written
        # -inf edit of hook_attn_scores also zeroes rows with no key left, as headkit's rule asks.
        compat = shared_runner("tl-compat", runner.arch)

        def hand_written(scores, hook):
            scores[:, 2, :, 3:6] = float("-inf")
            return scores

        with torch.no_grad():
            want = compat.model.run_with_hooks(
                ids, attention_mask=attention_mask, fwd_hooks=[("blocks.0.attn.hook_attn_scores", hand_written)]
            )
    else:
        reference = ref.use_reference_attention(copy.deepcopy(runner.plain))
        ref.BLOCKED[0] = ref.Block([2], {3, 4, 5})
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0, as in generate()
        try:
            want = plain_logits(reference, ids, attention_mask=attention_mask, position_ids=positions)
        finally:
            ref.BLOCKED.clear()
    assert torch.isfinite(got).all()
    # in float32 the hand-written attention already differs from tiny Gemma 3 by up to 5e-6 with no mask
    # at all (another summation order); the masked comparison gets the same margin on top of TOL
    assert max_diff(got[real], want[real]) <= TOL + 1e-5


def test_left_padded_rows_equal_their_unpadded_runs(runner):
    ids = token_ids(batch=2, pos=9, seed=14)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0
    padded = ids.clone()
    padded[1, :3] = 0
    keys = torch.zeros(2, 9, dtype=torch.bool)
    keys[0, 4:6] = keys[1, 5:7] = True  # row 1's keys 5, 6 are tokens 2, 3 of the unpadded row
    interventions = [hk.zero_ablate("L0H3"), hk.gate(torch.full((runner.shape.n_layers, 4), 0.5))]
    fused = runner.logits(padded, *interventions, hk.mask_attention("L1H1", keys=keys), attention_mask=attention_mask)
    alone = runner.logits(ids[1:, 3:], *interventions, hk.mask_attention("L1H1", keys=[(2, 4)]))
    assert max_diff(fused[1, 3:], alone[0]) <= TOL


# ------------------------------------------------------------------------------------------------- pattern
if "nnsight-sdpa" in ADAPTERS:  # (HEADKIT_TEST_ADAPTERS may leave it out)

    @pytest.mark.parametrize(
        "captures",
        [
            lambda shape: [hk.capture_attention("L0H0 L0H3 L1H2")],
            lambda shape: [hk.capture_attention("L1H1 L0H2", pool=[(0, 3), (3, 4), (4, 8), (8, 9)])],
            lambda shape: [hk.mask_attention("L1H2", keys=[(0, 4)]),
                           hk.capture_attention(hk.Heads.all(shape.n_layers, 4))],
        ],
        ids=["heads", "pooled", "with-a-mask"],
    )
    def test_captures_under_nnsight_sdpa_are_refused_with_the_fix(arch, captures):
        """nnsight sees attention weights only under eager attention: the capture tests' cases, refused with the fix."""
        runner = shared_runner("nnsight-sdpa", arch)
        with pytest.raises(hk.HeadkitError, match=r"eager attention.*attn_implementation=\"eager\""):
            runner.logits(token_ids(), *captures(runner.shape))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("adapter", CAPTURING)  # (ids adapter-arch, as with the runner fixture)
def test_capture_equals_eager_output_attentions(runner):
    ids = token_ids()
    heads = hk.Heads.parse("L0H0 L0H3 L1H2")
    cap = hk.capture_attention(heads)
    got = runner.backend.run(ids, cap).captures[cap]
    eager = copy.deepcopy(runner.plain)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(ids, output_attentions=True).attentions
    for layer, head in heads:
        assert max_diff(got.pattern(layer, head), attentions[layer][:, head]) <= TOL
    assert got.patterns.shape == (2, 3, 9, 9)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("adapter", CAPTURING)  # (ids adapter-arch, as with the runner fixture)
def test_pooled_capture_equals_pooling_the_full_pattern(runner):
    ids = token_ids(pos=10)
    spans = [(0, 3), (3, 4), (4, 8), (8, 10)]
    full = hk.capture_attention("L1H1 L0H2")
    pooled = hk.capture_attention("L1H1 L0H2", pool=spans)
    got = runner.backend.run(ids, full, pooled).captures
    for layer, head in pooled.heads:
        p = got[full].pattern(layer, head)
        want = torch.zeros(p.shape[0], len(spans), len(spans))
        for i, (a, b) in enumerate(spans):
            for j, (c, d) in enumerate(spans):
                want[:, i, j] = p[:, a:b, c:d].mean((-1, -2))
        assert max_diff(got[pooled].pattern(layer, head), want) <= 1e-6


@pytest.mark.parametrize("adapter", ["hf-eager", "hf-sdpa", "tl", "tl-hooked", "nnsight-eager", "nnsight-remote"])
def test_a_forward_pass_changes_no_capture_or_reader(adapter):
    """State out of the spec: what captures read is the run's result; the capture objects stay as built."""
    from headkit.core.interventions import SumZ

    runner = Runner(adapter, "llama")
    ids = token_ids()
    readers = [hk.capture_attention("L0H1 L1H2"), hk.capture_attention("L1H0", pool=[(0, 4), (4, 9)]),
               SumZ(torch.ones(ids.shape, dtype=torch.float64), per_position=False)]
    before = [(dict(vars(r)), repr(r), hash(r)) for r in readers]
    got = runner.backend.run(ids, hk.zero_ablate("L0H0"), *readers).captures
    assert [(dict(vars(r)), repr(r), hash(r)) for r in readers] == before
    assert set(got) == set(readers) and got[readers[0]].patterns.shape == (2, 2, 9, 9)
    again = runner.backend.run(ids, hk.zero_ablate("L0H0"), *readers).captures
    assert again is not got and torch.equal(again[readers[1]].patterns, got[readers[1]].patterns)
    if not adapter.startswith("nnsight"):
        with runner.applied(hk.zero_ablate("L0H0"), *readers) as block:
            assert len(block) == 0  # nothing recorded before a forward pass runs in the block
            runner.backend.logits(ids)
        assert set(block) == set(readers) and torch.equal(block[readers[0]].patterns, got[readers[0]].patterns)
        assert [(dict(vars(r)), repr(r), hash(r)) for r in readers] == before


# ------------------------------------------------------------------------------------------------- across adapters
@pytest.mark.parametrize("arch", ARCHS)
def test_transformer_lens_and_transformers_adapters_agree(arch):
    hf, tl = shared_runner("hf-sdpa", arch), shared_runner("tl", arch)
    ids = token_ids(batch=3, seed=10)
    n_layers, n_heads = hf.shape.n_layers, hf.shape.n_heads
    means = hk.compute_means(hf.model, token_ids(batch=4, seed=11))
    gate = torch.rand(3, n_layers, n_heads, generator=torch.Generator().manual_seed(3))
    cases = [
        [hk.zero_ablate("L0H1 L1H3")],
        [hk.mean_ablate("L1H0", means)],
        [hk.gate(gate)],
        [hk.mask_attention("L0H2 L1H1", keys=[(0, 3)], queries=[(2, 9)])],
        [hk.gate(gate[0]), hk.mask_attention("L1H0", keys=[(4, 6)]), hk.zero_ablate("L0H3")],
    ]
    for interventions in cases:
        assert max_diff(hf.logits(ids, *interventions), tl.logits(ids, *interventions)) <= TOL, interventions
    cap = hk.capture_attention("L0H1 L1H2")
    got = [r.backend.run(ids, hk.mask_attention("L1H2", keys=[(1, 3)]), cap).captures[cap] for r in (hf, tl)]
    assert max_diff(got[0].patterns, got[1].patterns) <= TOL


# ------------------------------------------------------------------------------------------------- gradients
# Llama's and Gemma's RMSNorm compute in float32 even in a float64 model, so their finite differences
# need a wider step and tolerance; GPT-2 and GPT-NeoX stay in float64 throughout.
FD_STEP = {"gpt2": (1e-6, 1e-6), "neox": (1e-6, 1e-6), "llama": (1e-3, 2e-3), "gemma3": (1e-3, 2e-3)}


@pytest.mark.parametrize("arch", list(FD_STEP))
@pytest.mark.parametrize("adapter", ["hf-sdpa", "tl", "nnsight-sdpa"])
def test_gate_gradients_match_finite_differences(adapter, arch):
    runner = Runner(adapter, arch, dtype=torch.float64)  # its own: the weights are frozen below
    for p in runner.model.parameters():
        p.requires_grad_(False)
    ids = token_ids()
    values = (0.3 + 0.7 * torch.rand(runner.shape.n_layers, runner.shape.n_heads, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(4))).requires_grad_(True)

    def loss(v):
        logits = runner.logits(ids, hk.gate(v))
        return torch.log_softmax(logits[:, -1], -1)[:, 7].sum()

    loss(values).backward()
    eps, tol = FD_STEP[arch]
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        bump = torch.zeros_like(values)
        bump[layer, head] = eps
        with torch.no_grad():
            numeric = (loss(values + bump) - loss(values - bump)) / (2 * eps)
        assert abs(values.grad[layer, head].item() - numeric.item()) <= tol * max(1.0, abs(numeric.item()))
    assert values.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- generation
def test_generate_keeps_interventions_at_every_step(runner):
    ids = token_ids(batch=1, pos=5, seed=12)
    ablate = hk.zero_ablate("L0H0 L1H1 L1H2")
    reference = ref.scale_heads(runner.plain, {h: 0.0 for h in ablate.heads})
    want = reference.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(runner, ids, [ablate], 6), want)


@pytest.mark.parametrize("adapter", ["hf-eager", "hf-sdpa", "tl", "nnsight-sdpa", "nnsight-remote"])
def test_mask_during_cached_generation(adapter, arch):
    runner = shared_runner(adapter, arch)
    ids = token_ids(batch=1, pos=6, seed=13)
    reference = ref.use_reference_attention(copy.deepcopy(runner.plain))
    ref.BLOCKED[1] = ref.Block([0, 3], {1, 2, 3})
    try:
        want = reference.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    finally:
        ref.BLOCKED.clear()
    assert torch.equal(generate(runner, ids, [hk.mask_attention("L1H0 L1H3", keys=[(1, 4)])], 5), want)


def test_backend_generate_equals_recomputing_every_step_without_cache(runner):
    """Backend.generate (KV cache) with heads ablated and a key mask = a loop of full forward passes, no cache.

    The loop feeds the whole sequence each step through the same backend and takes the argmax of the last
    position; the cached generation must produce the same tokens (up to an end-of-sequence stop).
    """
    ids = token_ids(batch=1, pos=5, seed=21)
    interventions = [hk.zero_ablate("L0H1 L1H2"), hk.mask_attention("L1H0", keys=[(1, 3)])]
    got = runner.backend.generate(ids, *interventions, max_new_tokens=7)
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(7):
            nxt = runner.backend.logits(seq, *interventions)[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1).to(seq.device)], dim=1)
    got = got.cpu()
    assert got.shape[1] > ids.shape[1]
    assert torch.equal(got, seq[:, : got.shape[1]])
    if got.shape[1] < seq.shape[1]:  # stopped early: only at the end-of-sequence token
        assert int(got[0, -1]) == 2
    with torch.no_grad():  # the interventions act on this sequence (the tokens may still coincide)
        assert max_diff(runner.backend.logits(seq, *interventions), runner.backend.logits(seq)) > 1e-3
