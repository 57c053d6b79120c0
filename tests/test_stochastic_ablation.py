"""The stochastic-ablation study against seed 003's pipeline written out naively, and its on-disk log."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headkit as hk
from headkit import montecarlo, stochastic_ablation
from headkit.analyses import estimators
from headkit.analyses.outcome_log import OutcomeLog
from tests.conftest import require

PROMPTS = ["Tom eats apples . Tom eats", "the cat saw a dog . the cat saw a", "Sarah wears hats . Sarah",
           "the dog saw a cat . the dog", "Alice reads books . Alice reads"]


@pytest.fixture(scope="module")
def setup():
    model, tok = hk.models.tiny("llama")
    ids = [torch.tensor([tok(p)["input_ids"]]) for p in PROMPTS]
    with torch.no_grad():
        logits = [model(i).logits[0, -1] for i in ids]
    targets = torch.stack([lg.argmax() for lg in logits])
    targets[3] = logits[3].topk(2).indices[1]  # the full model gets this one wrong: the study must drop it
    return model, tok, targets


def seed_pipeline(model, tok, prompts, targets, many, few, percentile=88):
    """Seed 003, cell by cell: one forward per mask and prompt, records, sum-normalised scores, outliers."""
    backend = hk.get_backend(model, tok)
    ids = [torch.tensor([tok(p)["input_ids"]]) for p in prompts]

    def run(mask):
        off = ~mask.bool()
        ivs = [hk.zero_ablate(hk.Heads(off))] if off.any() else []
        with torch.no_grad():
            return [int(backend.logits(i, *ivs)[0, -1].argmax()) == int(t) for i, t in zip(ids, targets)]

    flat = lambda m: m.flatten().numpy().astype(int)  # noqa: E731
    importance = np.zeros(many.shape[1] * many.shape[2])
    for mask in many:
        for success in run(mask):
            if success:
                importance += flat(mask)
    importance /= importance.sum()
    exclusion = np.zeros_like(importance)
    for mask in few:
        for success in run(mask):
            if not success:
                exclusion += 1 - flat(mask)
    exclusion /= exclusion.sum()
    d_imp, d_exc = importance - importance.mean(), exclusion - exclusion.mean()
    outlier_indices = np.where((d_imp > np.percentile(d_imp, percentile)) | (d_exc > np.percentile(d_exc, percentile)))[0]
    retained = torch.tensor(np.isin(np.arange(len(importance)), outlier_indices)).reshape(many.shape[1:])
    validation = [sum(run(retained)), sum(run(~retained)), sum(run(torch.ones_like(retained)))]
    return importance, exclusion, retained, validation, run


def test_study_equals_the_seed_pipeline(setup):
    model, tok, targets = setup
    result = stochastic_ablation.study(model, PROMPTS, targets, tokenizer=tok, n_masks=40, p_keep=(0.5, 0.8),
                                       seed=1, n_boot=20, progress=False)
    assert result.dropped == [PROMPTS[3]] and len(result.prompts) == 4
    kept_targets = targets[[0, 1, 2, 4]]
    many, few = result.phases["many_ablated"].masks, result.phases["few_ablated"].masks
    # the masks are the seeded Bernoulli draws with the given keep probabilities
    assert torch.equal(many, montecarlo.bernoulli(40, 0.5, 2, 4, seed=2))
    assert torch.equal(few, montecarlo.bernoulli(40, 0.8, 2, 4, seed=3))
    importance, exclusion, retained, validation, run = seed_pipeline(model, tok, result.prompts, kept_targets, many, few)
    np.testing.assert_allclose(result.scores["importance"].to_numpy(), importance, atol=1e-12)
    np.testing.assert_allclose(result.scores["exclusion"].to_numpy(), exclusion, atol=1e-12)
    assert torch.equal(result.outliers.mask(2, 4), retained)
    assert result.scores["outlier"].to_numpy().tolist() == retained.flatten().tolist()
    assert result.validation["correct"].tolist() == validation
    assert validation[2] == 4  # the full model is right on every kept prompt
    # outcomes are the per-prompt decisions of the naive loop
    decisions = torch.tensor([run(m) for m in many])
    assert torch.equal(result.phases["many_ablated"].success, decisions)
    assert 0 < decisions.float().mean() < 1
    # effect columns: least squares of each mask's success rate on its bits (numpy)
    x = np.concatenate([np.ones((40, 1)), many.reshape(40, -1).numpy()], 1)
    want = np.linalg.lstsq(x, decisions.double().mean(1).numpy(), rcond=None)[0][1:]
    np.testing.assert_allclose(result.scores["effect_many"].to_numpy(), want, atol=1e-9)
    # delta columns: success rate with the head kept minus with it ablated, over the loop's records
    kept = many.reshape(40, -1).bool()
    rate = decisions.double().mean(1)
    want_delta = [rate[kept[:, h]].mean() - rate[~kept[:, h]].mean() for h in range(8)]
    np.testing.assert_allclose(result.scores["delta_many"].to_numpy(), want_delta, atol=1e-12)
    # the default ranking: ridge on the naive loop's mean margins, penalty by GCV over explicit hat matrices
    backend = hk.get_backend(model, tok)
    ids = [torch.tensor([tok(p)["input_ids"]]) for p in result.prompts]

    def margins(mask):
        ivs = [hk.zero_ablate(hk.Heads(~mask.bool()))] if (~mask).any() else []
        with torch.no_grad():
            rows = [backend.logits(i, *ivs)[0, -1].double() for i in ids]
        return [float(r[t] - torch.cat([r[:t], r[t + 1:]]).max()) for r, t in zip(rows, kept_targets.tolist())]

    y = np.array([np.mean(margins(m)) for m in many])
    d = np.eye(9)
    d[0, 0] = 0
    centred = x[:, 1:] - x[:, 1:].mean(0)
    grid = (centred**2).sum() / 8 * np.logspace(-4, 4, 41)

    def gcv(lam):
        hat = x @ np.linalg.solve(x.T @ x + lam * d, x.T)
        residual = y - hat @ y
        return 40 * residual @ residual / (40 - np.trace(hat)) ** 2

    lam = grid[np.argmin([gcv(v) for v in grid])]
    want_effect = np.linalg.solve(x.T @ x + lam * d, x.T @ y)[1:]
    assert result.scores.attrs["lam"] == pytest.approx(lam, rel=1e-9)
    np.testing.assert_allclose(result.scores["effect"].to_numpy(), want_effect, atol=1e-5)
    assert list(result.scores.columns[:6]) == ["effect", "ols", "se", "low", "high", "in_top5"]
    # intervals: least squares on the same margins, its textbook standard error, Student t with 40 - 9 dof
    ls = np.linalg.solve(x.T @ x, x.T @ y)
    se = np.sqrt(np.diag(np.linalg.inv(x.T @ x)) * ((y - x @ ls) ** 2).sum() / 31)[1:]
    np.testing.assert_allclose(result.scores["ols"].to_numpy(), ls[1:], atol=1e-5)
    np.testing.assert_allclose(result.scores["se"].to_numpy(), se, rtol=1e-5)
    np.testing.assert_allclose(result.scores["low"].to_numpy(), ls[1:] - 2.039513446 * se, atol=1e-5)
    np.testing.assert_allclose(result.scores["high"].to_numpy(), ls[1:] + 2.039513446 * se, atol=1e-5)
    # trust: 20 random splits of the 40 masks into halves
    assert result.trust.n_masks == 40 and len(result.trust.rank_correlation) == 20
    assert result.scores["in_top5"].between(0, 1).all()
    assert result.scores["in_top5"].sum() == pytest.approx(5.0)  # each half-size fit puts 5 heads in its top 5
    assert f"ranking trust: expected rank correlation {result.trust.agreement:.2f}" in result.summary()
    synergy = result.synergy("many_ablated")
    assert synergy.shape == (8, 8) and synergy.index.names == ["layer", "head"]
    assert np.isnan(synergy.loc[(0, 1), (0, 1)])
    assert result.top(3).shape[0] == 3 and result.throughput > 0


def test_resume_after_a_kill_gives_identical_scores(setup, tmp_path, monkeypatch):
    model, tok, targets = setup
    kw = dict(tokenizer=tok, p_keep=(0.4, 0.8), seed=0, n_boot=10, rows_per_pass=4 * len(PROMPTS), progress=False)
    whole = stochastic_ablation.study(model, PROMPTS, targets, n_masks=30, **kw)

    appended = []
    original = OutcomeLog.append

    def killed(self, masks, outcomes):
        if len(appended) == 5:
            raise KeyboardInterrupt  # the run dies between two forward passes of the second phase
        appended.append(masks.shape[0])
        original(self, masks, outcomes)

    monkeypatch.setattr(OutcomeLog, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        stochastic_ablation.study(model, PROMPTS, targets, n_masks=30, path=tmp_path, **kw)
    monkeypatch.setattr(OutcomeLog, "append", original)
    with open(tmp_path / "many_ablated" / "rows.bin", "ab") as f:
        f.write(b"HKB2\x01\x02")  # and left a torn block behind
    resumed = stochastic_ablation.study(model, PROMPTS, targets, n_masks=30, path=tmp_path, **kw)
    assert resumed.evaluations < whole.evaluations  # it did not start over
    for name in ("many_ablated", "few_ablated"):
        assert torch.equal(resumed.phases[name].masks, whole.phases[name].masks)
        assert torch.equal(resumed.phases[name].margins, whole.phases[name].margins)
    assert resumed.scores.equals(whole.scores)
    assert resumed.validation.equals(whole.validation)
    # a larger n_masks extends the log and equals a fresh run of that size
    longer = stochastic_ablation.study(model, PROMPTS, targets, n_masks=36, path=tmp_path, **kw)
    assert longer.evaluations == 2 * 6 * 4
    assert longer.scores.equals(stochastic_ablation.study(model, PROMPTS, targets, n_masks=36, **kw).scores)
    # another run's settings in the same folder: refused, nothing mixed
    with pytest.raises(hk.HeadkitError, match=r"different run \(differs in: p_keep\)"):
        stochastic_ablation.study(model, PROMPTS, targets, n_masks=30, path=tmp_path, **{**kw, "p_keep": (0.3, 0.8)})


def test_auto_p_keep_calibrates_once_and_remembers(setup, tmp_path, monkeypatch):
    model, tok, targets = setup
    calls = []
    real = montecarlo.calibrate

    def counting(*args, **kwargs):
        calls.append(kwargs["success"])
        return real(*args, **kwargs)

    monkeypatch.setattr(stochastic_ablation, "calibrate", counting)
    kw = dict(tokenizer=tok, n_masks=12, p_keep="auto", success=(0.3, 0.7), calibration_masks=24, n_boot=0,
              path=tmp_path, progress=False)
    first = stochastic_ablation.study(model, PROMPTS, targets, **kw)
    assert calls == [(0.3, 0.7)]
    p_many, p_few = first.phases["many_ablated"].p_keep, first.phases["few_ablated"].p_keep
    assert 0 < p_many <= p_few < 1
    again = stochastic_ablation.study(model, PROMPTS, targets, **kw)
    assert calls == [(0.3, 0.7)]  # read back from the folder
    assert again.phases["few_ablated"].p_keep == p_few and again.scores.equals(first.scores)


def test_a_balanced_design_on_request(setup, tmp_path, ridge_fits):
    model, tok, targets = setup
    kw = dict(tokenizer=tok, p_keep=(0.4, 0.85), seed=1, n_boot=0, progress=False)
    result = stochastic_ablation.study(model, PROMPTS, targets, n_masks=20, design="balanced", path=tmp_path / "b", **kw)
    many, few = result.phases["many_ablated"].masks, result.phases["few_ablated"].masks
    assert torch.equal(many, estimators.balanced(20, 0.4, 2, 4, seed=2, block=10))
    assert (many.reshape(2, 10, 8).sum(1) == 4).all()  # each head kept in 4 of every 10 masks
    assert set(few.reshape(2, 10, 8).sum(1).unique().tolist()) <= {8, 9}  # 8.5 of 10: 8 or 9
    assert "20 balanced masks" in result.summary()
    # extended from 20 to 25 masks per phase, the first 20 are the ones on disk (a partial block is a prefix)
    longer = stochastic_ablation.study(model, PROMPTS, targets, n_masks=25, design="balanced", path=tmp_path / "b", **kw)
    assert longer.evaluations == 2 * 5 * 4 and torch.equal(longer.phases["many_ablated"].masks[:20], many)
    # its trust splits whole blocks: 40 balanced masks, halves of two blocks, each head kept 2 x 4 times per half
    ridge_fits.clear()
    blocks = stochastic_ablation.study(model, PROMPTS, targets, n_masks=40, design="balanced", **{**kw, "n_boot": 6})
    halves = [x[:, 1:].sum(0) for x in ridge_fits if len(x) == 20]
    assert blocks.trust is not None and len(halves) == 12 and all(bool((h == 8).all()) for h in halves)
    # a log of one design is not resumed as the other
    with pytest.raises(hk.HeadkitError, match="differs in: design"):
        stochastic_ablation.study(model, PROMPTS, targets, n_masks=20, path=tmp_path / "b", **kw)
    with pytest.raises(hk.HeadkitError, match=r"design='sobol'.*\['bernoulli', 'balanced'\]"):
        stochastic_ablation.study(model, PROMPTS, targets, n_masks=20, design="sobol", **kw)


def test_without_bootstrap_the_ranking_has_no_trust_measure(setup):
    model, tok, targets = setup
    result = stochastic_ablation.study(model, PROMPTS, targets, tokenizer=tok, n_masks=12, p_keep=(0.5, 0.8),
                                       n_boot=0, progress=False)
    assert result.trust is None and "in_top5" not in result.scores.columns
    assert result.scores["effect"].notna().all()  # ridge needs no bootstrap, and 12 masks for 8 heads suffice
    assert "ranking trust: not measured (n_boot < 2" in result.summary()
    # 2 masks: a ridge ranking, but no interval (least squares needs more masks than heads + 1) and no trust
    two = stochastic_ablation.study(model, PROMPTS, targets, tokenizer=tok, n_masks=2, p_keep=(0.5, 0.8), n_boot=20,
                                    progress=False)
    assert two.trust is None and two.scores[["ols", "se", "low", "high"]].isna().all().all()
    assert "ranking trust: not measured" in two.summary()


def test_outlier_rule_is_the_seeds():
    g = torch.Generator().manual_seed(0)
    imp, exc = torch.rand(12, 12, generator=g), torch.rand(12, 12, generator=g)
    # the seed's cell 19, verbatim in numpy
    i, e = imp.flatten().numpy(), exc.flatten().numpy()
    di, de = i - np.mean(i), e - np.mean(e)
    idx = np.where((di > np.percentile(di, 88)) | (de > np.percentile(de, 88)))[0]
    got = stochastic_ablation.outliers(imp, exc)
    assert got.flatten().nonzero()[:, 0].tolist() == idx.tolist()
    assert 20 <= len(idx) <= 36  # 12% of 144 per score, a union


def test_plots_are_written(setup, tmp_path):
    require("matplotlib")  # in the full install; a partial one (CI's legacy virtualenvs) may skip
    model, tok, targets = setup
    result = stochastic_ablation.study(model, PROMPTS, targets, tokenizer=tok, n_masks=12, p_keep=(0.5, 0.8),
                                       n_boot=5, progress=False)
    with pytest.raises(hk.HeadkitError, match=r"phase 'middle'.*\['many_ablated', 'few_ablated'\]"):
        result.synergy("middle")
    with pytest.raises(hk.HeadkitError, match=r"by='rank'.*importance"):
        result.top(3, by="rank")
    paths = result.plot(tmp_path / "figs")
    assert [p.name for p in paths] == ["scores.png", "outliers.png", "synergy.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": PROMPTS}, "prompts without targets"),
        ({"n_masks": 1}, r"n_masks=1.*n_masks >= 2"),
        ({"p_keep": (0.3,)}, r"p_keep=\(0.3,\)"),
        ({"p_keep": "seed"}, r"p_keep='seed'"),
        ({"p_keep": "auto", "success": (0.2, 1.0)}, r"success=\(0.2, 1.0\)"),
        ({"targets": [" w1", " w1 w2", " w3", " w4", " w5"]}, r"target ' w1 w2' for prompt 1 .* 2 tokens"),
    ],
)
def test_bad_input(setup, kwargs, match):
    model, tok, targets = setup
    args = {"prompts": PROMPTS, "targets": targets, **kwargs}
    if "prompts" in kwargs and "targets" not in kwargs:
        args.pop("targets")
    with pytest.raises(hk.HeadkitError, match=match):
        stochastic_ablation.study(model, args.pop("prompts"), args.pop("targets", None), tokenizer=tok, progress=False,
                                  **args)


def test_nothing_solved_is_an_error(setup):
    model, tok, targets = setup
    wrong = [" w1"] * len(PROMPTS)
    with pytest.raises(hk.HeadkitError, match="gets none of the 5 prompts right"):
        stochastic_ablation.study(model, PROMPTS, wrong, tokenizer=tok, progress=False)


def test_cli_mc_writes_everything_and_resumes(setup, tmp_path):
    from headkit import cli

    model, tok, targets = setup
    lines_file = tmp_path / "prompts.tsv"
    lines_file.write_text("\n".join(f"{p}\t{tok.decode([int(t)])}" for p, t in zip(PROMPTS, targets)) + "\n\n")
    printed = []
    out_dir = tmp_path / "mc"
    result = cli.mc(masks=12, p_keep="0.5,0.8", prompts=str(lines_file), out_dir=str(out_dir), model=model,
                    tokenizer=tok, out=printed.append)
    text = "\n".join(printed)
    assert "the full model completes 4 of 5 prompts" in text and "throughput:" in text
    assert "outlier heads" in text and "outliers kept only" in text
    assert "top 10 heads by effect on the mean margin" in text and "ranking trust:" in text
    for name in ("scores.csv", "synergy.csv", "validation.csv", "scores.png", "outliers.png", "synergy.png"):
        assert (out_dir / name).exists(), name
    assert (out_dir / "outcomes" / "many_ablated" / "rows.bin").exists()
    again = cli.mc(masks=12, p_keep="0.5,0.8", prompts=str(lines_file), out_dir=str(out_dir), model=model,
                   tokenizer=tok, out=printed.append)
    assert again.evaluations == 0 and again.scores.equals(result.scores)
    assert "nothing evaluated" in printed[-2]
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(hk.HeadkitError, match=r"line 1 \('no tab here'\) is not 'prompt<TAB>target'"):
        cli.mc(masks=12, prompts=str(bad), model=model, tokenizer=tok, out=printed.append)
    with pytest.raises(hk.HeadkitError, match="--p-keep 'x'"):
        cli.mc(masks=12, p_keep="x", model=model, tokenizer=tok, out=printed.append)
    with pytest.raises(hk.HeadkitError, match="--design 'sobol'.*bernoulli, balanced"):
        cli.mc(masks=12, design="sobol", model=model, tokenizer=tok, out=printed.append)
