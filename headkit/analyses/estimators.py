"""Head effects from fewer masks: variance-reducing mask designs and estimators that use every readout.

Designs (masks ``[n, layer, head]``, True = head kept), each with the marginal keep probability ``p_keep``:

- :func:`antithetic`: pairs of masks from one uniform draw ``u`` per head, kept where ``u < p`` and where
  ``1 - u < p`` (exact complements at ``p = 0.5``): each pair's bits are negatively correlated, so sums over
  a pair vary less;
- :func:`balanced`: every head kept in exactly ``round(p n)`` masks (a random permutation per head), so no
  head is over- or under-sampled by chance.

Estimators of each head's effect, with intervals:

- :func:`ridge`: least squares of a continuous readout (margin, log-prob: more information per pass than
  the success bit) on the keep bits, with an L2 penalty on the head coefficients and analytic intervals;
- :func:`logistic`: L2-penalised logistic regression of successes (binomial counts per mask), by
  Newton's method, intervals from the inverse Hessian;
- :func:`shapley`: Shapley values of a value function over heads by permutation sampling, with antithetic
  (reversed) permutations, which are exact for games with at most pairwise interactions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from headkit.analyses.mask_statistics import design_matrix
from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float

__all__ = ["antithetic", "balanced", "ridge", "logistic", "shapley"]


def _check_design(n: int, p_keep: float, owner: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise fail(f"{owner} got n={n!r}", "a whole number of masks >= 1", "pass e.g. n=200")
    if isinstance(p_keep, bool) or not isinstance(p_keep, (int, float)) or not 0 < p_keep < 1:
        raise fail(f"{owner} got p_keep={p_keep!r}", "a keep probability strictly between 0 and 1", "pass p_keep=0.5")


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


def balanced(n: int, p_keep: float, n_layers: int, n_heads: int, *, seed: int = 0) -> Bool[torch.Tensor, "n layer head"]:
    """``n`` masks in which every head is kept in exactly ``round(p_keep * n)`` of them, at random.

    Example:
        >>> from headkit.analyses.estimators import balanced
        >>> balanced(10, 0.3, 2, 2, seed=0).sum(0).tolist()
        [[3, 3], [3, 3]]
    """
    _check_design(n, p_keep, "balanced")
    g = torch.Generator().manual_seed(seed)
    kept = round(p_keep * n)
    column = torch.arange(n) < kept
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(n_layers * n_heads)], 1)
    return column[order].reshape(n, n_layers, n_heads)


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
    lam: float = 1.0,
    level: float = 0.95,
) -> Any:
    """Each head's effect on a continuous readout: ridge regression of the per-mask mean on the keep bits.

    Minimises ``|y - b0 - X b|^2 + lam |b|^2`` (the intercept is not penalised), ``y`` the mean outcome of
    each mask over prompts. Standard errors are ``sqrt(diag(A^-1 X'X A^-1) s^2)`` with ``A = X'X + lam D``
    and ``s^2`` the residual variance; intervals are normal at ``level``. Returns a DataFrame indexed by
    (layer, head): ``effect``, ``se``, ``low``, ``high``.

    Example:
        >>> import torch
        >>> from headkit.analyses.estimators import balanced, ridge
        >>> m = balanced(400, 0.5, 1, 3, seed=0)
        >>> y = (1.0 + 2.0 * m[:, 0, 1].double())[:, None]          # only L0H1 matters, by 2
        >>> ridge(m, y, lam=0.0).loc[(0, 1), "effect"].round(6)
        np.float64(2.0)
    """
    _check_level_lam(level, lam, "ridge")
    x, n_layers, n_heads = design_matrix(masks, outcomes, "ridge")
    y = outcomes.double().mean(1).cpu()
    n, k = x.shape
    if n <= k:
        raise fail(f"ridge got {n} masks for {k - 1} heads", f"more masks than heads + 1 (> {k})", "evaluate more masks")
    penalty = torch.eye(k, dtype=torch.float64) * lam
    penalty[0, 0] = 0.0
    a = x.T @ x + penalty
    coef = torch.linalg.solve(a, x.T @ y)
    residual = y - x @ coef
    dof = max(1.0, n - float(torch.trace(torch.linalg.solve(a, x.T @ x))))
    a_inv = torch.linalg.inv(a)
    cov = a_inv @ (x.T @ x) @ a_inv * float(residual @ residual) / dof
    return _table(coef[1:], cov.diagonal()[1:].clamp(min=0).sqrt(), n_layers, n_heads, level)


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
