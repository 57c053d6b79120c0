"""The results of causal head gating: fitted gates and the roles they give each head (Nam et al. 2025).

    GateFit          G, G+ and G- per seed; facilitation, interference, irrelevance; taxonomy, prevalence, plots
    ContrastiveFit   gates fitted to retain one prompt variant and forget another

Each reports itself: ``summary()`` gives the text the ``headkit chg`` command prints,
``save(folder)`` writes its figures and CSV tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from headkit.core.errors import fail

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float

__all__ = ["GateFit", "ContrastiveFit", "SCORES"]


SCORES = ("facilitation", "irrelevance", "interference")
"""The three role scores, in the order of the paper's Figure 2."""


@dataclass(frozen=True)
class GateFit:
    """The fitted gates of one CHG run: ``G``, ``G+`` and ``G-`` for every seed, ``[seed, layer, head]``.

    Example:
        >>> import torch
        >>> from headkit.analyses.gate_fits import GateFit
        >>> g = torch.full((2, 1, 2), 0.5)
        >>> plus, minus = torch.tensor([[[1.0, 0.25]], [[1.0, 0.5]]]), torch.tensor([[[0.0, 0.25]], [[0.75, 0.0]]])
        >>> f = GateFit(G=g, G_plus=plus, G_minus=minus)
        >>> f.facilitation[:, 0, 0].tolist(), f.interference[0, 0].tolist()
        ([0.0, 0.75], [0.0, 0.75])
        >>> f.taxonomy().loc[(0, 1), "role"]
        'interfering'
    """

    G: Float[torch.Tensor, "seed layer head"]
    G_plus: Float[torch.Tensor, "seed layer head"]
    G_minus: Float[torch.Tensor, "seed layer head"]
    seeds: tuple[int, ...] = ()
    history: Any = None
    """A DataFrame with one row per (stage, step, seed, fit): the fit's mean target NLL at that step."""
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def facilitation(self) -> Float[torch.Tensor, "seed layer head"]:
        """``G-``: how much a head stays on under pressure to turn off."""
        return self.G_minus

    @property
    def interference(self) -> Float[torch.Tensor, "seed layer head"]:
        """``1 - G+``: how much a head turns off under pressure to stay on."""
        return 1 - self.G_plus

    @property
    def irrelevance(self) -> Float[torch.Tensor, "seed layer head"]:
        """``G+ * (1 - G-)``: how much a head follows the regulariser either way (Table 1 of the paper)."""
        return self.G_plus * (1 - self.G_minus)

    def scores(self) -> pd.DataFrame:
        """Every seed's gates and role scores, one row per (seed, layer, head).

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> f = GateFit(*(torch.rand(3, 2, 4) for _ in range(3)))
            >>> f.scores().shape
            (24, 6)
        """
        import pandas as pd

        n_seed, n_layer, n_head = self.G.shape
        index = pd.MultiIndex.from_product(
            [list(self.seeds) or list(range(n_seed)), range(n_layer), range(n_head)], names=["seed", "layer", "head"]
        )
        columns = {"G": self.G, "G+": self.G_plus, "G-": self.G_minus}
        columns.update({name: getattr(self, name) for name in SCORES})
        return pd.DataFrame({k: v.detach().flatten().cpu().numpy() for k, v in columns.items()}, index=index)

    def taxonomy(self, threshold: float = 0.5) -> pd.DataFrame:
        """Each head's role scores averaged over seeds, its role, and whether it has a role always or ever.

        ``role`` is the largest mean score. ``<score>_always`` is True when the score is at least
        ``threshold`` in every seed, ``<score>_any`` when it is in at least one (the paper's Table 2).

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> f = GateFit(*(torch.rand(3, 2, 4) for _ in range(3)))
            >>> list(f.taxonomy().columns)[:4]
            ['facilitation', 'irrelevance', 'interference', 'role']
        """
        import pandas as pd

        n_layer, n_head = self.G.shape[1:]
        index = pd.MultiIndex.from_product([range(n_layer), range(n_head)], names=["layer", "head"])
        stacked = torch.stack([getattr(self, name).detach().float().cpu() for name in SCORES])  # [3, seed, L, H]
        table = pd.DataFrame({name: stacked[i].mean(0).flatten().numpy() for i, name in enumerate(SCORES)}, index=index)
        roles = ("facilitating", "irrelevant", "interfering")
        table["role"] = [roles[i] for i in stacked.mean(1).flatten(1).argmax(0).tolist()]
        for i, name in enumerate(SCORES):
            table[f"{name}_always"] = (stacked[i] >= threshold).all(0).flatten().numpy()
            table[f"{name}_any"] = (stacked[i] >= threshold).any(0).flatten().numpy()
        return table

    def prevalence(self, threshold: float = 0.5) -> pd.DataFrame:
        """Percent of heads whose score is at least ``threshold`` in every seed (always) or some seed (any).

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> GateFit(*(torch.ones(1, 2, 2) for _ in range(3))).prevalence().loc["facilitation"].tolist()
            [100.0, 100.0]
        """
        import pandas as pd

        table = self.taxonomy(threshold)
        return pd.DataFrame(
            {agg: [100.0 * table[f"{name}_{agg}"].mean() for name in SCORES] for agg in ("always", "any")},
            index=pd.Index(SCORES, name="score"),
        )

    def summary(self, curves: pd.DataFrame | None = None) -> str:
        """The roles as text: the percent table of :meth:`summary`, the top heads per score, and Figure 2's check.

        ``curves`` is what :func:`headkit.analyses.gating.ablation_curves` returned for this fit (None: no
        Figure 2 check). This is the text ``headkit chg`` prints (:meth:`summary` is the paper's Table 2 as a table).

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> f = GateFit(*(torch.full((1, 1, 2), v) for v in (0.5, 1.0, 0.25)))
            >>> print(f.summary().splitlines()[-1])
            top interference  L0H0 0.00, L0H1 0.00
        """
        taxonomy = self.taxonomy()
        lines = ["\npercent of heads with score >= 0.5 in every seed (always) / in some seed (any):",
                 self.prevalence().round(1).to_string()]
        for name in SCORES:
            lines.append(f"top {name:<13} " + ", ".join(f"L{l}H{h} {v:.2f}" for (l, h), v in taxonomy[name].nlargest(5).items()))
        if curves is not None:
            mean = curves.groupby(["score", "k"])["delta"].mean().unstack("score")[list(SCORES)]
            lines += ["\nFigure 2 check: delta log p(target) per token when the top-k heads of each score are set to 0 vs 1",
                      "(expected: facilitation < 0, irrelevance ~ 0, interference > 0), mean over seeds:",
                      mean.round(3).to_string()]
        return "\n".join(lines)

    def save(self, folder: str | Path, *, curves: pd.DataFrame | None = None, task: str | None = None) -> list[Path]:
        """Write ``taxonomy.csv``, ``scores.csv`` and ``roles.png`` (Figure 3b) into ``folder``, created if missing.

        With ``curves`` (from :func:`headkit.analyses.gating.ablation_curves`) also ``ablation_curves.csv`` and
        ``ablation_curves.png`` (Figure 2). ``task`` goes into the figures' titles. Returns the paths written.

        Example:
            >>> import tempfile, torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> with tempfile.TemporaryDirectory() as out:
            ...     [p.name for p in GateFit(*(torch.rand(2, 2, 4) for _ in range(3))).save(out, task="copy")]
            ['taxonomy.csv', 'scores.csv', 'roles.png']
        """
        from headkit import plots

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "taxonomy.csv", out / "scores.csv", out / "roles.png"]
        self.taxonomy().to_csv(paths[0])
        self.scores().to_csv(paths[1])
        self.plot(str(paths[2]), title=f"CHG roles, {task} task" if task else "CHG roles")
        if curves is not None:
            paths += [out / "ablation_curves.csv", out / "ablation_curves.png"]
            curves.to_csv(paths[3], index=False)
            plots.ablation_curves(curves, path=str(paths[4]),
                                  title=f"Figure 2 check, {task} task" if task else "Figure 2 check")
        return paths

    def rgb(self, agg: Literal["always", "any", "mean"] = "always") -> Float[torch.Tensor, "layer head 3"]:
        """The paper's Figure 3b colours: red = interference, green = facilitation, black = irrelevant.

        ``always`` takes the minimum across seeds (consistent roles), ``any`` the maximum.

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> GateFit(*(torch.ones(2, 1, 1) for _ in range(3))).rgb()[0, 0].tolist()
            [0.0, 1.0, 0.0]
        """
        reduce = {"always": lambda t: t.amin(0), "any": lambda t: t.amax(0), "mean": lambda t: t.mean(0)}
        if agg not in reduce:
            raise fail(f"rgb got agg={agg!r}", '"always", "any" or "mean"', 'pass agg="always"')
        red, green = (reduce[agg](t.detach().float().cpu()) for t in (self.interference, self.facilitation))
        return torch.stack([red, green, torch.zeros_like(red)], -1).clamp(0, 1)

    def plot(self, path: str | None = None, title: str = "CHG roles") -> Any:
        """Figure 3b: the RGB head maps aggregated always and any; saved as PNG when ``path`` is given.

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import GateFit
            >>> fig = GateFit(*(torch.rand(3, 2, 4) for _ in range(3))).plot()
            >>> [axes.get_title() for axes in fig.axes]
            ['always', 'any']
        """
        from headkit import plots

        return plots.role_maps({agg: self.rgb(agg) for agg in ("always", "any")}, path=path, title=title)


@dataclass(frozen=True)
class ContrastiveFit:
    """Gates fitted to retain one prompt variant and forget another, ``[seed, layer, head]``.

    Heads with a low gate are needed by the forgotten variant and not by the retained one.

    Example:
        >>> import torch
        >>> from headkit.analyses.gate_fits import ContrastiveFit
        >>> ContrastiveFit(G=torch.tensor([[[0.75, 0.25]]])).table()["gate"].tolist()  # lowest first
        [0.25, 0.75]
    """

    G: Float[torch.Tensor, "seed layer head"]
    seeds: tuple[int, ...] = ()
    history: Any = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Each head's gate averaged over seeds and its spread, lowest gates first."""
        import pandas as pd

        g = self.G.detach().float().cpu()
        n_layer, n_head = g.shape[1:]
        index = pd.MultiIndex.from_product([range(n_layer), range(n_head)], names=["layer", "head"])
        table = pd.DataFrame(
            {"gate": g.mean(0).flatten().numpy(), "min": g.amin(0).flatten().numpy(), "max": g.amax(0).flatten().numpy()},
            index=index,
        )
        return table.sort_values("gate", kind="stable")

    def summary(self, logprobs: pd.DataFrame | None = None, k: int = 8) -> str:
        """The ``k`` heads turned off most, as text, after the variants' log-probabilities when ``logprobs`` is given.

        ``logprobs`` is what :func:`headkit.analyses.gating.variant_logprobs` returned for this fit: one row per
        prompt variant, the full model's mean log p(target) per token and each seed's under its gates.

        Example:
            >>> import torch
            >>> from headkit.analyses.gate_fits import ContrastiveFit
            >>> print(ContrastiveFit(G=torch.tensor([[[0.75, 0.25]]])).summary(k=1).splitlines()[-1])
            0     1     0.25  0.25  0.25
        """
        lines = []
        if logprobs is not None:
            lines.append("  mean log p(target) per token   full model   gated (per seed)")
            for name, row in logprobs.iterrows():
                lines.append(f"  {name:<28} {row['full']:>10.3f}   " + "  ".join(f"{x:.3f}" for x in row.iloc[1:]))
        lines += ["\nheads turned off most (lowest mean gate):", self.table().head(k).round(3).to_string()]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``contrastive.csv`` (:meth:`table`) and ``contrastive.png`` (:meth:`plot`) into ``folder``.

        The folder is created if missing; returns the paths written.

        Example:
            >>> import tempfile, torch
            >>> from headkit.analyses.gate_fits import ContrastiveFit
            >>> with tempfile.TemporaryDirectory() as out:
            ...     [p.name for p in ContrastiveFit(G=torch.rand(2, 2, 4)).save(out)]
            ['contrastive.csv', 'contrastive.png']
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "contrastive.csv", out / "contrastive.png"]
        self.table().to_csv(paths[0])
        self.plot(str(paths[1]))
        return paths

    def plot(self, path: str | None = None, title: str = "contrastive gates (mean over seeds)") -> Any:
        """A layer x head heatmap of the mean gate; saved as PNG when ``path`` is given."""
        from headkit import plots

        return plots.head_map(self.G.detach().float().mean(0).cpu(), path=path, title=title, vmin=0, vmax=1)


def _history_frame(history: list[tuple[str, int, int, str, float]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(history, columns=["stage", "step", "seed", "fit", "nll"])
