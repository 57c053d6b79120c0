"""The results of the stochastic-ablation study (seed 003): each phase's masks and outcomes, and the scores.

    Phase   one phase's masks, margins and streaming counts; its success rate
    Study   what :func:`headkit.analyses.stochastic_ablation.study` returns: scores, outliers, validation,
            synergy; it reports itself (``top``, ``summary()``, ``save(folder)``, ``plot(folder)``)

Running the study (its settings, the keep-probability calibration, the outcome log) is
:mod:`headkit.analyses.stochastic_ablation`, which re-exports both classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.analyses.mask_statistics import Counts
from headkit.core.errors import fail
from headkit.core.heads import Heads

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Bool, Float

    from headkit.analyses.estimators import Stability

__all__ = ["Study", "Phase", "PHASES"]


PHASES = ("many_ablated", "few_ablated")
"""The study's two phases, in order: many heads ablated (importance), few ablated (exclusion)."""


@dataclass
class Phase:
    """One phase's masks and outcomes: ``margins`` is logit(target) - the best other logit (> 0: success)."""

    name: str
    p_keep: float
    masks: Bool[torch.Tensor, "mask layer head"]
    margins: Float[torch.Tensor, "mask prompt"]
    counts: Counts

    @property
    def success(self) -> Bool[torch.Tensor, "mask prompt"]:
        """Top-1 success of each (mask, prompt) record."""
        return self.margins > 0

    @property
    def success_rate(self) -> float:
        """Share of successful records."""
        return float(self.success.float().mean())


@dataclass
class Study:
    """What :func:`~headkit.analyses.stochastic_ablation.study` found. ``scores``: a DataFrame by (layer, head).

    Columns of ``scores``: ``effect`` (each head's effect on the mean margin, in logits, by ridge regression
    on the keep bits of the many-ablated phase: the default ranking; the penalty is in
    ``scores.attrs["lam"]``), ``ols``, ``se``, ``low``, ``high`` (the unshrunken least-squares effect, its
    standard error and 95% interval: ridge shrinks towards 0, so a large ridge effect can lie below ``low``;
    NaN without more masks than heads + 1), ``in_top5`` (the share of half-size fits in which the head is among
    the 5 largest effects, or among all of them in a model with fewer heads; absent without ``trust``),
    ``importance`` and ``exclusion`` (the seed's scores, each summing to 1), ``delta_many``/``delta_few``
    (P(success | head kept) - P(success | head ablated) in each phase), ``effect_many``/``low_many``/
    ``high_many`` and ``effect_few``/``low_few``/``high_few`` (each head's effect on the success rate by
    least squares on the mask bits, with a bootstrap interval; needs more masks than heads), ``outlier``
    (the seed's rule).
    ``validation``: success with only the outliers kept, with them ablated, and of the full model.
    ``trust``: how far the ``effect`` ranking can be trusted (:class:`~headkit.analyses.estimators.Stability`:
    the expected rank correlation with the ranking of unlimited masks, from split halves;
    ``trust.summary()`` says whether, and about how many, masks to add), or None when ``n_boot < 2`` or
    there are fewer than 4 masks (blocks) to split.
    """

    prompts: list[str]
    targets: list[str]
    dropped: list[str]
    n_layers: int
    n_heads: int
    phases: dict[str, Phase]
    scores: pd.DataFrame
    outliers: Heads
    validation: pd.DataFrame
    evaluations: int
    seconds: float
    log: dict[str, Any] = field(default_factory=dict)
    """``path`` (the outcome log folder or None), ``rows_per_pass`` (the largest forward pass this run, in masked
    prompts), ``ranks`` and ``design`` (how the masks were drawn)."""
    trust: Stability | None = None

    @property
    def throughput(self) -> float:
        """Masked prompt-evaluations per second in this run (resumed rows not counted)."""
        return self.evaluations / self.seconds if self.seconds > 0 else float("nan")

    def synergy(self, phase: str = "many_ablated") -> pd.DataFrame:
        """The pairwise interaction contrast of one phase, rows and columns indexed by (layer, head).

        Example:
            >>> import torch, headkit as hk
            >>> from headkit import stochastic_ablation
            >>> model, tok = hk.models.tiny("llama")   # 2 layers x 4 heads
            >>> prompts = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads"]
            >>> backend = hk.get_backend(model, tok)   # targets: the model's own answers, so no prompt is dropped
            >>> targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in prompts])
            >>> result = stochastic_ablation.study(model, prompts, targets, tokenizer=tok, n_masks=40, n_boot=20,
            ...                                    rows_per_pass=64, progress=False)
            >>> matrix = result.synergy("many_ablated")
            >>> matrix.shape, list(matrix.index.names), matrix.columns[-1]
            ((8, 8), ['layer', 'head'], (1, 3))
            >>> bool((matrix.fillna(0) == matrix.fillna(0).T).all().all())   # a pair's contrast either way round
            True
        """
        import pandas as pd

        if phase not in self.phases:
            raise fail(f"Study.synergy got phase {phase!r}", f"one of {list(self.phases)}", "pass phase='many_ablated'")
        index = pd.MultiIndex.from_product([range(self.n_layers), range(self.n_heads)], names=["layer", "head"])
        return pd.DataFrame(self.phases[phase].counts.synergy().numpy(), index=index, columns=index)

    def top(self, k: int = 10, by: str = "effect") -> pd.DataFrame:
        """The ``k`` heads with the largest ``by`` score (a column of ``scores``; default the effect on the margin).

        Example:
            >>> import torch, headkit as hk
            >>> from headkit import stochastic_ablation
            >>> model, tok = hk.models.tiny("llama")   # 2 layers x 4 heads
            >>> prompts = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads"]
            >>> backend = hk.get_backend(model, tok)   # targets: the model's own answers, so no prompt is dropped
            >>> targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in prompts])
            >>> result = stochastic_ablation.study(model, prompts, targets, tokenizer=tok, n_masks=40, n_boot=20,
            ...                                    rows_per_pass=64, progress=False)
            >>> top = result.top(3, by="effect_few")
            >>> len(top), top["effect_few"].is_monotonic_decreasing, top.index.equals(
            ...     result.scores["effect_few"].nlargest(3).index)
            (3, True, True)
        """
        if by not in self.scores.columns:
            raise fail(f"Study.top got by={by!r}", f"one of {list(self.scores.columns)}", "pass by='effect'")
        return self.scores.sort_values(by, ascending=False).head(k)

    def summary(self, k: int = 10, *, task: str = "copy task (seed 003)") -> str:
        """What the study found, as text: phases, the top ``k`` heads by effect with the ranking's trust, the top
        heads by each other score, outliers, pairs, throughput.

        ``task`` names the prompts in the first line.

        Example:
            >>> import torch, headkit as hk
            >>> from headkit import stochastic_ablation
            >>> model, tok = hk.models.tiny("llama")   # 2 layers x 4 heads
            >>> prompts = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads"]
            >>> backend = hk.get_backend(model, tok)   # targets: the model's own answers, so no prompt is dropped
            >>> targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in prompts])
            >>> result = stochastic_ablation.study(model, prompts, targets, tokenizer=tok, n_masks=40, n_boot=20,
            ...                                    rows_per_pass=64, progress=False)
            >>> lines = result.summary(3, task="three prompts").splitlines()
            >>> lines[1], lines[-1].split(" in ")[0]
            ('three prompts: the full model completes 3 of 3 prompts; those are used', 'throughput: 240 masked prompt-evaluations')
            >>> [line[:40] for line in lines if line.startswith("ranking trust")]
            ['ranking trust: expected rank correlation']
        """
        n = len(self.prompts)
        lines = [f"\n{task}: the full model completes {n} of {n + len(self.dropped)} prompts; those are used"]
        for phase in self.phases.values():
            lines.append(f"phase {phase.name:<13} p_keep {phase.p_keep:.3f}: success {100 * phase.success_rate:.1f}% of "
                         f"{len(phase.masks)} {self.log.get('design', 'random')} masks x {n} prompts")
        in_top = (f"; in_top = share of half-size fits with the head in the top {self.trust.k}"
                  if self.trust is not None else "")
        lines.append(f"\ntop {k} heads by effect on the mean margin (logits; ridge on the keep bits of the many-ablated "
                     "phase, shrunken towards 0);\nols = least squares' effect [95% interval], unbiased but noisier; "
                     "* = outlier" + in_top + ";\nimportance, exclusion = the seed's scores; delta = P(success | kept) "
                     "- P(success | ablated);\neffect_many/few = effect on success by least squares:")
        table = self.top(k, "effect")
        text = table[[]].copy()
        text["effect"] = [f"{e:+.3f}" if e == e else "-" for e in table["effect"]]  # NaN: the head never varied
        text["ols [95%]"] = [f"{o:+.2f} [{lo:+.2f}, {hi:+.2f}]" if o == o else "-"
                             for o, lo, hi in zip(table["ols"], table["low"], table["high"])]
        if self.trust is not None:
            text["in_top"] = [f"{100 * v:.0f}%" if v == v else "-" for v in table[f"in_top{self.trust.k}"]]
        for name in ("importance", "exclusion", "delta_many", "delta_few", "effect_many", "effect_few"):
            text[name] = table[name].round(3).to_numpy()
        text.index = [f"L{l}H{h}" + (" *" if o else "") for (l, h), o in zip(table.index, table["outlier"])]
        lines.append(text.to_string())
        lines.append(self.trust.summary() if self.trust is not None
                     else "ranking trust: not measured (n_boot < 2, or fewer than 4 masks or blocks to split)")
        for by in ("importance", "exclusion", "delta_many", "delta_few"):
            lines.append(f"top {k} by {by}{' (seed)' if by == 'importance' else ''}: "
                         + " ".join(f"L{l}H{h}" for l, h in self.top(k, by).index))
        lines.append(f"\noutlier heads (* above; importance or exclusion above the 88th percentile, as the seed): "
                     f"{len(self.outliers)}: {self.outliers}")
        lines.append(self.validation.to_string())
        syn = self.phases["many_ablated"].counts.synergy()
        flat = syn.nan_to_num(0.0).triu(1)
        h = self.n_heads
        lines.append("\nstrongest pairs (many-ablated phase; + synergy, - redundancy): " + ", ".join(
            f"L{i // h}H{i % h}+L{j // h}H{j % h} {syn[i, j]:+.3f}"
            for i, j in (divmod(int(q), syn.shape[0]) for q in flat.abs().flatten().topk(5).indices)))
        if self.evaluations:
            lines.append(f"\nthroughput: {self.evaluations:,} masked prompt-evaluations in {self.seconds:.1f} s = "
                         f"{self.throughput:,.0f} evaluations/s ({self.throughput / n:,.1f} masks/s; up to "
                         f"{self.log['rows_per_pass'] // n} masks = {self.log['rows_per_pass']} rows per forward pass)")
        else:
            lines.append("\nthroughput: nothing evaluated (every outcome read back from the log)")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``scores.csv``, ``synergy.csv``, ``validation.csv`` and the figures of :meth:`plot` into ``out_dir``.

        The folder is created if missing; returns the paths written (the outcome log is written by
        :func:`~headkit.analyses.stochastic_ablation.study`).

        Example:
            >>> import tempfile
            >>> import torch, headkit as hk
            >>> from headkit import stochastic_ablation
            >>> model, tok = hk.models.tiny("llama")   # 2 layers x 4 heads
            >>> prompts = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads"]
            >>> backend = hk.get_backend(model, tok)   # targets: the model's own answers, so no prompt is dropped
            >>> targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in prompts])
            >>> result = stochastic_ablation.study(model, prompts, targets, tokenizer=tok, n_masks=40, n_boot=20,
            ...                                    rows_per_pass=64, progress=False)
            >>> with tempfile.TemporaryDirectory() as out:
            ...     [path.name for path in result.save(out)]
            ['scores.csv', 'synergy.csv', 'validation.csv', 'scores.png', 'outliers.png', 'synergy.png']
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "scores.csv", out / "synergy.csv", out / "validation.csv"]
        self.scores.to_csv(paths[0])
        self.synergy().to_csv(paths[1])
        self.validation.to_csv(paths[2])
        return paths + self.plot(out)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Write the figures to ``out_dir``: score heatmaps (effect first), importance vs exclusion, synergy; returns the paths.

        Example:
            >>> import tempfile
            >>> import torch, headkit as hk
            >>> from headkit import stochastic_ablation
            >>> model, tok = hk.models.tiny("llama")   # 2 layers x 4 heads
            >>> prompts = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads"]
            >>> backend = hk.get_backend(model, tok)   # targets: the model's own answers, so no prompt is dropped
            >>> targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in prompts])
            >>> result = stochastic_ablation.study(model, prompts, targets, tokenizer=tok, n_masks=40, n_boot=20,
            ...                                    rows_per_pass=64, progress=False)
            >>> with tempfile.TemporaryDirectory() as out:
            ...     paths = result.plot(out)
            ...     [(path.name, path.stat().st_size > 0) for path in paths]
            [('scores.png', True), ('outliers.png', True), ('synergy.png', True)]
        """
        from headkit import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        shape = (self.n_layers, self.n_heads)
        col = lambda name: torch.tensor(self.scores[name].to_numpy()).reshape(shape)  # noqa: E731
        paths = [out / "scores.png", out / "outliers.png", out / "synergy.png"]
        p_many, p_few = (self.phases[name].p_keep for name in PHASES)
        plots.head_maps(
            {f"effect on the margin (ridge), p_keep {p_many:.2f}": col("effect"),
             "importance (seed)": col("importance"), "exclusion (seed)": col("exclusion"),
             f"effect on success, p_keep {p_many:.2f}": col("effect_many"),
             f"effect on success, p_keep {p_few:.2f}": col("effect_few")},
            cmaps=["RdBu_r", "Greens", "Reds", "RdBu_r", "RdBu_r"], centre=[True, False, False, True, True],
            path=str(paths[0]),
        )
        plots.importance_exclusion(self.scores, path=str(paths[1]))
        plots.synergy(self.phases["many_ablated"].counts.synergy(), self.n_heads, path=str(paths[2]),
                      title=f"synergy between heads, p_keep {p_many:.2f} (interaction contrast of success)")
        return paths
