"""Head effects from fewer masks: variance-reducing mask designs and estimators that use every readout.

Designs (masks ``[n, layer, head]``, True = head kept), each with the marginal keep probability ``p_keep``:

- :func:`antithetic`: pairs of masks from one uniform draw ``u`` per head, kept where ``u < p`` and where
  ``1 - u < p`` (exact complements at ``p = 0.5``): each pair's bits are negatively correlated, so sums over
  a pair vary less;
- :func:`balanced`: every head kept in ``p n`` masks, rounded at random (a random permutation per head), so no
  head is over- or under-sampled by chance.

Estimators of each head's effect, with intervals:

- :func:`ridge`: least squares of a continuous readout (margin, log-prob: more information per pass than
  the success bit) on the keep bits, with an L2 penalty on the head coefficients (chosen by generalised
  cross-validation, :func:`gcv_penalty`, by default), with least squares' intervals;
- :func:`logistic`: L2-penalised logistic regression of successes (binomial counts per mask), by
  Newton's method, intervals from the inverse Hessian;
- :func:`stability`: how reproducible a ridge ranking is, from split halves (Spearman-Brown);
- :func:`shapley`: Shapley values of a value function over heads by permutation sampling, with antithetic
  (reversed) permutations, which are exact for games with at most pairwise interactions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headkit.analyses.mask_statistics import design_matrix
from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float

__all__ = ["antithetic", "balanced", "ridge", "gcv_penalty", "stability", "Stability", "STABLE", "logistic", "shapley"]


def _check_design(n: int, p_keep: float, owner: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise fail(f"{owner} got n={n!r}", "a whole number of masks >= 1", "pass e.g. n=200")
    if isinstance(p_keep, bool) or not isinstance(p_keep, (int, float)) or not 0 < p_keep <= 1:
        raise fail(f"{owner} got p_keep={p_keep!r}", "a keep probability in (0, 1] (1: every head kept)", "pass p_keep=0.5")


def antithetic(n: int, p_keep: float, n_layers: int, n_heads: int, *, seed: int = 0) -> Bool[torch.Tensor, "n layer head"]:
    """``n`` masks in antithetic pairs (rows 2k and 2k + 1), each head kept with probability ``p_keep``.

    Example:
        >>> from headkit.analyses.estimators import antithetic
        >>> m = antithetic(4, 0.5, 2, 3, seed=0)
        >>> m.shape, bool((m[0] == ~m[1]).all())      # at p = 0.5 a pair is a mask and its complement
        (torch.Size([4, 2, 3]), True)
    """
    _check_design(n, p_keep, "antithetic")
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((n + 1) // 2, n_layers, n_heads, generator=g, dtype=torch.float64)
    return torch.stack([u < p_keep, (1 - u) < p_keep], 1).reshape(-1, n_layers, n_heads)[:n]


def balanced(
    n: int, p_keep: float, n_layers: int, n_heads: int, *, seed: int = 0, block: int | None = None
) -> Bool[torch.Tensor, "n layer head"]:
    """``n`` masks in which every head is kept in ``p_keep * n`` of them (rounded at random), at random positions.

    Each head is kept in ``floor(p_keep * n)`` masks, or one more with probability equal to the fractional
    part, so its keep probability is exactly ``p_keep`` and its count varies as little as it can (an i.i.d.
    design's count has variance ``n p (1 - p)``; this one's at most 1/4). Heads are placed independently.
    With ``block``, the masks come in consecutive blocks of ``block`` masks, each balanced on its own: the
    first ``m`` masks are the same for any ``n >= m`` (a partial last block is the start of a full one), so a
    run can be extended, and any set of whole blocks is balanced.

    Example:
        >>> from headkit.analyses.estimators import balanced
        >>> balanced(10, 0.3, 2, 2, seed=0).sum(0).tolist()
        [[3, 3], [3, 3]]
        >>> bool((balanced(45, 0.5, 2, 2, block=20)[:30] == balanced(30, 0.5, 2, 2, block=20)).all())
        True
        >>> sorted(set(balanced(10, 0.85, 4, 4, seed=1).sum(0).flatten().tolist()))   # 8.5 per head: 8 or 9
        [8, 9]
    """
    _check_design(n, p_keep, "balanced")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 2):
        raise fail(f"balanced got block={block!r}", "a block size >= 2 masks, or None for one balanced design",
                   "pass block=20")
    if block is not None:
        parts = [balanced(block, p_keep, n_layers, n_heads, seed=seed * 1_000_003 + start // block)[: n - start]
                 for start in range(0, n, block)]
        return torch.cat(parts)
    g = torch.Generator().manual_seed(seed)
    heads = n_layers * n_heads
    expected = p_keep * n
    whole, fraction = (round(expected), 0.0) if abs(expected - round(expected)) < 1e-9 else divmod(expected, 1.0)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(heads)], 1)
    kept = torch.full((heads,), int(whole))
    if fraction > 1e-9:  # drawn only then, so designs with a whole number kept are as before
        kept += torch.rand(heads, generator=g, dtype=torch.float64) < fraction
    return (order < kept).reshape(n, n_layers, n_heads)


def _table(effect: torch.Tensor, se: torch.Tensor, n_layers: int, n_heads: int, level: float) -> Any:
    import pandas as pd
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    index = pd.MultiIndex.from_product([range(n_layers), range(n_heads)], names=["layer", "head"])
    return pd.DataFrame({"effect": effect.numpy(), "se": se.numpy(), "low": (effect - z * se).numpy(),
                         "high": (effect + z * se).numpy()}, index=index)


def _check_level_lam(level: float, lam: float, owner: str) -> None:
    if not 0 < level < 1:
        raise fail(f"{owner} got level={level!r}", "a confidence level strictly between 0 and 1", "pass level=0.95")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        raise fail(f"{owner} got lam={lam!r}", "an L2 penalty >= 0", "pass lam=1.0")


def ridge(
    masks: Bool[torch.Tensor, "mask layer head"],
    outcomes: Float[torch.Tensor, "mask prompt"],
    *,
    lam: float | str = "auto",
    level: float = 0.95,
) -> Any:
    """Each head's effect on a continuous readout: ridge regression of the per-mask mean on the keep bits.

    Minimises ``|y - b0 - X b|^2 + lam |b|^2`` (the intercept is not penalised), ``y`` the mean outcome of
    each mask over prompts. ``lam="auto"`` (default) picks the penalty by generalised cross-validation
    (:func:`gcv_penalty`), which also makes fits from fewer masks than heads well defined; ``lam=0`` is
    ordinary least squares. Returns a DataFrame indexed by (layer, head): ``effect`` (the ridge estimate, the
    better ranking from few masks), ``ols`` (the ordinary least-squares estimate, unbiased), and ``se``,
    ``low``, ``high``: its standard error and Student-t interval at ``level``. Those cover the effect at the
    stated rate (tests/test_estimators.py), where an interval around the shrunken ridge estimate would not
    (it is biased towards 0: 73 % coverage at 100 masks for 72 heads in that test), so a large ridge effect
    can lie below its ``low``. ``ols`` and its interval are NaN unless there are more masks than varying
    heads + 1 and the keep bits have full rank. A head kept in every mask or in none has no estimate (NaN throughout). The penalty
    used is in ``.attrs["lam"]``.

    Example:
        >>> import torch
        >>> from headkit.analyses.estimators import balanced, ridge
        >>> m = balanced(400, 0.5, 1, 3, seed=0)
        >>> y = (1.0 + 2.0 * m[:, 0, 1].double())[:, None]          # only L0H1 matters, by 2
        >>> ridge(m, y, lam=0.0).loc[(0, 1), "effect"].round(6)
        np.float64(2.0)
        >>> ridge(m[:3], y[:3])[["ols", "se", "low"]].isna().all().all()    # 3 masks, 3 heads: no interval
        np.True_
    """
    import pandas as pd
    from scipy.stats import t as student

    x, y, varies, lam, n_layers, n_heads = _varying_fit(masks, outcomes, lam, level, "ridge")
    n, k = x.shape
    heads = n_layers * n_heads
    effect, se, centre = (torch.full((heads,), math.nan, dtype=torch.float64) for _ in range(3))
    kept = varies[1:]
    effect[kept] = _ridge_solve(x, y, float(lam))[0][1:]
    if n > k and int(torch.linalg.matrix_rank(x)) == k:  # least squares, for the intervals
        ls = torch.linalg.lstsq(x, y[:, None], driver="gelsd").solution[:, 0]
        residual = y - x @ ls
        cov = torch.linalg.inv(x.T @ x) * float(residual @ residual) / (n - k)
        centre[kept], se[kept] = ls[1:], cov.diagonal()[1:].clamp(min=0).sqrt()
    half = float(student.ppf(0.5 + level / 2, max(n - k, 1))) * se
    index = pd.MultiIndex.from_product([range(n_layers), range(n_heads)], names=["layer", "head"])
    table = pd.DataFrame({"effect": effect.numpy(), "ols": centre.numpy(), "se": se.numpy(),
                          "low": (centre - half).numpy(), "high": (centre + half).numpy()}, index=index)
    table.attrs["lam"] = float(lam)
    return table


def _varying_fit(
    masks: torch.Tensor, outcomes: torch.Tensor, lam: float | str, level: float, owner: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, int, int]:
    """What a ridge fit is over: the design matrix of the intercept and the heads that vary, the per-mask means,
    which columns those are (intercept first), and the penalty (checked; by GCV for ``"auto"``)."""
    auto = isinstance(lam, str) and lam == "auto"
    _check_level_lam(level, 0.0 if auto else lam, owner)
    x, n_layers, n_heads = design_matrix(masks, outcomes, owner)
    y = outcomes.double().mean(1).cpu()
    varies = torch.cat([torch.tensor([True]), (x[:, 1:] != x[:1, 1:]).any(0)])  # the intercept, then heads with both states
    x = x[:, varies]
    n, k = x.shape
    lam = gcv_penalty(x, y) if auto else float(lam)
    if n <= k and lam == 0 and k > 1:
        raise fail(f"{owner} got {n} masks for {k - 1} heads with lam=0", f"more masks than heads + 1 (> {k}) for "
                   "least squares", 'evaluate more masks, or pass lam="auto" (a penalty makes fewer masks well defined)')
    return x, y, varies, lam, n_layers, n_heads


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge coefficients (intercept first, unpenalised) and the penalised normal matrix ``X'X + lam D``."""
    penalty = torch.eye(x.shape[1], dtype=torch.float64) * lam
    penalty[0, 0] = 0.0
    a = x.T @ x + penalty
    return torch.linalg.lstsq(a, (x.T @ y)[:, None], driver="gelsd").solution[:, 0], a


def gcv_penalty(
    x: Float[torch.Tensor, "mask column"], y: Float[torch.Tensor, " mask"], *, grid: int = 41
) -> float:
    """The ridge penalty that minimises generalised cross-validation, ``n RSS / (n - trace H)^2``.

    ``x`` is a design matrix with an intercept first column (unpenalised), as
    :func:`headkit.analyses.mask_statistics.design_matrix` builds it; ``y`` one value per row. Penalties are
    searched on ``grid`` log-spaced values from 1e-4 to 1e4 times the mean squared (centred) column; GCV
    (Golub, Heath and Wahba 1979) estimates leave-one-out prediction error without refitting, through one SVD.
    With no varying column every penalty fits the same (the mean), and the answer is 0.

    Example:
        >>> import torch
        >>> from headkit.analyses.estimators import gcv_penalty
        >>> x = torch.cat([torch.ones(50, 1), torch.rand(50, 4, generator=torch.Generator().manual_seed(0)).round()], 1)
        >>> y_clean = x @ torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])
        >>> y_noisy = y_clean + 3 * torch.randn(50, generator=torch.Generator().manual_seed(1))
        >>> gcv_penalty(x.double(), y_clean.double()) < gcv_penalty(x.double(), y_noisy.double())   # noise: shrink more
        True
    """
    xc = x[:, 1:] - x[:, 1:].mean(0)
    yc = y - y.mean()
    n = x.shape[0]
    if not bool(xc.abs().gt(0).any()):  # no column varies: every penalty gives the same fit (the mean)
        return 0.0
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    uy = u.T @ yc
    outside = float(yc @ yc - uy @ uy)  # the part of y no penalty can fit
    base = float((s**2).sum()) / max(1, xc.shape[1])
    lams = base * torch.logspace(-4, 4, grid, dtype=torch.float64)
    shrink = s[None, :] ** 2 / (s[None, :] ** 2 + lams[:, None])  # [grid, rank]
    rss = ((1 - shrink) ** 2 * uy[None, :] ** 2).sum(1) + max(0.0, outside)
    free = (n - 1 - shrink.sum(1)).clamp(min=1e-9)  # n - trace(H), the intercept counted
    return float(lams[(n * rss / free**2).argmin()])


STABLE = 0.85
"""The expected agreement :meth:`Stability.summary` calls stable: 0.8 plus a margin, since on Gemma 3 270M's
copy task the figure ran 0.02-0.07 above what runs measured (benchmarks/results/estimator_efficiency.md)."""
LITTLE = 0.15
"""Below this reliability (expected agreement 0.39) :meth:`Stability.summary` does not extrapolate a number of
masks: one run's figure varies too much there (on Gemma's copy task, 10-90 % of 50-mask runs read 0.00-0.57)."""


@dataclass(frozen=True)
class Stability:
    """How far a ridge ranking of the heads can be trusted, from random splits of its masks into two halves.

    ``rank_correlation``: for each split, the Spearman correlation between the ridge effects of its two
    halves (over the heads that vary); ``in_top``: the share of half-size fits in which each head is among
    the ``k`` largest effects (fits on half the masks, so less sure than the full fit); ``n_masks``: masks in the full fit.
    :attr:`reliability` and :attr:`agreement` turn the halves' agreement into the full fit's (Spearman-Brown).
    """

    k: int
    rank_correlation: Float[torch.Tensor, " split"]
    in_top: Float[torch.Tensor, "layer head"]
    n_masks: int = 0

    @property
    def median(self) -> float:
        """Median rank correlation between the two halves of a split (NaN when fewer than 2 heads vary)."""
        return float(self.rank_correlation.median()) if len(self.rank_correlation) else math.nan

    @property
    def reliability(self) -> float:
        """The full fit's reliability, ``2 r / (1 + r)`` for the halves' median ``r`` (Spearman-Brown; 0 if r < 0)."""
        r = max(self.median, 0.0) if not math.isnan(self.median) else math.nan
        return 2 * r / (1 + r)

    @property
    def agreement(self) -> float:
        """Expected rank correlation of the full fit with the ranking unlimited masks would give: sqrt(reliability)."""
        return math.sqrt(self.reliability)

    def masks_for(self, agreement: float = STABLE) -> float:
        """Masks for an expected ``agreement``, if reliability grows as ``N / (N + c)`` (noise variance ~ 1/N).

        Ridge on the margin followed that law on Gemma 3 270M from 100 to 1,200 antithetic p = 0.5 masks
        (c = 319-334; benchmarks/results/estimator_efficiency.md), where Spearman-Brown's predictions ran
        5-12% above the measured agreement, so read the answer as a lower bound. Returns inf when the halves
        do not agree at all.

        Example:
            >>> import torch
            >>> from headkit.analyses.estimators import Stability
            >>> s = Stability(5, torch.full((9,), 1 / 3, dtype=torch.float64), torch.zeros(2, 4), n_masks=100)
            >>> round(s.reliability, 3), round(s.masks_for(0.8))    # reliability 1/2 at 100 masks: c = 100
            (0.5, 178)
        """
        rho, target = self.reliability, agreement**2
        if math.isnan(rho) or rho <= 0:
            return math.inf
        return self.n_masks * (1 - rho) / rho * target / (1 - target) if target < 1 else math.inf

    def summary(self) -> str:
        """One line: the expected agreement with an unlimited-mask ranking, its verdict, and the heads most often on top."""
        if math.isnan(self.median):
            return "ranking trust: not measurable (fewer than 2 heads vary across the masks)"
        n_heads = self.in_top.shape[1]
        top = self.in_top.flatten().nan_to_num(-1.0).topk(min(self.k, int(self.in_top.isfinite().sum())))
        heads = ", ".join(f"L{int(i) // n_heads}H{int(i) % n_heads} {100 * float(v):.0f}%" for v, i in zip(*top))
        if self.agreement >= STABLE:
            verdict = "stable"
        elif self.reliability < LITTLE:
            verdict = "not yet stable: evaluate more masks (the halves barely agree, too little to say how many)"
        else:
            more = self.masks_for(STABLE)
            verdict = (f"not yet stable: evaluate more masks (at least about {int(round(more, -1 if more < 1000 else -2)):,} "
                       f"in all for {STABLE})")
        rough = ("; one run's figure is rough here: 10-90 % of 100-mask runs on one task read 0.31-0.65"
                 if self.agreement < 0.6 else "")
        return (f"ranking trust: expected rank correlation {self.agreement:.2f} with the ranking of unlimited masks "
                f"(halves of the {self.n_masks} masks agree at {self.median:.2f}, median of "
                f"{len(self.rank_correlation)} splits{rough}), {verdict}; in the top {self.k} of half-size fits: {heads}")


def _spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra = a.argsort(-1).argsort(-1).double()
    rb = b.argsort(-1).argsort(-1).double()
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def stability(
    masks: Bool[torch.Tensor, "mask layer head"],
    outcomes: Float[torch.Tensor, "mask prompt"],
    *,
    k: int = 5,
    splits: int = 200,
    block: int = 1,
    lam: float | str = "auto",
    seed: int = 0,
) -> Stability:
    """How reproducible the :func:`ridge` ranking is: split the masks into two random halves, fit each, compare.

    Masks are split in consecutive groups of ``block`` (pass the design's unit: 2 for antithetic pairs, the
    block size of :func:`balanced`), ``splits`` times, each half fitted at the penalty of the full fit. The
    halves' median Spearman ``r`` is a half-size fit's reliability; Spearman-Brown ``2 r / (1 + r)`` is the
    full fit's, and its square root the expected rank correlation with the ranking unlimited masks would
    give (:attr:`Stability.agreement`). On planted effects (tests/test_estimators.py) that expectation
    ranged from 0.02 above to 0.13 below the truth (below it at low signal-to-noise), also with fewer masks
    than heads. On Gemma 3 270M's copy task it ran 0.02-0.07 above the agreement runs measured with a
    2,000-mask reference, once that reference's own noise is allowed for (benchmarks/results/
    estimator_efficiency.md), hence :data:`STABLE`. A bootstrap (refits on masks drawn with replacement)
    does not work here: a refit shares most masks with the fit, so it agrees with it at about
    ``1 / sqrt(2 - rho)`` even when the fit agrees with the truth at ``sqrt(rho)`` (there: a median of 0.78
    where 100-mask runs agreed with the reference at 0.44). A last group shorter than ``block`` (a partial
    block) is split like the others.

    Example:
        >>> import torch
        >>> from headkit.analyses.estimators import balanced, stability
        >>> m = balanced(200, 0.5, 2, 4, seed=0)
        >>> y = (m.flatten(1).double() @ torch.arange(8.0, dtype=torch.float64))[:, None]   # exact, no noise
        >>> s = stability(m, y, k=2, splits=50)
        >>> s.median, s.agreement, s.in_top.flatten().tolist()[-2:]
        (1.0, 1.0, [1.0, 1.0])
    """
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 2:
        raise fail(f"stability got splits={splits!r}", "at least 2 random splits", "pass splits=200")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise fail(f"stability got block={block!r}", "a group size >= 1 masks",
                   "pass block=1 (or the design's pair/block size)")
    n = masks.shape[0]
    groups = -(-n // block)  # a partial last group counts as one
    if groups < 4:
        raise fail(f"stability got {masks.shape[0]} masks in groups of {block}", "at least 4 groups (2 per half)",
                   "evaluate more masks")
    n_layers, n_heads = masks.shape[1], masks.shape[2]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers * n_heads:
        raise fail(f"stability got k={k!r}", f"a number of top heads in 1..{n_layers * n_heads}", "pass k=5")
    x, y, columns, lam_used, _, _ = _varying_fit(masks, outcomes, lam, 0.95, "stability")
    varies = columns[1:]  # the heads the full fit estimates
    g = torch.Generator().manual_seed(seed)
    fits = []
    for _ in range(splits):
        order = torch.randperm(groups, generator=g)
        for part in (order[: groups // 2], order[groups // 2 : 2 * (groups // 2)]):
            pick = (part[:, None] * block + torch.arange(block)).reshape(-1)
            pick = pick[pick < n]
            fits.append(_ridge_solve(x[pick], y[pick], lam_used)[0][1:])
    halves = torch.stack(fits).reshape(splits, 2, -1)
    heads = int(varies.sum())
    in_top = torch.full((n_layers * n_heads,), math.nan, dtype=torch.float64)
    if heads < 2:
        return Stability(k, torch.empty(0, dtype=torch.float64), in_top.reshape(n_layers, n_heads), masks.shape[0])
    hits = torch.zeros(heads, dtype=torch.float64)
    hits.index_add_(0, halves.flatten(0, 1).topk(min(k, heads), dim=1).indices.reshape(-1),
                    torch.ones(2 * splits * min(k, heads), dtype=torch.float64))
    in_top[varies] = hits / (2 * splits)  # over the varying heads: sums to min(k, varying heads)
    return Stability(k, _spearman_rows(halves[:, 0], halves[:, 1]), in_top.reshape(n_layers, n_heads), masks.shape[0])


def logistic(
    masks: Bool[torch.Tensor, "mask layer head"],
    successes: Float[torch.Tensor, "mask prompt"],
    *,
    lam: float = 1.0,
    level: float = 0.95,
    steps: int = 50,
) -> Any:
    """Each head's effect on the log-odds of success: L2-penalised logistic regression on the keep bits.

    Every (mask, prompt) record is a Bernoulli trial sharing its mask's linear predictor ``b0 + x b``;
    minimises the negative log-likelihood plus ``lam / 2 |b|^2`` by Newton's method (``steps`` at most).
    Standard errors come from the inverse of the penalised Hessian. Returns a DataFrame like :func:`ridge`'s,
    effects in log-odds per head kept.

    Example:
        >>> import torch
        >>> from headkit.analyses.estimators import balanced, logistic
        >>> m = balanced(2000, 0.5, 1, 2, seed=0)
        >>> p = torch.sigmoid(-1.0 + 2.0 * m[:, 0, 0].double())        # L0H0: +2 log-odds
        >>> y = torch.rand(2000, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < p[:, None]
        >>> abs(logistic(m, y, lam=0.0).loc[(0, 0), "effect"] - 2.0) < 0.1
        np.True_
    """
    _check_level_lam(level, lam, "logistic")
    x, n_layers, n_heads = design_matrix(masks, successes, "logistic")
    s = successes.double().sum(1).cpu()
    trials = float(successes.shape[1])
    k = x.shape[1]
    penalty = torch.eye(k, dtype=torch.float64) * lam
    penalty[0, 0] = 0.0
    coef = torch.zeros(k, dtype=torch.float64)
    mean = float(s.sum()) / (trials * len(s))
    coef[0] = math.log(max(mean, 1e-6) / max(1 - mean, 1e-6))
    for _ in range(steps):
        p = torch.sigmoid(x @ coef)
        gradient = x.T @ (s - trials * p) - penalty @ coef
        hessian = (x * (trials * p * (1 - p))[:, None]).T @ x + penalty
        step = torch.linalg.lstsq(hessian, gradient[:, None], driver="gelsd").solution[:, 0]
        coef = coef + step
        if float(step.abs().max()) < 1e-10:
            break
    p = torch.sigmoid(x @ coef)
    hessian = (x * (trials * p * (1 - p))[:, None]).T @ x + penalty
    cov = torch.linalg.pinv(hessian)
    return _table(coef[1:], cov.diagonal()[1:].clamp(min=0).sqrt(), n_layers, n_heads, level)


def shapley(
    value: Callable[[torch.Tensor], torch.Tensor],
    n_layers: int,
    n_heads: int,
    *,
    permutations: int = 16,
    antithetic: bool = True,
    seed: int = 0,
    level: float = 0.95,
) -> Any:
    """Shapley value of every head for ``value`` (masks ``[n, layer, head]`` -> values ``[n]``) by permutation sampling.

    Each permutation adds the heads one by one to the empty mask (all heads ablated); a head's marginal
    contribution is the change in value when it is added. With ``antithetic`` every permutation is followed
    by its reverse (exact for values with at most pairwise interactions between heads). ``value`` is called
    once per permutation on its ``heads + 1`` nested masks, so it can batch them (e.g. through
    :func:`headkit.analyses.montecarlo.evaluate`). Standard errors are over permutations (over pairs when
    antithetic). Returns a DataFrame like :func:`ridge`'s.

    Example:
        >>> import torch
        >>> from headkit.analyses.estimators import shapley
        >>> w = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
        >>> v = lambda m: (m.double() * w).sum((1, 2)) + 3.0 * (m[:, 0, 0] & m[:, 0, 1])   # a pairwise synergy
        >>> shapley(v, 2, 2, permutations=2)["effect"].tolist()     # w + 3/2 to each of the pair
        [2.5, 3.5, 0.0, -1.0]
    """
    _check_level_lam(level, 0.0, "shapley")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1 or \
            (antithetic and permutations % 2):
        raise fail(f"shapley got permutations={permutations!r}", "a whole number >= 1 (even when antithetic)",
                   "pass permutations=16")
    h = n_layers * n_heads
    g = torch.Generator().manual_seed(seed)
    orders = []
    for _ in range(permutations // 2 if antithetic else permutations):
        order = torch.randperm(h, generator=g)
        orders += [order, order.flip(0)] if antithetic else [order]
    contributions = torch.zeros(len(orders), h, dtype=torch.float64)
    for n, order in enumerate(orders):
        nested = torch.zeros(h + 1, h, dtype=torch.bool)
        for step, head in enumerate(order.tolist()):
            nested[step + 1:, head] = True
        got = torch.as_tensor(value(nested.reshape(h + 1, n_layers, n_heads))).double().cpu().reshape(-1)
        if got.shape[0] != h + 1:
            raise fail(f"shapley's value function returned {describe(got)} for {h + 1} masks", "one value per mask",
                       "return a tensor [n_masks]")
        contributions[n, order] = got[1:] - got[:-1]
    per = contributions.reshape(-1, 2, h).mean(1) if antithetic else contributions
    effect = per.mean(0)
    se = per.std(0, unbiased=True) / math.sqrt(per.shape[0]) if per.shape[0] > 1 else torch.full((h,), float("nan"))
    return _table(effect, se, n_layers, n_heads, level)
