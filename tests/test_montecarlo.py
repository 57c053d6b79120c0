"""The fused Monte Carlo engine against one forward pass per mask (zero_ablate, each prompt run on its own)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import headkit as hk
from headkit import montecarlo
from headkit.analyses import mask_statistics
from headkit.sweep import RowSizer
from tests.conftest import shared_runner

PROMPTS = ["Tom eats apples . Tom eats", "the cat saw a dog . the cat saw a", "Sarah wears hats . Sarah"]
TARGETS = [" apples", " dog", " wears"]


def padded(tok):
    encoded = [tok(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, encoded))
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def loop_reference(model, tok, masks):
    """Seed-003 style: one forward of the left-padded prompt batch per mask, ablated heads through zero_ablate.

    Returns the last-token logits [n_masks, n_prompts, vocab].
    """
    backend = hk.get_backend(model, tok)
    ids, attn = padded(tok)
    out = []
    with torch.no_grad():
        for mask in masks:
            off = ~mask.bool()
            ivs = [hk.zero_ablate(hk.Heads(off))] if off.any() else []
            out.append(backend.logits(ids, *ivs, attention_mask=attn)[:, -1])
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_fused_equals_one_forward_per_mask_on_1000_masks(arch):
    model, tok = hk.models.tiny(arch)
    masks = montecarlo.bernoulli(1000, 0.5, *hk.get_backend(model).shape._fields()[:2], seed=1)
    masks[0] = True  # the unablated model
    logits = loop_reference(model, tok, masks)
    targets = logits[0].argmax(-1)  # the full model's own predictions: random weights never say " apples"
    want_top1 = (logits.argmax(-1) == targets).float()
    want_logp = torch.log_softmax(logits, -1)[:, torch.arange(3), targets]
    got_top1 = montecarlo.evaluate(model, PROMPTS, targets, masks, tokenizer=tok, progress=False)
    got_logp = montecarlo.evaluate(model, PROMPTS, targets, masks, metric="logprob", tokenizer=tok, progress=False)
    assert torch.equal(got_top1, want_top1)
    assert (got_logp - want_logp).abs().max() <= 1e-5
    assert 0 < want_top1.mean() < 1  # masks change decisions, so the comparison has teeth


def test_logit_diff_fixed_chunks_and_out_of_memory_halving(monkeypatch):
    model, tok = hk.models.tiny("llama")
    masks = montecarlo.k_subsets(2, 2, 4)  # all 28 two-head ablations
    wrong = [" cat", " apples", " Tom"]
    ref = montecarlo.evaluate(model, PROMPTS, TARGETS, masks, metric="logit_diff", distractors=wrong, tokenizer=tok,
                              rows_per_pass=1 * len(PROMPTS), progress=False)
    logits = loop_reference(model, tok, masks)
    t = torch.tensor([tok(x, add_special_tokens=False)["input_ids"][0] for x in TARGETS])
    o = torch.tensor([tok(x, add_special_tokens=False)["input_ids"][0] for x in wrong])
    idx = torch.arange(3)
    assert (ref - (logits[:, idx, t] - logits[:, idx, o])).abs().max() <= 1e-5

    backend = hk.get_backend(model, tok)
    real = backend.logits
    sizes = []

    def small_memory(ids, *ivs, **kw):
        sizes.append(ids.shape[0])
        if ids.shape[0] > 4 * len(PROMPTS):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(ids, *ivs, **kw)

    monkeypatch.setattr(backend, "logits", small_memory)
    got = montecarlo.evaluate(backend, PROMPTS, TARGETS, masks, metric="logit_diff", distractors=wrong,
                              rows_per_pass=16 * len(PROMPTS), progress=False)
    assert sizes[:3] == [48, 24, 12] and max(sizes[3:]) <= 12  # halved twice, then kept
    assert (got - ref).abs().max() <= 1e-5


def cuda_oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("failure", [
    cuda_oom,                                                                      # CUDA, by type
    lambda: torch.cuda.OutOfMemoryError("Tried to allocate 20.00 MiB"),            # by type, odd text
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"),  # CPU
    lambda: MemoryError(),                                                         # Python allocations
    lambda: RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),   # Apple MPS
    lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
], ids=["cuda-type", "cuda-type-only", "cpu-allocator", "memoryerror", "mps", "cublas"])
def test_every_kind_of_allocation_failure_halves_the_pass(monkeypatch, failure):
    model, tok = hk.models.tiny("llama")
    masks = montecarlo.bernoulli(12, 0.5, 2, 4, seed=2)
    want = montecarlo.evaluate(model, PROMPTS, TARGETS, masks, metric="margin", tokenizer=tok, rows_per_pass=1 * len(PROMPTS),
                               progress=False)
    backend = hk.get_backend(model, tok)
    real, sizes = backend.logits, []

    def small_memory(ids, *ivs, **kw):
        sizes.append(ids.shape[0] // len(PROMPTS))
        if ids.shape[0] > 2 * len(PROMPTS):
            raise failure()
        return real(ids, *ivs, **kw)

    monkeypatch.setattr(backend, "logits", small_memory)
    got = montecarlo.evaluate(backend, PROMPTS, TARGETS, masks, metric="margin", rows_per_pass=8 * len(PROMPTS), progress=False)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2 and (got - want).abs().max() <= 1e-5
    monkeypatch.setattr(backend, "logits", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a shape bug")))
    with pytest.raises(RuntimeError, match="a shape bug"):  # anything else is not swallowed
        montecarlo.evaluate(backend, PROMPTS, TARGETS, masks, rows_per_pass=8 * len(PROMPTS), progress=False)


def test_tuner_doubles_while_throughput_improves():
    tuner = RowSizer(None, 1000)
    rates = {1: 10.0, 2: 19.0, 4: 30.0, 8: 29.0}
    while not tuner.settled:
        size = tuner.size
        tuner.record(int(rates[size] * 10), 10.0)
    assert tuner.size == 4  # 8 did not pay, back to 4


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_padding_does_not_change_results(dtype, tol):
    """Prompts of different lengths, left-padded together = each prompt evaluated alone, unpadded.

    Exact in float64; in float32 the padded and unpadded passes round differently (different attention
    kernels and shapes), up to ~3e-5 in log-prob on these tiny models.
    """
    model, tok = hk.models.tiny("gemma3", dtype=dtype)
    masks = montecarlo.bernoulli(50, 0.6, 4, 4, seed=3)
    together = montecarlo.evaluate(model, PROMPTS, TARGETS, masks, metric="logprob", tokenizer=tok, progress=False)
    for i in range(3):
        alone = montecarlo.evaluate(model, PROMPTS[i : i + 1], TARGETS[i : i + 1], masks, metric="logprob",
                                    tokenizer=tok, progress=False)
        assert (together[:, i] - alone[:, 0]).abs().max() <= tol


@pytest.mark.parametrize("adapter", ["tl", "nnsight-sdpa", "nnsight-remote"])
def test_every_adapter_agrees(adapter):
    runner = shared_runner(adapter, "llama")
    masks = montecarlo.bernoulli(20, 0.5, 2, 4, seed=5)
    plain, _ = hk.models.tiny("llama")
    want = montecarlo.evaluate(plain, PROMPTS, TARGETS, masks, metric="logprob", tokenizer=runner.tokenizer,
                               progress=False)
    got = montecarlo.evaluate(runner.backend, PROMPTS, TARGETS, masks, metric="logprob", tokenizer=runner.tokenizer,
                              rows_per_pass=4 * len(PROMPTS), progress=False)
    assert (got - want).abs().max() <= 1e-5


def test_samplers():
    a, b = montecarlo.bernoulli(100, 0.3, 3, 4, seed=7), montecarlo.bernoulli(100, 0.3, 3, 4, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, montecarlo.bernoulli(100, 0.3, 3, 4, seed=8))
    single = montecarlo.single_heads(3, 4)
    assert single.shape == (12, 3, 4) and ((~single).sum((1, 2)) == 1).all()
    assert (~single[7])[1, 3]
    every = montecarlo.k_subsets(3, 2, 4)
    assert len(every) == math.comb(8, 3) and len({tuple(m.flatten().tolist()) for m in every}) == len(every)
    assert ((~every).sum((1, 2)) == 3).all()
    some = montecarlo.k_subsets(2, 3, 4, n=50, seed=1)
    assert some.shape == (50, 3, 4) and ((~some).sum((1, 2)) == 2).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"masks": torch.ones(5, 3, 4)}, r"masks f32\[5, 3, 4\].*\[n_masks, 2, 4\]"),
        ({"masks": torch.ones(0, 2, 4)}, r"0 masks"),
        ({"targets": [" apples", " dog", " big house"]}, r"target ' big house' for prompt 2 \('Sarah wears.*2 tokens"),
        ({"targets": [" apples"]}, r"1 targets for 3 prompts"),
        ({"prompts": []}, r"non-empty list"),
        ({"metric": "accuracy"}, r"metric 'accuracy'.*'top1'"),
        ({"metric": "logit_diff"}, r"without distractors"),
        ({"rows_per_pass": 0}, r"rows_per_pass=0"),
    ],
)
def test_bad_input(kwargs, match):
    model, tok = hk.models.tiny("llama")
    args = {"prompts": PROMPTS, "targets": TARGETS, "masks": torch.ones(3, 2, 4)} | kwargs
    with pytest.raises(hk.HeadkitError, match=match):
        montecarlo.evaluate(model, args.pop("prompts"), args.pop("targets"), args.pop("masks"), tokenizer=tok,
                            progress=False, **args)


# ------------------------------------------------------------------ statistics


def records(masks, outcomes):
    """Seed 003's record list: one (mask, success) per (mask, prompt)."""
    return [(masks[k].flatten().tolist(), float(outcomes[k, p])) for k in range(len(masks)) for p in range(outcomes.shape[1])]


def test_counts_stream_equals_python_loops_over_records():
    masks = montecarlo.bernoulli(60, 0.4, 2, 3, seed=2)
    outcomes = (torch.rand(60, 5, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    counts = mask_statistics.Counts(2, 3)
    for start in range(0, 60, 7):  # streamed in uneven chunks
        counts.update(masks[start : start + 7], outcomes[start : start + 7])
    recs = records(masks, outcomes)
    h = 6
    kept = [sum(m[i] for m, _ in recs) for i in range(h)]
    kept_s = [sum(m[i] * s for m, s in recs) for i in range(h)]
    pair = [[sum(m[i] * m[j] for m, _ in recs) for j in range(h)] for i in range(h)]
    pair_s = [[sum(m[i] * m[j] * s for m, s in recs) for j in range(h)] for i in range(h)]
    assert counts.records == len(recs) and counts.successes == sum(s for _, s in recs)
    assert counts.kept.flatten().tolist() == kept and counts.kept_success.flatten().tolist() == kept_s
    assert counts.pair_kept.tolist() == pair and counts.pair_kept_success.tolist() == pair_s
    # the seed's scores, from the record list by hand
    imp = [k / sum(kept_s) for k in kept_s]
    fail_abl = [sum((1 - m[i]) * (1 - s) for m, s in recs) for i in range(h)]
    exc = [f / sum(fail_abl) for f in fail_abl]
    assert counts.importance().flatten().tolist() == pytest.approx(imp, abs=1e-12)
    assert counts.exclusion().flatten().tolist() == pytest.approx(exc, abs=1e-12)
    p_kept = [kept_s[i] / kept[i] for i in range(h)]
    p_abl = [sum((1 - m[i]) * s for m, s in recs) / sum(1 - m[i] for m, _ in recs) for i in range(h)]
    assert counts.delta().flatten().tolist() == pytest.approx([a - b for a, b in zip(p_kept, p_abl)], abs=1e-12)


def test_regression_equals_least_squares_and_covers_planted_effects():
    import numpy as np

    masks = montecarlo.bernoulli(3000, 0.5, 2, 3, seed=4)
    g = torch.Generator().manual_seed(1)
    rate = 0.35 + 0.5 * masks[:, 0, 1].double() - 0.3 * masks[:, 1, 2].double()  # two planted heads, in [0.05, 0.85]
    outcomes = (torch.rand(3000, 8, generator=g, dtype=torch.float64) < rate[:, None]).double()
    table = mask_statistics.regression(masks, outcomes, n_boot=100)
    x = np.concatenate([np.ones((3000, 1)), masks.reshape(3000, -1).numpy().astype(float)], 1)
    want = np.linalg.lstsq(x, outcomes.mean(1).numpy(), rcond=None)[0][1:]
    np.testing.assert_allclose(table["effect"].to_numpy(), want, atol=1e-10)
    truth = {(0, 1): 0.5, (1, 2): -0.3}
    for (layer, head), row in table.iterrows():
        true = truth.get((layer, head), 0.0)
        assert row["low"] <= row["effect"] <= row["high"]
        assert row["low"] - 0.01 <= true <= row["high"] + 0.01  # the 95% interval (nearly) covers the truth
        assert row["high"] - row["low"] < 0.05
    with pytest.raises(hk.HeadkitError, match=r"3 masks for 6 heads"):
        mask_statistics.regression(masks[:3], outcomes[:3])


def test_counts_bad_input():
    with pytest.raises(hk.HeadkitError, match=r"masks f32\[4, 2, 2\].*\[n, 2, 3\]"):
        mask_statistics.Counts(2, 3).update(torch.ones(4, 2, 2), torch.ones(4, 3))


def test_synergy_equals_the_four_cells_counted_by_hand():
    masks = montecarlo.bernoulli(80, 0.5, 2, 2, seed=5)
    g = torch.Generator().manual_seed(3)
    outcomes = (torch.rand(80, 3, generator=g) < 0.2 + 0.6 * (masks[:, 0, 0] & masks[:, 1, 1]).float()[:, None]).float()
    counts = mask_statistics.Counts(2, 2)
    counts.update(masks[:50], outcomes[:50])
    counts.update(masks[50:], outcomes[50:])
    recs = records(masks, outcomes)

    def rate(i, a, j, b):
        cell = [s for m, s in recs if m[i] == a and m[j] == b]
        return sum(cell) / len(cell)

    got = counts.synergy()
    for i in range(4):
        assert math.isnan(got[i, i])
        for j in range(4):
            if i != j:
                want = rate(i, 1, j, 1) - rate(i, 1, j, 0) - rate(i, 0, j, 1) + rate(i, 0, j, 0)
                assert got[i, j].item() == pytest.approx(want, abs=1e-12)
    assert got[0, 3] > 0.3  # success planted on "L0H0 and L1H1 both kept": strong synergy


def test_margin_metric_and_chunks():
    model, tok = hk.models.tiny("llama")
    masks = montecarlo.bernoulli(10, 0.5, 2, 4, seed=7)
    logits = loop_reference(model, tok, masks)
    targets = logits[0].argmax(-1)
    target_logit = logits[:, torch.arange(3), targets]
    others = logits.clone()
    others[:, torch.arange(3), targets] = -math.inf
    want = target_logit - others.max(-1).values
    got = montecarlo.evaluate(model, PROMPTS, targets, masks, metric="margin", tokenizer=tok, progress=False)
    assert (got - want).abs().max() <= 1e-5
    assert torch.equal(got > 0, montecarlo.evaluate(model, PROMPTS, targets, masks, tokenizer=tok, progress=False).bool())
    chunks = list(montecarlo.evaluate_chunks(model, PROMPTS, targets, masks, metric="margin", tokenizer=tok,
                                             rows_per_pass=4 * len(PROMPTS), progress=False))
    assert [c.shape[0] for c in chunks] == [4, 4, 2]
    assert (torch.cat(chunks) - want).abs().max() <= 1e-5
    assert torch.is_grad_enabled()  # the engine's no_grad does not leak out of the generator
    with pytest.raises(hk.HeadkitError, match="metric 'nope'"):
        montecarlo.evaluate_chunks(model, PROMPTS, targets, masks, metric="nope", tokenizer=tok)  # at the call


def test_calibrate_inverts_a_maximum_likelihood_logistic_fit():
    from scipy.optimize import minimize

    model, tok = hk.models.tiny("gemma3")
    shape = hk.get_backend(model).shape
    n_layers, n_heads = shape.n_layers, shape.n_heads
    logits = loop_reference(model, tok, torch.ones(1, n_layers, n_heads))
    targets = logits[0].argmax(-1)
    low, high = montecarlo.calibrate(model, PROMPTS, targets, success=(0.3, 0.7), n_masks=40, seed=3, tokenizer=tok,
                                     progress=False)
    # the same masks, one forward pass each (naive), and a logistic fit by scipy on the binomial likelihood
    p = (torch.arange(40, dtype=torch.float64) + 0.5) / 40
    u = torch.rand(40, n_layers, n_heads, generator=torch.Generator().manual_seed(3))
    decisions = (loop_reference(model, tok, u < p[:, None, None].float()).argmax(-1) == targets).double()
    k, n, x = decisions.sum(1).numpy(), 3.0, p.numpy()

    def nll(theta):
        z = theta[0] + theta[1] * x
        return -(k * z - n * np.logaddexp(0, z)).sum() + 1e-3 * (theta ** 2).sum() / 2

    a, b = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    assert 0 < decisions.mean() < 1 and b > 0
    assert low == pytest.approx((math.log(0.3 / 0.7) - a) / b, abs=1e-4)
    assert high == pytest.approx(min(1.0, (math.log(0.7 / 0.3) - a) / b), abs=1e-4)  # clipped to 1 here
    assert montecarlo.calibrate(model, PROMPTS, targets, success=0.3, n_masks=40, seed=3, tokenizer=tok,
                                progress=False) == low
    with pytest.raises(hk.HeadkitError, match="success=1.5"):
        montecarlo.calibrate(model, PROMPTS, targets, success=1.5, tokenizer=tok)
    with pytest.raises(hk.HeadkitError, match=r"n_masks=4.*n_masks >= 8"):
        montecarlo.calibrate(model, PROMPTS, targets, n_masks=4, tokenizer=tok)
    with pytest.raises(hk.HeadkitError, match="does not rise with p_keep"):  # targets no mask ever predicts
        montecarlo.calibrate(model, PROMPTS, torch.tensor([5, 6, 7]), n_masks=8, tokenizer=tok, progress=False)
