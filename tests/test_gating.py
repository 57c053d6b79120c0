"""Causal head gating: the objective against hand-written references, seed independence, planted truth."""

from __future__ import annotations

import warnings

import pytest
import torch

import headkit as hk
from headkit import gating
from headkit.prompts import Prompts, tokenize
from tests import reference as ref
from tests.conftest import max_diff, require, shared_runner

ZEROED, PLANTED = (0, 1), (1, 2)  # a head with W_O = 0 (no effect) and a head made essential


def own_continuations(model, n=32, new=2, seed=0):
    """Random prompts whose targets are the model's own greedy continuations (so the full model fits them)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [
        [1] + torch.randint(4, 100, (int(torch.randint(5, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]
    targets = []
    with torch.no_grad():
        for p in prompts:
            ids = list(p)
            for _ in range(new):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            targets.append(ids[len(p) :])
    return Prompts.from_tokens(prompts, targets)


def hand_logprob(model, ex):
    """Each example run alone, unpadded: mean log p of its target tokens, read off the full logits."""
    out = []
    for row in range(len(ex)):
        n = int(ex.right.attention_mask[row].sum())
        ids = ex.right.input_ids[row, :n]
        logp = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
        where = ex.right.target_mask[row, :n].nonzero()[:, 0]
        out.append(torch.stack([logp[t - 1, ids[t]] for t in where.tolist()]).mean())
    return torch.stack(out)


@pytest.fixture(scope="module")
def planted():
    model, tok = hk.models.tiny("llama")
    model = ref.scale_heads(model, {ZEROED: 0.0, PLANTED: 6.0})
    return model, tok, own_continuations(model)


# ------------------------------------------------------------------------------------------------- data
def test_examples_mark_target_tokens_and_pad_on_the_right():
    tok = hk.models.tiny_tokenizer()
    ex = tokenize(tok, [("Tom eats", " apples"), ("He bought milk", " Tom eats")])
    assert ex.right.input_ids.tolist()[0][:4] == tok("Tom eats apples")["input_ids"]
    assert ex.right.attention_mask.sum(-1).tolist() == [4, 6] and ex.right.input_ids.shape == (2, 6)
    assert ex.right.target_mask.int().tolist()[0][:4] == [0, 0, 0, 1]
    positions, labels = ex.right.scored()
    assert positions.sum().item() == 3 and labels.tolist()[0] == tok(" apples", add_special_tokens=False)["input_ids"][0]


def test_examples_from_records_columns_and_a_dataset_object():
    tok = hk.models.tiny_tokenizer()
    pairs = [("Tom eats", " apples"), ("He bought", " milk")]

    class Dataset:  # what datasets.Dataset offers: column names, columns by name, rows as dicts
        column_names = ["question", "answer"]

        def __getitem__(self, name):
            return [p if name == "question" else t for p, t in pairs]

    want = tokenize(tok, pairs).right.input_ids
    assert torch.equal(tokenize(tok, [{"prompt": p, "target": t} for p, t in pairs]).right.input_ids, want)
    assert torch.equal(tokenize(tok, {"prompt": [p for p, _ in pairs], "target": [t for _, t in pairs]}).right.input_ids, want)
    assert torch.equal(tokenize(tok, Dataset(), prompt="question", target="answer").right.input_ids, want)


def test_padding_never_enters_the_score():
    model, tok = hk.models.tiny("gpt2", dtype=torch.float64)
    ex = tokenize(tok, [("Tom eats apples . Tom", " eats apples"), ("He", " bought"), ("Alice saw a movie .", " Alice")])
    got = gating.sequence_logprob(model, ex)
    with torch.no_grad():
        assert max_diff(got, hand_logprob(model, ex)) <= 1e-10


@pytest.mark.parametrize("adapter", ["tl", "nnsight-sdpa", "nnsight-remote"])
def test_sequence_logprob_under_gates_is_the_same_through_every_adapter(adapter):
    other, hf = shared_runner(adapter, "gemma3"), shared_runner("hf-sdpa", "gemma3")
    ex = tokenize(hf.tokenizer, [("Tom eats apples . Tom", " eats apples"), ("He", " bought")])
    gates = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    want = gating.sequence_logprob(hf.backend, ex, gates)
    assert max_diff(gating.sequence_logprob(other.backend, ex, gates), want) <= 1e-5


def test_many_masks_equal_weight_scaled_models():
    model, tok = hk.models.tiny("neox", dtype=torch.float64)
    ex = tokenize(tok, [("Tom eats apples . Tom", " eats"), ("He bought milk", " .")])
    gates = torch.rand(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = gating.sequence_logprob(model, ex, gates, rows_per_pass=4)  # 6 rows in two passes
    for m in range(3):
        scaled = ref.scale_heads(model, {(l, h): gates[m, l, h].item() for l in range(2) for h in range(4)})
        with torch.no_grad():
            assert max_diff(got[m], hand_logprob(scaled, ex)) <= 1e-10


# ------------------------------------------------------------------------------------------------- objective
def test_gradient_of_the_objective_matches_finite_differences():
    model, tok = hk.models.tiny("gpt2", dtype=torch.float64)
    for p in model.parameters():
        p.requires_grad_(False)
    ex = tokenize(tok, [("Tom eats apples . Tom", " eats apples"), ("He bought", " milk")])
    theta = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)

    def loss(t):
        return -gating.sequence_logprob(model, ex, torch.sigmoid(t)).mean() - 0.1 * t.clamp(-4, 4).mean()

    loss(theta).backward()
    for layer, head in [(0, 0), (0, 3), (1, 1), (1, 2)]:
        bump = torch.zeros_like(theta)
        bump[layer, head] = 1e-6
        with torch.no_grad():
            numeric = (loss(theta + bump) - loss(theta - bump)) / 2e-6
        assert abs(theta.grad[layer, head].item() - numeric.item()) <= 1e-6


def test_first_adam_step_follows_the_hand_computed_gradient(planted):
    """Adam's first step moves each logit by -lr * sign(gradient): compare with finite differences of the
    paper's loss on weight-scaled copies of the model (no headkit code in the reference)."""
    model, tok, ex = planted
    start = gating.fit(model, ex, seeds=[7], steps=0, reg_steps=0, batch_size=len(ex), progress=False).G[0]
    after = gating.fit(model, ex, seeds=[7], steps=1, reg_steps=0, batch_size=len(ex), lr=(0.05, 0.05),
                       progress=False).G[0]
    theta = torch.logit(start.double())
    moved = torch.logit(after.double()) - theta

    def nll(t):
        scaled = ref.scale_heads(model, {(l, h): torch.sigmoid(t[l, h]).item() for l in range(2) for h in range(4)})
        with torch.no_grad():
            return -hand_logprob(scaled, ex).mean().item()

    checked = 0
    for layer in range(2):
        for head in range(4):
            bump = torch.zeros_like(theta)
            bump[layer, head] = 1e-4
            numeric = (nll(theta + bump) - nll(theta - bump)) / 2e-4
            if (layer, head) == ZEROED:
                assert abs(numeric) < 1e-9 and abs(moved[layer, head]) < 1e-6  # no gradient, no move
                continue
            if abs(numeric) > 1e-3:
                assert moved[layer, head].item() == pytest.approx(-0.05 * (1 if numeric > 0 else -1), rel=1e-3)
                checked += 1
    assert checked >= 4


def test_a_seed_fitted_among_others_equals_the_seed_fitted_alone():
    model, tok = hk.models.tiny("llama", dtype=torch.float64)
    ex = own_continuations(model, n=12)
    # a small grad_norm makes clipping active at every step, so a joint clip would couple the seeds
    kw = dict(steps=6, reg_steps=6, batch_size=5, grad_norm=0.01, progress=False)
    many = gating.fit(model, ex, seeds=[3, 4, 5], **kw)
    alone = gating.fit(model, ex, seeds=[4], **kw)
    for name in ("G", "G_plus", "G_minus"):
        assert max_diff(getattr(many, name)[1], getattr(alone, name)[0]) <= 1e-9
    assert max_diff(many.G[0], many.G[2]) > 1e-3  # the seeds really differ
    assert many.seeds == (3, 4, 5)


def test_pieces_of_a_batch_give_the_same_fit():
    model, tok = hk.models.tiny("gpt2", dtype=torch.float64)
    ex = own_continuations(model, n=10)
    kw = dict(seeds=2, steps=4, reg_steps=4, batch_size=6, progress=False)
    whole, pieces = gating.fit(model, ex, **kw), gating.fit(model, ex, rows_per_pass=5, **kw)
    assert max_diff(whole.G_minus, pieces.G_minus) <= 1e-9


# ------------------------------------------------------------------------------------------------- planted truth
@pytest.fixture(scope="module")
def planted_fit(planted):
    model, tok, ex = planted
    return gating.fit(model, ex, seeds=3, steps=100, reg_steps=100, batch_size=16, progress=False)


def test_a_head_with_no_effect_comes_out_irrelevant(planted_fit):
    layer, head = ZEROED
    assert (planted_fit.G_plus[:, layer, head] > 0.95).all()
    assert (planted_fit.G_minus[:, layer, head] < 0.05).all()
    row = planted_fit.taxonomy().loc[ZEROED]
    assert row["role"] == "irrelevant" and row["irrelevance_always"]


def test_a_head_the_task_needs_comes_out_facilitating(planted, planted_fit):
    model, tok, ex = planted
    ablated = torch.ones(2, 4)
    ablated[PLANTED] = 0
    assert (gating.sequence_logprob(model, ex) - gating.sequence_logprob(model, ex, ablated)).mean() > 1.0
    assert (planted_fit.G_minus[:, PLANTED[0], PLANTED[1]] > 0.8).all()
    row = planted_fit.taxonomy().loc[PLANTED]
    assert row["role"] == "facilitating" and row["facilitation_always"]


def test_ablation_curves_have_the_predicted_signs(planted, planted_fit):
    model, tok, ex = planted
    curves = gating.ablation_curves(model, ex, planted_fit, ks=[1, 2], progress=False)
    mean = curves.groupby(["score", "k"])["delta"].mean()
    assert mean["facilitation", 1] < -0.5 and mean["facilitation", 2] < mean["facilitation", 1]
    assert abs(mean["irrelevance", 1]) < 0.05
    # the same numbers by hand: G+ of seed 0 with its most facilitating head set to 0 and to 1
    plus = planted_fit.G_plus[0].clone()
    top = planted_fit.facilitation[0].flatten().argmax()
    zero, one = plus.flatten().clone(), plus.flatten().clone()
    zero[top], one[top] = 0.0, 1.0
    by_hand = [
        hand_logprob(ref.scale_heads(model, {(l, h): g.reshape(2, 4)[l, h].item() for l in range(2) for h in range(4)}), ex)
        for g in (zero, one)
    ]
    row = curves[(curves.seed == 0) & (curves.score == "facilitation") & (curves.k == 1)].iloc[0]
    with torch.no_grad():
        assert row["delta"] == pytest.approx((by_hand[0] - by_hand[1]).mean().item(), abs=1e-5)


# ------------------------------------------------------------------------------------------------- outputs
def test_taxonomy_scores_and_aggregation_by_hand():
    plus = torch.tensor([[[1.0, 0.2, 0.9]], [[1.0, 0.6, 0.95]]])
    minus = torch.tensor([[[0.9, 0.0, 0.1]], [[0.7, 0.1, 0.05]]])
    f = gating.GateFit(G=torch.zeros_like(plus), G_plus=plus, G_minus=minus)
    table = f.taxonomy()
    assert table["facilitation"].tolist() == pytest.approx([0.8, 0.05, 0.075])
    assert table["interference"].tolist() == pytest.approx([0.0, 0.6, 0.075])
    assert table["irrelevance"].tolist() == pytest.approx([0.2, (0.2 * 1.0 + 0.6 * 0.9) / 2, (0.9 * 0.9 + 0.95 * 0.95) / 2])
    assert table["role"].tolist() == ["facilitating", "interfering", "irrelevant"]
    assert table["facilitation_always"].tolist() == [True, False, False]
    assert table["interference_always"].tolist() == [False, False, False]
    assert table["interference_any"].tolist() == [False, True, False]
    assert table["irrelevance_always"].tolist() == [False, False, True]
    assert f.prevalence().loc["interference"].tolist() == pytest.approx([0.0, 100 / 3])
    assert f.rgb("always")[0, 1].tolist() == pytest.approx([0.4, 0.0, 0.0])
    assert f.rgb("any")[0, 2].tolist() == pytest.approx([0.1, 0.1, 0.0])


def test_plots_write_png_files(planted, planted_fit, tmp_path):
    require("matplotlib")  # in the full install; a partial one (CI's legacy virtualenvs) may skip
    model, tok, ex = planted
    planted_fit.plot(str(tmp_path / "roles.png"))
    curves = gating.ablation_curves(model, ex, planted_fit, ks=[1, 2], progress=False)
    hk.plots.ablation_curves(curves, path=str(tmp_path / "curves.png"))
    for name in ("roles.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_records_every_step_of_every_fit(planted_fit):
    h = planted_fit.history
    assert len(h) == 100 * 3 + 100 * 6
    assert set(h["fit"]) == {"G", "G+", "G-"}
    first, last = h[h.stage == "G"].groupby("step")["nll"].mean().iloc[[0, -1]]
    assert last < first


# ------------------------------------------------------------------------------------------------- contrastive
def test_contrastive_step_follows_the_hand_written_loss():
    model, tok = hk.models.tiny("gpt2", dtype=torch.float64)
    keep = own_continuations(model, n=4, seed=1)
    lose = own_continuations(model, n=4, seed=2)
    start = gating.fit_contrastive(model, keep, lose, seeds=[0], steps=0, batch_size=4, progress=False)
    assert start.G.shape == (1, 2, 4)
    init = torch.logit(gating.fit(model, keep, seeds=[0], steps=0, reg_steps=0, batch_size=4, progress=False).G[0].double())
    after = gating.fit_contrastive(model, keep, lose, seeds=[0], steps=1, batch_size=4, lr=(0.05, 0.05),
                                   lam=0.0, progress=False).G[0]
    moved = torch.logit(after.double()) - init

    # the gradient of -r + clamp(f - stopgrad(r), min=-5) is -dr + df wherever the clamp is inactive
    def grad(t, layer, head):
        bump = torch.zeros_like(t)
        bump[layer, head] = 1e-5
        scaled = [ref.scale_heads(model, {(l, h): torch.sigmoid(u[l, h]).item() for l in range(2) for h in range(4)})
                  for u in (t + bump, t - bump)]
        with torch.no_grad():
            r = [hand_logprob(m, keep) for m in scaled]
            f = [hand_logprob(m, lose) for m in scaled]
        return ((-(r[0] - r[1]) + (f[0] - f[1])) / 2e-5).mean().item()

    at_init = ref.scale_heads(model, {(l, h): torch.sigmoid(init[l, h]).item() for l in range(2) for h in range(4)})
    with torch.no_grad():
        assert ((hand_logprob(at_init, lose) - hand_logprob(at_init, keep)) > -5).all()  # the clamp is inactive
    checked = 0
    for layer in range(2):
        for head in range(4):
            g = grad(init, layer, head)
            if abs(g) > 1e-3:
                assert moved[layer, head].item() == pytest.approx(-0.05 * (1 if g > 0 else -1), rel=1e-3)
                checked += 1
    assert checked >= 4


def test_contrastive_fit_turns_off_the_head_only_the_forget_variant_needs(planted):
    """Planted: the forget targets are the model's own continuations, the retain targets those of the
    model without the planted head, on the same prompts. Turning that head off is what the loss rewards."""
    model, tok, lose = planted
    without = ref.scale_heads(model, {PLANTED: 0.0})
    keep = own_continuations(without)
    res = gating.fit_contrastive(model, keep, lose, seeds=2, steps=150, batch_size=16, progress=False)
    full_r, full_f = gating.sequence_logprob(model, keep).mean(), gating.sequence_logprob(model, lose).mean()
    assert (res.G[:, PLANTED[0], PLANTED[1]] < 0.1).all()
    assert res.table().index[0] == PLANTED
    for s in range(2):
        r, f = gating.sequence_logprob(model, keep, res.G[s]).mean(), gating.sequence_logprob(model, lose, res.G[s]).mean()
        assert f - full_f < -1.0  # the forget variant got much worse
        assert r - full_r > 0.0  # the retained one did not
    assert list(res.table().columns) == ["gate", "min", "max"]


def test_antonym_variants_are_matched_pairs():
    icl, instr = hk.data.antonym_pairs("icl", n=8), hk.data.antonym_pairs("instruction", n=8)
    assert [t for _, t in icl] == [t for _, t in instr]
    assert all(p.split("\n")[-1] == q.split("\n")[-1] for (p, _), (q, _) in zip(icl, instr))
    assert icl[0][0].count("\n") == 5 and instr[0][0].startswith("Give the opposite")


# ------------------------------------------------------------------------------------------------- precision and state
def test_bf16_weights_with_fp32_gate_logits():
    model, tok = hk.models.tiny("gemma3", dtype=torch.bfloat16)
    ex = own_continuations(model, n=8)
    with pytest.warns(UserWarning, match="RMS-normalises"):  # tiny Gemma 3: expected, tested below
        res = gating.fit(model, ex, seeds=2, steps=3, reg_steps=3, batch_size=4, progress=False)
    assert res.G.dtype == torch.float32 and torch.isfinite(res.G_minus).all()
    assert (res.G != torch.sigmoid(torch.logit(res.G)).bfloat16().float()).any()  # not rounded to bf16


def test_weights_are_frozen_during_the_fit_and_restored_after_also_on_error():
    model, tok = hk.models.tiny("llama")
    ex = own_continuations(model, n=4)
    gating.fit(model, ex, steps=1, reg_steps=1, batch_size=2, progress=False)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    bad = Prompts.from_tokens([[t + 1000 for t in p] for p in ex.prompt_ids], ex.target_ids)  # out of vocabulary
    with pytest.raises(hk.HeadkitError, match=r"token id \d+ in input_ids.*vocabulary"):
        gating.fit(model, bad, steps=1, reg_steps=1, batch_size=2, progress=False)
    assert all(p.requires_grad for p in model.parameters())


def test_fit_through_nnsight_equals_fit_through_transformers():
    nn_runner, hf = shared_runner("nnsight-sdpa", "llama"), shared_runner("hf-sdpa", "llama")
    ex = own_continuations(hf.plain, n=6)
    kw = dict(seeds=2, steps=3, reg_steps=3, batch_size=3, progress=False)
    assert max_diff(gating.fit(nn_runner.backend, ex, **kw).G_minus, gating.fit(hf.backend, ex, **kw).G_minus) <= 1e-5


def test_post_attention_norm_undoes_uniform_gates_and_fit_warns_about_it():
    model, tok = hk.models.tiny("gemma3", dtype=torch.float64)
    ex = own_continuations(model, n=6)
    full = gating.sequence_logprob(model, ex)
    uniform = torch.ones(4, 4, dtype=torch.float64)
    uniform[2] = 0.02  # every head of layer 2 scaled alike
    zeroed = torch.ones(4, 4, dtype=torch.float64)
    zeroed[2] = 0.0
    drift = (gating.sequence_logprob(model, ex, uniform) - full).abs().max()
    ablated = (gating.sequence_logprob(model, ex, zeroed) - full).abs().max()
    assert drift < 0.05 * ablated, (drift, ablated)  # scaled by 0.02, yet almost as if untouched
    with pytest.warns(UserWarning, match="RMS-normalises each layer's attention output"):
        gating.fit(model, ex, steps=1, reg_steps=1, batch_size=2, progress=False)
    llama, _ = hk.models.tiny("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gating.fit(llama, own_continuations(llama, n=4), steps=1, reg_steps=1, batch_size=2, progress=False)


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, t, d: gating.fit(m, d, lam=-0.1, tokenizer=t), r"lam=-0\.1.*positive number.*G- with -lam.*lam=0\.1"),
        (lambda m, t, d: gating.fit(m, d, lam=0, tokenizer=t), r"lam=0"),
        (lambda m, t, d: gating.fit_contrastive(m, d, d, lam=-0.1, tokenizer=t), r"lam >= 0.*pass lam=0\.1"),
        (lambda m, t, d: gating.fit_contrastive(m, d, d[:1], tokenizer=t), r"2 retain examples and 1 forget.*matched"),
        (lambda m, t, d: gating.fit(m, [("Tom eats", "")], tokenizer=t), r"example 0 has an empty target.*\(''\)"),
        (lambda m, t, d: gating.fit(m, [], tokenizer=t), r"no examples"),
        (lambda m, t, d: gating.fit(m, d, seeds=0, tokenizer=t), r"seeds=0"),
        (lambda m, t, d: gating.fit(m, d, seeds=[1, 1], tokenizer=t), r"distinct"),
        (lambda m, t, d: gating.fit(m, d, steps=-1, tokenizer=t), r"steps=-1"),
        (lambda m, t, d: gating.fit(m, d, lr=(0.1,), tokenizer=t), r"\(start, end\)"),
        (lambda m, t, d: gating.fit(m, d), r"no tokenizer.*tokenizer=\.\.\."),
        (lambda m, t, d: gating.fit(m, [{"q": "a"}], tokenizer=t), r"record 0 has keys \['q'\].*'prompt' and 'target'"),
        (lambda m, t, d: gating.sequence_logprob(m, d, torch.ones(4), tokenizer=t), r"gates f32\[4\]"),
        (lambda m, t, d: gating.sequence_logprob(m, d, [[1.0] * 4] * 2, tokenizer=t), r"got gates .*float tensor"),
    ],
)
def test_bad_input_is_named_with_a_fix(call, match):
    model, tok = hk.models.tiny("llama")
    data = [("Tom eats", " apples"), ("He bought", " milk")]
    with pytest.raises(hk.HeadkitError, match=match) as err:
        call(model, tok, data)
    assert "Fix:" in str(err.value)
    assert all(p.requires_grad for p in model.parameters())


def test_remote_backends_are_refused_for_fitting():
    runner = shared_runner("nnsight-remote", "llama")
    with pytest.raises(hk.HeadkitError, match="remote.*local copy"):
        gating.fit(runner.backend, [("Tom eats", " apples")], steps=1, reg_steps=1, batch_size=1)


@pytest.mark.parametrize("task", ["ioi", "antonym"])
def test_cli_chg_prints_roles_and_writes_figures(task, tmp_path):
    require("matplotlib")  # in the full install; a partial one (CI's legacy virtualenvs) may skip
    from headkit.cli import chg

    model, tok = hk.models.tiny("llama")
    lines = []
    result = chg(task=task, seeds=1, steps=2, reg_steps=2, batch_size=4, ks=[1, 2], out_dir=str(tmp_path),
                 model=model, tokenizer=tok, out=lines.append)
    text = "\n".join(lines)
    if task == "antonym":
        assert "in-context (forget)" in text and (tmp_path / "contrastive.png").exists()
        assert result["fit"].G.shape == (1, 2, 4)
    else:
        assert "Figure 2 check" in text and "top facilitation" in text
        for name in ("roles.png", "ablation_curves.png", "taxonomy.csv", "scores.csv", "ablation_curves.csv"):
            assert (tmp_path / name).exists(), name
