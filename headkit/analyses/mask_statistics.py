"""Statistics of evaluated head masks: streaming counts (importance, exclusion, effects, synergy) and regression.

Both take masks ``[n, layer, head]`` (1 = head kept) and their outcomes ``[n, prompt]``, as
:func:`headkit.analyses.montecarlo.evaluate` returns them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Float

__all__ = ["Counts", "design_matrix", "regression"]


class Counts:
    """Streaming counts of mask bits against outcomes, all by matrix products (no Python loops over heads).

    Feed it ``update(masks, outcomes)`` chunk by chunk (``masks [n, layer, head]``, 1 = kept; ``outcomes
    [n, prompt]``, 1 = success, or any value in [0, 1]); every (mask, prompt) pair is one record, as in
    seed 003. Holds, over all records: ``records``, ``successes``, per head ``kept`` and ``kept_success``,
    and per pair of heads ``pair_kept`` (M^T M) and ``pair_kept_success`` (M^T diag(s) M). float64.

    Example:
        >>> import torch
        >>> from headkit.analyses.mask_statistics import Counts
        >>> c = Counts(1, 2)
        >>> c.update(torch.tensor([[[1, 0]], [[1, 1]]]), torch.tensor([[1.0], [0.0]]))
        >>> c.kept.tolist(), c.kept_success.tolist()
        ([[2.0, 1.0]], [[1.0, 0.0]])
    """

    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.shape = (n_layers, n_heads)
        h = n_layers * n_heads
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.records, self.successes = 0.0, 0.0
        self._kept, self._kept_success = z(h), z(h)
        self.pair_kept, self.pair_kept_success = z(h, h), z(h, h)

    def update(self, masks: torch.Tensor, outcomes: torch.Tensor) -> None:
        """Add a chunk: ``masks [n, layer, head]`` and their ``outcomes [n, prompt]``."""
        if masks.ndim != 3 or tuple(masks.shape[1:]) != self.shape or outcomes.ndim != 2 or outcomes.shape[0] != masks.shape[0]:
            raise fail(
                f"Counts.update got masks {describe(masks)} and outcomes {describe(outcomes)}",
                f"masks [n, {self.shape[0]}, {self.shape[1]}] and outcomes [n, n_prompts]",
                "pass evaluate's masks and its result",
            )
        m = masks.reshape(masks.shape[0], -1).double()
        s = outcomes.double().sum(1)  # successes per mask (over prompts)
        n = float(outcomes.shape[1])
        self.records += n * m.shape[0]
        self.successes += float(s.sum())
        self._kept += n * m.sum(0)
        self._kept_success += s @ m
        self.pair_kept += n * (m.T @ m)
        self.pair_kept_success += (m * s[:, None]).T @ m

    @property
    def kept(self) -> Float[torch.Tensor, "layer head"]:
        """Records in which each head was kept."""
        return self._kept.reshape(self.shape)

    @property
    def kept_success(self) -> Float[torch.Tensor, "layer head"]:
        """Successful records in which each head was kept."""
        return self._kept_success.reshape(self.shape)

    def importance(self) -> Float[torch.Tensor, "layer head"]:
        """Seed 003's importance: share of head-kept events among successes, ``sum_s m_h / sum_h sum_s m_h``."""
        return (self._kept_success / self._kept_success.sum()).reshape(self.shape)

    def exclusion(self) -> Float[torch.Tensor, "layer head"]:
        """Seed 003's exclusion penalty: share of head-ablated events among failures."""
        ablated_failure = (self.records - self._kept) - (self.successes - self._kept_success)
        return (ablated_failure / ablated_failure.sum()).reshape(self.shape)

    def delta(self) -> Float[torch.Tensor, "layer head"]:
        """P(success | head kept) - P(success | head ablated), per head (NaN where a side was never seen)."""
        kept, ablated = self._kept, self.records - self._kept
        p_kept = self._kept_success / kept
        p_ablated = (self.successes - self._kept_success) / ablated
        return (p_kept - p_ablated).reshape(self.shape)

    def synergy(self) -> Float[torch.Tensor, "pair_i pair_j"]:
        """How much two heads' effects on success interact, for every pair: ``[n_layers * n_heads] x [...]``.

        For heads i and j (flat index ``layer * n_heads + head``), the records split into four cells by
        which of the two were kept; the interaction contrast is
        ``[P(S | i, j kept) - P(S | i kept, j ablated)] - [P(S | j kept, i ablated) - P(S | both ablated)]``:
        zero when the two heads' effects add up independently, positive when each helps more with the other
        kept (a chain: both needed), negative when either one suffices (redundancy). The other heads
        stay random, so each cell averages over them. NaN on the diagonal and where a cell has no records.

        Example:
            >>> import torch
            >>> from headkit.analyses.mask_statistics import Counts
            >>> m = torch.tensor([[[1, 1]], [[1, 0]], [[0, 1]], [[0, 0]]])
            >>> c = Counts(1, 2)
            >>> c.update(m, torch.tensor([[1.0], [0.0], [0.0], [0.0]]))   # success needs both heads
            >>> c.synergy()[0, 1].item()
            1.0
        """
        k, ks = self._kept, self._kept_success
        n11, s11 = self.pair_kept, self.pair_kept_success
        n10, s10 = k[:, None] - n11, ks[:, None] - s11
        n01, s01 = k[None, :] - n11, ks[None, :] - s11
        n00 = self.records - k[:, None] - k[None, :] + n11
        s00 = self.successes - ks[:, None] - ks[None, :] + s11
        out = (s11 / n11 + s00 / n00) - (s10 / n10 + s01 / n01)  # grouped so that (i, j) and (j, i) agree exactly
        return out.fill_diagonal_(float("nan"))


def design_matrix(masks: torch.Tensor, outcomes: torch.Tensor, owner: str) -> tuple[torch.Tensor, int, int]:
    """An intercept column and each mask's keep bits, ``[n_masks, 1 + layer * head]`` float64, with the shapes checked.

    Example:
        >>> import torch
        >>> from headkit.analyses.mask_statistics import design_matrix
        >>> x, n_layers, n_heads = design_matrix(torch.tensor([[[True, False]]]), torch.ones(1, 3), "fit")
        >>> x.tolist(), n_layers, n_heads
        ([[1.0, 1.0, 0.0]], 1, 2)
    """
    if masks.ndim != 3 or outcomes.ndim != 2 or masks.shape[0] != outcomes.shape[0]:
        raise fail(
            f"{owner} got masks {describe(masks)} and outcomes {describe(outcomes)}",
            "masks [n_masks, layer, head] and outcomes [n_masks, n_prompts]",
            "pass evaluate's masks and its result",
        )
    n, n_layers, n_heads = masks.shape
    x = torch.cat([torch.ones(n, 1, dtype=torch.float64), masks.reshape(n, -1).double().cpu()], 1)
    return x, n_layers, n_heads


def regression(
    masks: Bool[torch.Tensor, "mask layer head"],
    outcomes: Float[torch.Tensor, "mask prompt"],
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Any:
    """Each head's effect on the outcome by least squares on the mask bits, with bootstrap confidence intervals.

    Regresses each mask's mean outcome over prompts on its keep bits (plus an intercept): the coefficient
    of a head is the change in success rate when that head is kept, the other heads held as they are.
    Intervals are percentiles of ``n_boot`` bootstrap refits over masks (resampled with replacement).
    Returns a DataFrame indexed by (layer, head): ``effect``, ``low``, ``high``.

    Example:
        >>> import torch
        >>> from headkit.analyses.montecarlo import bernoulli
        >>> from headkit.analyses.mask_statistics import regression
        >>> m = bernoulli(400, 0.5, 1, 3, seed=0)
        >>> y = (0.2 + 0.6 * m[:, 0, 1].double())[:, None]
        >>> round(float(regression(m, y, n_boot=20).loc[(0, 1), "effect"]), 3)
        0.6
    """
    import pandas as pd

    x, n_layers, n_heads = design_matrix(masks, outcomes, "regression")
    n = x.shape[0]
    y = outcomes.double().mean(1).cpu()
    if n <= x.shape[1]:
        raise fail(
            f"regression got {n} masks for {x.shape[1] - 1} heads",
            f"more masks than heads + 1 (here > {x.shape[1]}); a few times more for useful intervals",
            "evaluate more masks",
        )

    def fit(w: torch.Tensor) -> torch.Tensor:
        xw = x * w[:, None]
        # SVD-based: the minimum-norm solution when a resample leaves a head always kept (rank-deficient), and
        # reproducible there (the default gelsy driver is not: it varied between identical calls)
        return torch.linalg.lstsq(xw.T @ x, xw.T @ y[:, None], driver="gelsd").solution[1:, 0]

    coef = fit(torch.ones(n, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    boots = torch.stack([
        fit(torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n).double()) for _ in range(n_boot)
    ]) if n_boot > 0 else coef[None]
    alpha = (1 - level) / 2
    low, high = torch.quantile(boots, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)
    index = pd.MultiIndex.from_product([range(n_layers), range(n_heads)], names=["layer", "head"])
    return pd.DataFrame({"effect": coef.numpy(), "low": low.numpy(), "high": high.numpy()}, index=index)
