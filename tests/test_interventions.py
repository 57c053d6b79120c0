"""The intervention objects on their own: hand-computed edits on synthetic activations, reprs, immutability,
and the TransformerLens hook contract (site and layer read from ``hook.name``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import headkit as hk
from headkit.core.interventions import SumZ

NEG = torch.finfo(torch.float32).min


def hook(name):
    return SimpleNamespace(name=name)


def causal_scores(batch=1, heads=2, n=4, seed=0):
    """Scores [batch, heads, n, n] with finfo.min above the diagonal, as TransformerLens hands them over."""
    s = torch.randn(batch, heads, n, n, generator=torch.Generator().manual_seed(seed))
    return s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), NEG)


def test_zero_ablate_zeroes_exactly_the_chosen_heads_and_leaves_the_input_alone():
    z = torch.randn(2, 5, 4, 3)
    before = z.clone()
    out = hk.zero_ablate("L1H0 L1H2 L0H1")(z, hook=hook("blocks.1.attn.hook_z"))
    want = before.clone()
    want[:, :, [0, 2]] = 0
    assert torch.equal(out, want) and torch.equal(z, before)
    # the canonical TransformerBridge name works too; a hook of a layer it does not act on is refused
    only_h0 = before.clone()
    only_h0[:, :, 0] = 0
    assert torch.equal(hk.zero_ablate("L1H0")(z, hook=hook("blocks.1.attn.o.hook_in")), only_h0)
    for name in ("blocks.0.attn.o.hook_in", "blocks.0.attn.hook_z"):
        with pytest.raises(hk.HeadkitError, match=r"in layer 0; expected a hook point in one of its layers \[1\].*blocks\.1\.attn\.hook_z"):
            hk.zero_ablate("L1H0")(z, hook=hook(name))
    for iv in (hk.mask_attention("L1H0", keys=[(0, 1)]), hk.capture_attention("L2H1")):  # attention sites too
        with pytest.raises(hk.HeadkitError, match="in layer 0"):
            iv(torch.zeros(1, 4, 3, 3), hook=hook("blocks.0.attn.hook_pattern"))


def test_inplace_writes_into_the_activation():
    z = torch.randn(2, 5, 4, 3)
    out = hk.zero_ablate("L0H1", inplace=True)(z, hook=hook("blocks.0.attn.hook_z"))
    assert out is z and (z[:, :, 1] == 0).all()
    means = torch.randn(1, 4, 3)
    z = torch.randn(2, 5, 4, 3)
    out = hk.mean_ablate("L0H2", means, inplace=True)(z, hook=hook("blocks.0.attn.hook_z"))
    assert out is z and torch.equal(z[:, :, 2], means[0, 2].expand(2, 5, 3))


def test_mean_ablate_pooled_and_per_position_by_hand():
    z = torch.randn(2, 5, 4, 3)
    pooled = torch.randn(2, 4, 3)
    out = hk.mean_ablate("L1H3", pooled)(z, hook=hook("blocks.1.attn.hook_z"))
    assert torch.equal(out[:, :, 3], pooled[1, 3].expand(2, 5, 3)) and torch.equal(out[:, :, :3], z[:, :, :3])
    per_pos = torch.randn(2, 5, 4, 3)
    out = hk.mean_ablate("L1H0", per_pos)(z, hook=hook("blocks.1.attn.hook_z"))
    assert torch.equal(out[:, :, 0], per_pos[1, :, 0].expand(2, 5, 3)) and torch.equal(out[:, :, 1:], z[:, :, 1:])


def test_gate_scales_by_hand_and_per_row():
    z = torch.randn(3, 5, 4, 2)
    values = torch.rand(2, 4)
    out = hk.gate(values)(z, hook=hook("blocks.1.attn.hook_z"))
    assert torch.allclose(out, z * values[1][None, None, :, None])
    rows = torch.rand(3, 2, 4)
    out = hk.gate(rows)(z, hook=hook("blocks.0.attn.hook_z"))
    assert torch.allclose(out, z * rows[:, 0][:, None, :, None])


def test_gate_keeps_the_values_dtype_out_of_the_model():
    z = torch.randn(1, 2, 4, 3, dtype=torch.bfloat16)
    out = hk.gate(torch.full((1, 4), 0.5, dtype=torch.float64))(z, hook=hook("blocks.0.attn.hook_z"))
    assert out.dtype == torch.bfloat16 and torch.equal(out, z * 0.5)


def test_mask_scores_by_hand():
    scores = causal_scores()
    mask = hk.mask_attention("L0H1", keys=[(1, 3)])
    out = mask(scores, hook=hook("blocks.0.attn.hook_attn_scores"))
    want = scores.clone()
    want[:, 1, 1:, 1:3] = float("-inf")  # rows 1.. have key 1 (and 2) causally allowed
    want[:, 1, 1, 2] = NEG  # key 2 is in the future of query 1: stays the causal finfo.min
    assert torch.equal(out[:, 0], scores[:, 0])
    assert torch.equal(out.isneginf(), want.isneginf())
    assert torch.equal(out[~out.isneginf()], scores[~out.isneginf()])


def test_dead_rows_stay_finite_before_softmax_and_are_zeroed_after():
    scores = causal_scores()
    mask = hk.mask_attention("L0H0", keys=[(0, 2)])  # queries 0 and 1 have no key left in head 0
    out, dead = mask.mask_scores(0, scores, "test")
    assert dead[0, 0].tolist() == [True, True, False, False] and not dead[0, 1].any()
    assert torch.equal(out[0, 0, :2], scores[0, 0, :2])  # dead rows untouched: no NaN, no future attention
    assert out[0, 0, 2:, :2].isneginf().all()
    pattern = torch.softmax(out, -1)
    after = mask(pattern, hook=hook("blocks.0.attn.hook_pattern"))
    assert (after[0, 0, :2] == 0).all() and torch.equal(after[0, 0, 2:], pattern[0, 0, 2:])
    assert torch.equal(after[0, 1], pattern[0, 1])


def test_query_ranges_and_per_row_keys():
    scores = causal_scores(batch=2, heads=1, n=5)
    keys = torch.tensor([[True, False, False, False, False], [False, False, True, True, False]])
    out = hk.mask_attention("L0H0", keys=keys, queries=[(3, 5)])(scores, hook=hook("blocks.0.attn.hook_attn_scores"))
    blocked = out.isneginf()
    assert blocked[0, 0].nonzero().tolist() == [[3, 0], [4, 0]]
    assert blocked[1, 0].nonzero().tolist() == [[3, 2], [3, 3], [4, 2], [4, 3]]


def test_cached_decoding_uses_absolute_positions():
    # one query (the 6th token) against 6 keys: query ranges count absolute positions
    scores = torch.randn(1, 1, 1, 6)
    out = hk.mask_attention("L0H0", keys=[(2, 4)], queries=[(5, 6)])(scores, hook=hook("blocks.0.attn.hook_attn_scores"))
    assert out.isneginf()[0, 0, 0].tolist() == [False, False, True, True, False, False]
    out = hk.mask_attention("L0H0", keys=[(2, 4)], queries=[(0, 5)])(scores, hook=hook("blocks.0.attn.hook_attn_scores"))
    assert not out.isneginf().any()
    keys = torch.tensor([True, False, False, False])  # written for the 4-token prompt, padded as tokens arrive
    out = hk.mask_attention("L0H0", keys=keys)(scores, hook=hook("blocks.0.attn.hook_attn_scores"))
    assert out.isneginf()[0, 0, 0].tolist() == [True] + [False] * 5


def test_captures_record_into_the_runs_captures_not_into_the_capture():
    from headkit.core.captures import Captures

    cap = hk.capture_attention("L0H1 L2H0 L2H3")
    pattern = torch.softmax(causal_scores(batch=2, heads=4, n=3), -1)
    got = Captures()
    got.put(cap, 2, cap.read("pattern", 2, pattern, "blocks.2.attn.hook_pattern"))
    assert vars(cap) == vars(hk.capture_attention("L0H1 L2H0 L2H3"))  # the capture itself holds no results
    assert torch.equal(got[cap].pattern(2, 3), pattern[:, 3]) and torch.equal(got[cap].pattern(2, 0), pattern[:, 0])
    with pytest.raises(hk.HeadkitError, match="nothing captured for layer 0"):
        got[cap].patterns
    before = got[cap]
    got.put(cap, 0, cap.read("pattern", 0, pattern, "blocks.0.attn.hook_pattern"))
    assert list(before.layers) == [2]  # what was read out is a snapshot; a later pass adds to the Captures only
    assert torch.equal(got[cap].patterns, pattern[:, [1, 0, 3]])
    assert torch.equal(got.pattern(cap, 0, 1), pattern[:, 1])
    with pytest.raises(hk.HeadkitError, match="got head L1H1.*captured heads 'L0H1 L2H0 L2H3'"):
        got[cap].pattern(1, 1)
    with pytest.raises(hk.HeadkitError, match=r"nothing recorded for CaptureAttention\(heads='L0H0'\).*recorded: Capt"):
        got[hk.capture_attention("L0H0")]
    with pytest.raises(hk.HeadkitError, match="as key.*got\\[cap\\]"):
        got[hk.zero_ablate("L0H0")]
    assert cap in got and hk.capture_attention("L2H3 L0H1 L2H0") in got and len(got) == 1 and list(got) == [cap]
    assert repr(got) == "Captures({CaptureAttention(heads='L0H1 L2H0 L2H3'): {0: f32[2, 1, 3, 3], 2: f32[2, 2, 3, 3]}})"


def test_pooled_chunks_add_up_to_the_whole_pattern():
    from headkit.core.captures import Captures

    cap = hk.capture_attention("L0H0 L0H1", pool=[(0, 2), (2, 5)])
    pattern = torch.softmax(causal_scores(batch=1, heads=2, n=5), -1)
    whole, chunked = Captures(), Captures()
    whole.put(cap, 0, cap.read("pattern", 0, pattern, "test"))
    for start in (0, 2, 4):
        part = cap.pool_rows(0, pattern[:, :, start : start + 2], start, "test")
        (chunked.put if start == 0 else chunked.add)(cap, 0, part)
    assert torch.allclose(chunked[cap].patterns, whole[cap].patterns, atol=1e-7)
    assert whole[cap].pattern(0, 1).shape == (1, 2, 2)


def test_captures_pickle_as_plain_data_and_come_back_equal():
    import pickle
    import pickletools

    from headkit.core.captures import Captures

    cap = hk.capture_attention("L1H0", pool=[(0, 2), (2, 4)])
    got = Captures()
    got.put(cap, 1, torch.rand(2, 1, 2, 2))
    blob = pickle.dumps(got)
    globals_named = {arg for op, arg, _ in pickletools.genops(blob) if op.name in ("GLOBAL", "STACK_GLOBAL")} - {None}
    assert b"headkit" not in blob.split(b"headkit.core.captures:Captures.from_plain")[0]  # only the rebuild's name
    assert not any("headkit" in str(name) for name in globals_named)
    back = pickle.loads(blob)
    assert type(back) is Captures and list(back) == [cap] and torch.equal(back[cap].patterns, got[cap].patterns)
    plain = got.plain()
    assert plain[0][:2] == ("CaptureAttention", (((1, 0),), ((0, 2), (2, 4))))
    assert list(Captures.from_plain(plain)) == [cap]


def test_a_bare_capture_as_a_hook_names_the_fix():
    pattern = torch.softmax(causal_scores(batch=1, heads=2, n=3), -1)
    with pytest.raises(hk.HeadkitError, match=r"plain TransformerLens hook.*keeps nothing.*fwd_hooks\(model, cap\).*hooks\.captures\[cap\]"):
        hk.capture_attention("L0H1")(pattern, hook=hook("blocks.0.attn.hook_pattern"))


def test_reprs_read_like_the_call_and_never_print_tensors():
    big = torch.randn(32, 40, 128)
    cases = {
        hk.zero_ablate("L5H1 L9H9"): "ZeroAblate(heads='L5H1 L9H9')",
        hk.mean_ablate("L5H1", big): "MeanAblate(heads='L5H1', means=f32[32, 40, 128])",
        hk.gate(torch.ones(8, 32, 40)): "Gate(values=f32[8, 32, 40])",
        hk.mask_attention("L2H1", keys=[(4, 9)], queries=[(9, 12)]): "MaskAttention(heads='L2H1', keys=[(4, 9)], queries=[(9, 12)])",
        hk.mask_attention("L2H1", keys=torch.zeros(4, 7, dtype=torch.bool)): "MaskAttention(heads='L2H1', keys=bool[4, 7])",
        hk.capture_attention("L0H0", pool=[(0, 3), (3, 5)]): "CaptureAttention(heads='L0H0', pool=2 spans)",
    }
    for obj, text in cases.items():
        assert repr(obj) == text
    assert len(repr(hk.zero_ablate(hk.Heads.all(32, 40)))) < 200


def every_kind(tensor=None):
    """One of each intervention, built fresh (tensor fields from ``tensor`` if given, else new ones)."""
    means = torch.zeros(2, 4, 3) if tensor is None else tensor
    return [
        hk.zero_ablate("L1H0 L0H2"),
        hk.zero_ablate("L1H0 L0H2", inplace=True),
        hk.mean_ablate("L1H0", means),
        hk.mean_ablate("L1H0", means, inplace=True),
        hk.gate(torch.ones(2, 4) if tensor is None else tensor[:, :, 0]),
        hk.mask_attention("L1H0", keys=[(0, 2)]),
        hk.mask_attention("L1H0", keys=[(0, 2)], queries=[(2, 5)]),
        hk.mask_attention("L1H0", keys=torch.tensor([True, False, True])),
        hk.capture_attention("L1H0"),
        hk.capture_attention("L1H0", pool=[(0, 2), (2, 4)]),
        SumZ(torch.ones(2, 5), per_position=False),
    ]


def test_equal_fields_give_equal_values_with_equal_hashes():
    for a, b in zip(every_kind(), every_kind()):
        assert a is not b and a == b and hash(a) == hash(b) and not (a != b), a
    # the same set of heads written another way, and a tensor equal by value but not the same object
    assert hk.zero_ablate("L0H2 L1H0") == hk.zero_ablate([(1, 0), (0, 2)]) == hk.zero_ablate({0: [2], 1: [0]})
    means = torch.randn(2, 4, 3)
    assert hk.mean_ablate("L1H0", means) == hk.mean_ablate("L1H0", means.clone())
    assert hash(hk.mean_ablate("L1H0", means)) == hash(hk.mean_ablate("L1H0", means.clone()))
    assert hk.mask_attention("L0H0", keys=[(1, 3)]) == hk.mask_attention("L0H0", keys=(1, 3))  # one (start, end)


def test_different_fields_give_different_values():
    kinds = every_kind()
    for i, a in enumerate(kinds):
        for j, b in enumerate(kinds):
            assert (a == b) == (i == j), (a, b)
    means = torch.zeros(2, 4, 3)
    different = [
        (hk.zero_ablate("L1H0"), hk.zero_ablate("L1H1")),
        (hk.mean_ablate("L1H0", means), hk.mean_ablate("L1H0", means + 1)),  # values
        (hk.mean_ablate("L1H0", means), hk.mean_ablate("L1H0", means.double())),  # dtype
        (hk.gate(torch.ones(2, 4)), hk.gate(torch.ones(1, 2, 4))),  # shape
        (hk.mask_attention("L0H0", keys=[(1, 3)]), hk.mask_attention("L0H0", keys=torch.tensor([False, True, True]))),
        (hk.capture_attention("L0H0", pool=[(0, 2)]), hk.capture_attention("L0H0", pool=[(0, 3)])),
        (SumZ(torch.ones(2, 5), False), SumZ(torch.ones(2, 5), True)),
    ]
    for a, b in different:
        assert a != b and not (a == b), (a, b)
    assert hk.zero_ablate("L0H0") != "ZeroAblate(heads='L0H0')" and hk.zero_ablate("L0H0") != hk.capture_attention("L0H0")


def test_interventions_are_dict_keys_and_set_members():
    first, second = every_kind(), every_kind()
    table = {iv: i for i, iv in enumerate(first)}
    assert len(table) == len(first) and all(table[iv] == i for i, iv in enumerate(second))
    assert set(first) == set(second) and len(set(first) | set(second)) == len(first)
    assert len({hk.zero_ablate("L0H0"), hk.zero_ablate("L0H0"), hk.zero_ablate("L0H1")}) == 2


def test_a_gate_over_a_parameter_stays_differentiable_and_hashes_stably():
    values = torch.nn.Parameter(torch.full((2, 4), 0.5))
    g = hk.gate(values)
    key = hash(g)
    z = torch.randn(1, 3, 4, 2)
    g(z, hook=hook("blocks.1.attn.hook_z")).sum().backward()
    assert torch.allclose(values.grad[1], z.sum((0, 1, 3))) and not values.grad[0].any()
    with torch.no_grad():
        values.add_(1.0)  # an optimiser step: the hash reads no values, so the gate stays findable
    assert hash(g) == key and g in {g} and g == hk.gate(values)
    assert g == hk.gate(values.detach().clone())  # by value: autograd history is not part of it
    assert g != hk.gate(values.detach() + 1)


def test_interventions_are_frozen():
    ablate = hk.zero_ablate("L0H0")
    with pytest.raises(AttributeError, match="immutable"):
        ablate.heads = hk.Heads("L1H1")  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del ablate.heads


def test_hook_names_that_are_not_the_site_get_a_did_you_mean():
    z = torch.randn(1, 2, 4, 3)
    with pytest.raises(hk.HeadkitError, match=r"'blocks\.3\.attn\.hook_zz'.*did you mean 'blocks\.3\.attn\.hook_z'"):
        hk.zero_ablate("L3H0")(z, hook=hook("blocks.3.attn.hook_zz"))
    with pytest.raises(hk.HeadkitError, match=r"'blocks\.0\.attn\.hook_pattern'.*hook_attn_scores|its sites: z"):
        hk.zero_ablate("L0H0")(z, hook=hook("blocks.0.attn.hook_pattern"))
    with pytest.raises(hk.HeadkitError, match=r"did you mean 'blocks\.1\.attn\.hook_attn_scores'"):
        hk.mask_attention("L1H0", keys=[(0, 1)])(z, hook=hook("blocks.1.attn.hook_attn_score"))
