"""Mask designs and head-effect estimators against planted truth and independent numpy/scipy fits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import headkit as hk
from headkit.analyses import estimators
from headkit.analyses.montecarlo import bernoulli


def test_antithetic_pairs_keep_the_marginal_and_are_negatively_correlated():
    m = estimators.antithetic(20000, 0.3, 2, 3, seed=1).double()
    assert m.shape == (20000, 2, 3)
    assert (m.mean(0) - 0.3).abs().max() < 0.01
    first, second = m[0::2].reshape(-1), m[1::2].reshape(-1)
    correlation = np.corrcoef(first.numpy(), second.numpy())[0, 1]
    assert correlation == pytest.approx(-0.3 / 0.7, abs=0.02)  # P(both) = 0 for p <= 0.5: -p / (1 - p)
    assert estimators.antithetic(5, 0.5, 1, 2).shape[0] == 5  # an odd count drops the last partner


def test_balanced_keeps_every_head_equally_often_in_random_masks():
    m = estimators.balanced(50, 0.3, 3, 4, seed=2)
    assert (m.sum(0) == 15).all()
    assert len({tuple(row.reshape(-1).tolist()) for row in m}) > 40  # not the same mask repeated
    assert not torch.equal(m[:, 0, 0], m[:, 0, 1])


def planted(n, design, seed=0, noise=0.3):
    torch.manual_seed(seed)
    beta = torch.tensor([[0.8, 0.0, -0.5], [0.2, 0.0, 1.1]], dtype=torch.float64)
    masks = design(n, 0.5, 2, 3, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    y = 0.4 + (masks.double() * beta).sum((1, 2))[:, None] + noise * torch.randn(n, 4, generator=g, dtype=torch.float64)
    return masks, y, beta


def test_ridge_recovers_planted_effects_within_its_intervals_and_equals_a_numpy_solve():
    masks, y, beta = planted(400, estimators.balanced)
    table = estimators.ridge(masks, y, lam=2.0)
    effect = torch.tensor(table["effect"].to_numpy()).reshape(2, 3)
    # the same penalised least squares solved by numpy (intercept unpenalised)
    x = np.hstack([np.ones((400, 1)), masks.reshape(400, -1).double().numpy()])
    d = np.eye(7) * 2.0
    d[0, 0] = 0
    want = np.linalg.solve(x.T @ x + d, x.T @ y.mean(1).numpy())[1:]
    assert np.allclose(effect.reshape(-1).numpy(), want, atol=1e-10)
    assert ((table["low"] <= beta.reshape(-1).numpy()) & (beta.reshape(-1).numpy() <= table["high"])).all()
    assert float(table["se"].max()) < 0.05


def test_ridge_se_is_least_squares_se_by_the_textbook_formula():
    masks, y, _ = planted(60, estimators.balanced, seed=3, noise=1.0)
    table = estimators.ridge(masks, y)  # ridge point, least-squares intervals
    x = np.hstack([np.ones((60, 1)), masks.reshape(60, -1).double().numpy()])
    ybar = y.mean(1).numpy()
    b = np.linalg.inv(x.T @ x) @ x.T @ ybar
    s2 = ((ybar - x @ b) ** 2).sum() / (60 - 7)
    se = np.sqrt(np.diag(np.linalg.inv(x.T @ x)) * s2)[1:]
    t = 2.005745995  # Student t, 53 degrees of freedom, 97.5 %
    np.testing.assert_allclose(table["ols"].to_numpy(), b[1:], rtol=1e-9)
    np.testing.assert_allclose(table["se"].to_numpy(), se, rtol=1e-9)
    np.testing.assert_allclose(table["low"].to_numpy(), b[1:] - t * se, rtol=1e-7)
    np.testing.assert_allclose(table["high"].to_numpy(), b[1:] + t * se, rtol=1e-7)
    assert table.attrs["lam"] > 0 and not np.allclose(table["effect"].to_numpy(), b[1:])  # the point is ridge's


def test_ridge_intervals_cover_where_ridge_shrinks_hard():
    # 100 masks for 72 heads: least squares' intervals, which ridge reports, cover at the stated rate; an
    # interval around the shrunken ridge estimate with ridge's own (sandwich) standard error does not
    beta = torch.randn(72, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    covered, around_ridge = [], []
    for seed in range(30):
        m = bernoulli(100, 0.5, 18, 4, seed=seed)
        g = torch.Generator().manual_seed(seed + 1)
        y = m.flatten(1).double().numpy() @ beta + 4.0 * torch.randn(100, generator=g, dtype=torch.float64).numpy()
        t = estimators.ridge(m, torch.from_numpy(y)[:, None])
        covered += list((t["low"] <= beta) & (beta <= t["high"]))
        x = np.hstack([np.ones((100, 1)), m.reshape(100, -1).double().numpy()])
        d = np.eye(73) * t.attrs["lam"]
        d[0, 0] = 0
        inverse = np.linalg.inv(x.T @ x + d)
        b = inverse @ x.T @ y
        s2 = ((y - x @ b) ** 2).sum() / (100 - np.trace(x @ inverse @ x.T))
        se = np.sqrt(np.diag(inverse @ x.T @ x @ inverse) * s2)[1:]
        np.testing.assert_allclose(t["effect"].to_numpy(), b[1:], atol=1e-9)
        around_ridge += list(np.abs(b[1:] - beta) <= 1.96 * se)
    assert 0.93 <= np.mean(covered) <= 0.97  # 2,160 intervals at 95 %
    assert np.mean(around_ridge) < 0.8  # 73 % here


def test_heads_that_never_vary_have_no_estimate():
    m = estimators.balanced(80, 0.5, 2, 3, seed=0)
    m[:, 1, 2] = True  # kept in every mask
    y = (m.flatten(1).double() @ torch.arange(6.0, dtype=torch.float64))[:, None]
    t = estimators.ridge(m, y)
    assert t.loc[(1, 2)].isna().all() and t.drop(index=(1, 2))["effect"].notna().all()
    np.testing.assert_allclose(estimators.ridge(m, y, lam=0.0)["effect"].to_numpy()[:5], [0, 1, 2, 3, 4], atol=1e-9)
    every = estimators.ridge(torch.ones(5, 2, 3, dtype=torch.bool), torch.ones(5, 1))  # p_keep = 1: nothing to fit
    assert every.isna().all().all() and every.attrs["lam"] == 0.0
    assert estimators.gcv_penalty(torch.ones(5, 3, dtype=torch.float64), torch.arange(5.0, dtype=torch.float64)) == 0.0


def test_ridge_intervals_cover_the_truth_about_as_often_as_they_claim():
    covered = []
    for seed in range(40):
        masks, y, beta = planted(200, estimators.balanced, seed=seed, noise=1.0)
        t = estimators.ridge(masks, y, lam=0.0)
        covered += list((t["low"] <= beta.reshape(-1).numpy()) & (beta.reshape(-1).numpy() <= t["high"]))
    assert 0.88 <= np.mean(covered) <= 0.99  # 240 intervals at 95 %


def naive_gcv(x, y, lam):
    """GCV from the explicit hat matrix of ridge with an unpenalised intercept."""
    d = np.eye(x.shape[1]) * lam
    d[0, 0] = 0
    hat = x @ np.linalg.pinv(x.T @ x + d) @ x.T
    residual = y - hat @ y
    return len(y) * residual @ residual / (len(y) - np.trace(hat)) ** 2


@pytest.mark.parametrize("n, noise", [(30, 0.5), (200, 0.1), (200, 3.0)])
def test_the_automatic_penalty_minimises_generalised_cross_validation(n, noise):
    torch.manual_seed(n)
    masks = estimators.antithetic(n, 0.5, 4, 5, seed=n)
    x = np.hstack([np.ones((n, 1)), masks.reshape(n, -1).double().numpy()])
    beta = np.random.default_rng(n).normal(0, 1, 20)
    y = x[:, 1:] @ beta + noise * np.random.default_rng(n + 1).normal(size=n)
    chosen = estimators.gcv_penalty(torch.from_numpy(x), torch.from_numpy(y))
    fine = [naive_gcv(x, y, lam) for lam in np.logspace(-3, 5, 400)]
    assert naive_gcv(x, y, chosen) <= 1.02 * min(fine)
    table = estimators.ridge(masks, torch.from_numpy(y)[:, None])
    assert table.attrs["lam"] == chosen


def test_ridge_from_fewer_masks_than_heads_finds_the_few_heads_that_matter():
    beta = 0.1 * torch.randn(72, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    beta[[5, 40, 61]] = torch.tensor([2.0, 1.5, 1.0], dtype=torch.float64)
    hits = 0
    for seed in range(10):
        masks = estimators.balanced(40, 0.5, 18, 4, seed=seed)
        g = torch.Generator().manual_seed(seed + 50)
        y = (masks.reshape(40, -1).double() @ beta)[:, None] + 0.3 * torch.randn(40, 3, generator=g, dtype=torch.float64)
        table = estimators.ridge(masks, y)
        assert table.attrs["lam"] > 0
        hits += set(np.argsort(-table["effect"].to_numpy())[:3].tolist()) == {5, 40, 61}
    assert hits >= 7  # 40 masks for 72 heads: least squares is not even defined


def test_balanced_blocks_are_each_balanced_and_extend_a_run_unchanged():
    m = estimators.balanced(60, 0.5, 3, 4, seed=4, block=20)
    assert all((m[i : i + 20].sum(0) == 10).all() for i in (0, 20, 40))
    assert torch.equal(m[:40], estimators.balanced(40, 0.5, 3, 4, seed=4, block=20))
    assert not torch.equal(m[:20], m[20:40])
    # a partial last block is the start of the full one, so a run of 30 extends to 45 or 60 unchanged
    assert torch.equal(m[:30], estimators.balanced(30, 0.5, 3, 4, seed=4, block=20))
    assert torch.equal(estimators.balanced(45, 0.5, 3, 4, seed=4, block=20), m[:45])


def test_balanced_keeps_a_fractional_share_exactly_in_expectation():
    m = estimators.balanced(20_000, 0.596, 3, 4, seed=1, block=10)  # 5.96 of every 10: 5 or 6 per head and block
    counts = m.reshape(2000, 10, 12).sum(1)
    assert set(counts.unique().tolist()) == {5, 6}
    # keep rate p: 2,000 blocks per head, so the rate's standard error is sqrt(0.96 * 0.04 / 2000) / 10 < 0.0005
    assert (m.double().mean(0) - 0.596).abs().max() < 0.002
    assert m.double().mean() == pytest.approx(0.596, abs=0.0006)


def iid(n, p, n_layers, n_heads, seed):
    return bernoulli(n, p, n_layers, n_heads, seed=seed)


@pytest.mark.parametrize("design, n, noise, tail", [
    (estimators.balanced, 120, 1.0, 2.0),    # high signal-to-noise, heavy-tailed effects
    (iid, 200, 4.0, 2.0),
    (estimators.balanced, 100, 15.0, 1.0),   # low signal-to-noise
    (iid, 200, 25.0, 1.0),
    (iid, 40, 4.0, 1.0),                     # fewer masks than heads
])
def test_split_half_trust_tracks_the_rank_correlation_with_planted_truth(design, n, noise, tail):
    beta = torch.randn(72, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    beta = beta.sign() * beta.abs() ** tail
    claimed, actual = [], []
    for seed in range(6):
        m = design(n, 0.5 if design is estimators.balanced else 0.3, 18, 4, seed=seed)
        g = torch.Generator().manual_seed(seed + 9)
        y = (m.flatten(1).double() @ beta)[:, None] + noise * torch.randn(n, 5, generator=g, dtype=torch.float64)
        claimed.append(estimators.stability(m, y, splits=60, seed=seed).agreement)
        effect = estimators.ridge(m, y)["effect"].to_numpy()
        actual.append(float(np.corrcoef(np.argsort(np.argsort(effect)), beta.argsort().argsort())[0, 1]))
    # at most 0.1 above, 0.14 below the truth (measured: +0.02 to -0.13); without Spearman-Brown (the square
    # root of the halves' agreement) three of these cases fall 0.17-0.2 below and fail
    assert -0.14 < np.mean(claimed) - np.mean(actual) < 0.1


def test_trust_extrapolates_masks_by_spearman_brown_and_is_stable_only_at_0_8():
    # halves that agree at r give reliability 2r / (1 + r); at reliability rho after N masks, c = N (1 - rho) / rho
    # and an agreement a needs c a^2 / (1 - a^2) masks
    def trust(r, n=100):
        return estimators.Stability(3, torch.full((11,), r, dtype=torch.float64), torch.rand(2, 4), n_masks=n)

    assert trust(0.5).reliability == pytest.approx(2 / 3) and trust(0.5).agreement == pytest.approx((2 / 3) ** 0.5)
    assert trust(0.5).masks_for(0.9) == pytest.approx(50 * 0.81 / 0.19)
    assert trust(-0.2).reliability == 0.0 and math.isinf(trust(-0.2).masks_for())
    # agreement 0.71: reliability 1/2 at 100 masks, so c = 100 and 0.85 needs 100 * 0.7225 / 0.2775 = 260 masks
    assert "not yet stable: evaluate more masks (at least about 260 in all for 0.85)" in trust(1 / 3).summary()
    assert estimators.STABLE == 0.85 and "not yet stable" in trust(0.55).summary()  # 0.84: past 0.8, within the margin
    assert ", stable;" in trust(0.7).summary()  # agreement sqrt(1.4 / 1.7) = 0.91
    assert "rough here" not in trust(1 / 3).summary() and "rough here" in trust(0.1).summary()  # below 0.6
    # too little agreement to extrapolate from (reliability 2 * 0.05 / 1.05 < 0.15): no number of masks
    assert "(the halves barely agree, too little to say how many)" in trust(0.05).summary()
    assert "too little to say how many" in trust(-0.2).summary()


def test_stability_without_a_ranking_says_so_and_rejects_bad_splits():
    m = estimators.balanced(40, 0.5, 18, 4, seed=0)
    y = m.flatten(1).double()[:, :1] + 0.1 * torch.randn(40, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = torch.zeros(40, 1, 2, dtype=torch.bool)
    one[::2, 0, 0] = True  # the other head is never kept: one head varies, nothing to rank
    s = estimators.stability(one, y, k=1, splits=5)
    assert s.summary() == "ranking trust: not measurable (fewer than 2 heads vary across the masks)"
    assert math.isnan(s.in_top[0, 1]) and len(s.rank_correlation) == 0
    with pytest.raises(hk.HeadkitError, match="block=0"):
        estimators.stability(m, y, block=0)
    with pytest.raises(hk.HeadkitError, match="6 masks in groups of 2"):
        estimators.stability(m[:6], y[:6], block=2)


def test_in_top_shares_cover_the_varying_heads_only():
    m = estimators.balanced(60, 0.5, 2, 3, seed=1)
    m[:, 0, 1] = False  # never kept: no estimate, no share
    y = (m.flatten(1).double() @ torch.tensor([3.0, 9.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64))[:, None]
    s = estimators.stability(m, y, k=5, splits=10)
    assert math.isnan(s.in_top[0, 1]) and s.in_top.isfinite().sum() == 5
    assert float(s.in_top.nan_to_num(0).sum()) == pytest.approx(5.0)  # each half-size fit puts all 5 in its top 5
    assert "-100%" not in s.summary() and "L0H1" not in s.summary().split("top 5 of half-size fits:")[1]
    three = estimators.stability(m, y, k=3, splits=10)
    assert float(three.in_top.nan_to_num(0).sum()) == pytest.approx(3.0) and three.in_top[0, 0] == 1.0  # exact, 3.0


def test_a_partial_last_block_is_split_like_the_others(ridge_fits):
    m = estimators.balanced(45, 0.4, 2, 3, seed=0, block=10)
    y = (m.flatten(1).double() @ torch.arange(6.0, dtype=torch.float64))[:, None]
    estimators.stability(m, y, k=2, splits=20, block=10)
    sizes = [len(x) for x in ridge_fits]
    # 5 groups (the last of 5 masks): each half is 2 groups, 20 masks, or 15 with the partial one
    assert set(sizes) <= {15, 20} and 15 in sizes and len(sizes) == 40  # only the halves: no refit of the full fit


def test_balanced_trust_splits_whole_blocks(ridge_fits):
    m = estimators.balanced(40, 0.5, 2, 3, seed=0, block=10)
    y = (m.flatten(1).double() @ torch.arange(6.0, dtype=torch.float64))[:, None]
    estimators.stability(m, y, k=2, splits=4, block=10)
    halves = [x[:, 1:].sum(0) for x in ridge_fits if len(x) == 20]
    assert len(halves) == 8 and all(bool((kept == 10).all()) for kept in halves)  # two whole blocks of 10 per half


def test_logistic_equals_scipy_on_the_same_penalised_likelihood_and_recovers_planted_log_odds():
    masks = bernoulli(3000, 0.5, 1, 3, seed=3)
    beta = np.array([1.5, 0.0, -1.0])
    logit = -0.5 + masks.reshape(3000, -1).double().numpy() @ beta
    g = np.random.default_rng(4)
    successes = torch.tensor(g.random((3000, 6)) < 1 / (1 + np.exp(-logit[:, None])))
    lam = 3.0
    table = estimators.logistic(masks, successes, lam=lam)
    x = np.hstack([np.ones((3000, 1)), masks.reshape(3000, -1).double().numpy()])
    s, t = successes.double().sum(1).numpy(), 6.0

    def loss(c):
        eta = x @ c
        return -(s * eta - t * np.logaddexp(0, eta)).sum() + lam / 2 * (c[1:] ** 2).sum()

    want = minimize(loss, np.zeros(4), method="BFGS", options={"gtol": 1e-9}).x[1:]
    assert np.allclose(table["effect"].to_numpy(), want, atol=1e-4)
    assert np.allclose(table["effect"].to_numpy(), beta, atol=4 * table["se"].to_numpy())


def exact_shapley(v, players):
    """Shapley values by enumerating every coalition (the definition)."""
    n = len(players)
    out = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for coalition in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                out[i] += weight * (v(set(coalition) | {i}) - v(set(coalition)))
    return out


def game(coalition):
    """A value with a three-way interaction (antithetic pairs are not exact on it)."""
    return 1.0 * (0 in coalition) + 0.5 * (1 in coalition) + 2.0 * ({0, 2, 3} <= coalition) - 0.7 * ({1, 3} <= coalition)


def as_masks(fn):
    return lambda m: torch.tensor([fn({i for i, kept in enumerate(row.reshape(-1).tolist()) if kept}) for row in m])


def test_shapley_by_permutations_converges_to_the_enumerated_definition():
    want = exact_shapley(game, range(4))
    for antithetic in (True, False):
        table = estimators.shapley(as_masks(game), 2, 2, permutations=2000, antithetic=antithetic, seed=5)
        got = table["effect"].to_numpy()
        assert np.allclose(got, want, atol=4 * table["se"].to_numpy().max() + 1e-9)
        assert np.allclose(got, want, atol=0.05)


def test_antithetic_permutations_are_exact_with_pairwise_interactions_only():
    def pairwise(c):
        return 0.3 * (0 in c) - 1.0 * (2 in c) + 2.0 * ({0, 1} <= c) + 0.5 * ({1, 3} <= c)

    got = estimators.shapley(as_masks(pairwise), 2, 2, permutations=2, seed=7)["effect"].to_numpy()
    assert np.allclose(got, exact_shapley(pairwise, range(4)), atol=1e-12)


def test_bad_input_names_the_fix():
    with pytest.raises(hk.HeadkitError, match="p_keep=1.5"):
        estimators.balanced(10, 1.5, 1, 2)
    varying = torch.tensor([[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 1, 1]], dtype=torch.bool).reshape(3, 2, 3)
    with pytest.raises(hk.HeadkitError, match="3 masks for 6 heads with lam=0"):
        estimators.ridge(varying, torch.ones(3, 1), lam=0)
    with pytest.raises(hk.HeadkitError, match="lam='fast'"):
        estimators.ridge(torch.ones(3, 2, 3, dtype=torch.bool), torch.ones(3, 1), lam="fast")
    with pytest.raises(hk.HeadkitError, match="even when antithetic"):
        estimators.shapley(lambda m: m.sum((1, 2)), 1, 2, permutations=3)
    with pytest.raises(hk.HeadkitError, match="lam=-1"):
        estimators.logistic(torch.ones(3, 1, 2, dtype=torch.bool), torch.ones(3, 1), lam=-1)
