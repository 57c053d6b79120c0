"""Figures: layer x head maps and curves. Built on matplotlib's object API (no global pyplot state).

Every function returns the ``Figure`` and, given ``path``, also saves it (PNG by the file's suffix).
matplotlib comes with ``pip install "headkit[plot]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import fail

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float

__all__ = ["head_map", "head_maps", "role_maps", "ablation_curves", "receivers", "suppression", "importance_exclusion",
           "synergy", "counterfactual", "by_category"]


COLORS = {"facilitation": "tab:green", "irrelevance": "tab:blue", "interference": "tab:red"}


def _figure(n_panels: int, width: float, height: float) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise fail(
            "headkit.plots needs matplotlib, which is not installed",
            "matplotlib >= 3.7",
            'pip install "headkit[plot]"',
        ) from None
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _save(fig: Any, path: str | None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def _head_axes(ax: Any, n_layers: int, n_heads: int) -> None:
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 12)))


def head_map(
    values: Float[torch.Tensor, "layer head"],
    *,
    path: str | None = None,
    title: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """A layer x head heatmap of one value per head (layer 0 at the top).

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from headkit.plots import head_map
        >>> fig = head_map(torch.rand(4, 8), title="gates")
        >>> len(fig.axes), fig.axes[0].get_title(), fig.axes[0].images[0].get_array().shape   # map + colour bar
        (2, 'gates', (4, 8))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     _ = head_map(torch.rand(4, 8), path=f"{out}/gates.png")
        ...     Path(out, "gates.png").read_bytes()[1:4]   # the PNG signature
        b'PNG'
    """
    v = torch.as_tensor(values).detach().float().cpu()
    fig, (ax,) = _figure(1, max(3.0, 0.35 * v.shape[1] + 1.5), max(2.5, 0.25 * v.shape[0] + 1.0))
    image = ax.imshow(v.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    _head_axes(ax, *v.shape)
    ax.set_title(title)
    return _save(fig, path)


def role_maps(
    maps: dict[str, Float[torch.Tensor, "layer head 3"]], *, path: str | None = None, title: str = ""
) -> Any:
    """RGB head maps side by side (CHG Figure 3b: red = interference, green = facilitation).

    Example:
        >>> import torch
        >>> from headkit.plots import role_maps
        >>> fig = role_maps({"always": torch.rand(4, 8, 3), "sometimes": torch.rand(4, 8, 3)})
        >>> [ax.get_title() for ax in fig.axes], fig.axes[0].images[0].get_array().shape
        (['always', 'sometimes'], (4, 8, 3))
    """
    first = next(iter(maps.values()))
    n_layers, n_heads = first.shape[:2]
    fig, axes = _figure(len(maps), max(3.0, 0.35 * n_heads + 1.0), max(2.5, 0.25 * n_layers + 1.0))
    for ax, (name, rgb) in zip(axes, maps.items()):
        ax.imshow(rgb.detach().float().cpu().numpy(), aspect="auto", interpolation="nearest")
        _head_axes(ax, n_layers, n_heads)
        ax.set_title(name)
    fig.suptitle(f"{title}\nred: interference (1 - G+)   green: facilitation (G-)   black: irrelevant")
    return _save(fig, path)


def ablation_curves(curves: pd.DataFrame, *, path: str | None = None, title: str = "") -> Any:
    """CHG Figure 2: change in target log-probability as the top-k heads of each score are ablated.

    ``curves`` is :func:`headkit.analyses.gating.ablation_curves`' DataFrame; the line is the mean over seeds and
    the band spans the seeds' minimum and maximum.

    Example:
        >>> import pandas as pd
        >>> from headkit.plots import ablation_curves
        >>> df = pd.DataFrame({"seed": [0, 0, 1, 1] * 2, "score": ["facilitation"] * 4 + ["interference"] * 4,
        ...                    "k": [1, 2] * 4, "delta": [-0.5, -1.0, -0.7, -1.2, 0.1, 0.3, 0.2, 0.2]})
        >>> ax = ablation_curves(df).axes[0]
        >>> ax.get_legend_handles_labels()[1], len(ax.collections)   # one band per score (two seeds)
        (['facilitation', 'interference'], 2)
        >>> [float(y) for y in ax.lines[0].get_ydata()]                 # facilitation: the mean over seeds
        [-0.6, -1.1]
    """
    fig, (ax,) = _figure(1, 6.0, 4.0)
    for name, group in curves.groupby("score", sort=False):
        stats = group.groupby("k")["delta"].agg(["mean", "min", "max"])
        color = COLORS.get(str(name))
        ax.plot(stats.index, stats["mean"], label=str(name), color=color)
        if group["seed"].nunique() > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("number of heads set to 0 vs 1 (in descending score order, from G+)")
    ax.set_ylabel("delta log-prob of target (per token)")
    ax.legend(title="score")
    ax.set_title(title)
    return _save(fig, path)


def receivers(scan: Any, *, path: str | None = None, trace: int = 0, k: int = 20) -> Any:
    """Receiver heads at a glance: kurtosis by layer (left), one trace's receiver score per sentence (right).

    Left: one dot per head (mean kurtosis over traces), the top-``k`` receiver heads in red (layer 0 is
    never one). Right: the mean vertical score over those heads for each sentence of trace ``trace``.
    ``scan`` is what :func:`headkit.analyses.receivers.scan` returns.

    Example:
        >>> import headkit as hk
        >>> from headkit.plots import receivers
        >>> model, tok = hk.models.tiny("gpt2")
        >>> text = " ".join(f"the {w} eats apples ." for w in ["cat", "dog", "boy", "girl", "man", "chef", "team", "bird"])
        >>> scan = hk.receivers.scan(model, [hk.sentences.locate(tok, text)], proximity_ignore=1, progress=False)
        >>> fig = receivers(scan, k=3)
        >>> [ax.get_title() for ax in fig.axes], len(fig.axes[1].patches)   # one bar per sentence
        (['1 trace(s); red: top 3 receiver heads', 'trace 0: receiver scores per sentence'], 8)
    """
    kurt = scan.kurtosis.double().mean(0)  # [layer, head]
    n_layers, n_heads = kurt.shape
    k = min(k, int(torch.isfinite(kurt[1:]).sum()))
    top = set(scan.top_heads(k))
    fig, (left, right) = _figure(2, 5.5, 3.8)
    for layer in range(n_layers):
        for head in range(n_heads):
            value = float(kurt[layer, head])
            if value == value:  # not NaN
                hit = (layer, head) in top
                left.scatter(layer, value, s=18 if hit else 10, color="tab:red" if hit else "0.55", zorder=3 if hit else 2)
    left.set_xticks(range(0, n_layers, max(1, n_layers // 12)))
    left.set_xlabel("layer")
    left.set_ylabel("kurtosis of vertical scores (mean over traces)")
    left.set_title(f"{len(scan.kurtosis)} trace(s); red: top {k} receiver heads")
    table = scan.scores(trace, k)
    right.bar(table.index, table["score"], color="indianred")
    right.axhline(float(table["score"].mean()), color="0.2", ls="--", lw=0.8)
    right.set_xlim(-0.6, len(table) - 0.4)  # sentences without a vertical score (the last p) stay visible as gaps
    right.set_xlabel("sentence")
    right.set_ylabel("receiver score (mean vertical score)")
    right.set_title(f"trace {trace}: receiver scores per sentence")
    return _save(fig, path)


def suppression(result: Any, *, path: str | None = None, centre: bool = True, title: str = "") -> Any:
    """Sentence-suppression heatmap (Thought Anchors Figure 6): row = affected sentence, column = suppressed.

    The upper triangle and the diagonal are blank; with ``centre`` each row's mean is subtracted, so
    columns that stand out down many rows are sentences that steer much of what follows. Colour limits
    are the 2nd and 99.8th percentiles of the shown cells. ``result`` is a
    :class:`headkit.analyses.suppression.Suppression`.

    Example:
        >>> import headkit as hk
        >>> from headkit.plots import suppression
        >>> model, tok = hk.models.tiny("gpt2")
        >>> sentences = hk.sentences.locate(tok, "the cat eats . the dog eats . Tom reads books .")
        >>> fig = suppression(hk.suppression.kl_matrix(model, sentences, progress=False))
        >>> fig.axes[0].get_title(), fig.axes[0].images[0].get_array().shape
        ('attention to sentence j suppressed in 8 heads', (3, 3))
    """
    m = result.centred() if centre else result.matrix.clone()
    m[torch.ones_like(m, dtype=torch.bool).triu()] = torch.nan
    shown = m[torch.isfinite(m)]
    lo, hi = (torch.quantile(shown, torch.tensor([0.02, 0.998], dtype=shown.dtype)).tolist() if shown.numel() else (0, 1))
    n = m.shape[0]
    size = min(9.0, 3.0 + 0.08 * n)
    fig, (ax,) = _figure(1, size + 1.2, size)
    cmap = "RdBu_r" if centre else "Reds"
    if centre:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    image = ax.imshow(m.numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    kind = "log(KL + 1e-9)" if result.log else "KL (nats)"
    fig.colorbar(image, ax=ax, label=f"mean {kind}" + (", row-centred" if centre else ""))
    ax.set_xlabel("suppressed sentence j")
    ax.set_ylabel("affected sentence i")
    ax.set_title(title or f"attention to sentence j suppressed in {len(result.heads)} heads")
    return _save(fig, path)


def head_maps(
    maps: dict[str, Float[torch.Tensor, "layer head"]],
    *,
    cmaps: Sequence[str] | None = None,
    centre: Sequence[bool] | None = None,
    path: str | None = None,
    title: str = "",
) -> Any:
    """Several layer x head heatmaps side by side, one per named map (``centre``: colour limits symmetric about 0).

    Example:
        >>> import torch
        >>> from headkit.plots import head_maps
        >>> maps = {"a": torch.arange(4.0).reshape(2, 2), "b": torch.tensor([[-1.0, 3.0], [0.5, 2.0]])}
        >>> fig = head_maps(maps, centre=[False, True])
        >>> len(fig.axes), [ax.images[0].get_clim() for ax in fig.axes[:2]]   # 2 maps + 2 colour bars; b centred
        (4, [(0.0, 3.0), (-3.0, 3.0)])
    """
    first = next(iter(maps.values()))
    n_layers, n_heads = first.shape
    fig, axes = _figure(len(maps), max(2.6, 0.35 * n_heads + 1.6), max(2.5, 0.25 * n_layers + 1.2))
    for i, (ax, (name, values)) in enumerate(zip(axes, maps.items())):
        v = torch.as_tensor(values).detach().double().cpu()
        symmetric = bool(centre[i]) if centre is not None else False
        limit = float(v[torch.isfinite(v)].abs().max()) if symmetric and torch.isfinite(v).any() else None
        image = ax.imshow(v.numpy(), cmap=cmaps[i] if cmaps else "viridis", aspect="auto", interpolation="nearest",
                          vmin=-limit if limit else None, vmax=limit)
        fig.colorbar(image, ax=ax)
        _head_axes(ax, n_layers, n_heads)
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def importance_exclusion(scores: pd.DataFrame, *, path: str | None = None) -> Any:
    """Seed 003's scatter: importance vs exclusion per head, outliers in red and labelled "LxHy".

    ``scores`` is :attr:`headkit.analyses.stochastic_ablation.Study.scores` (columns importance, exclusion, outlier).

    Example:
        >>> import pandas as pd
        >>> from headkit.plots import importance_exclusion
        >>> index = pd.MultiIndex.from_product([range(2), range(2)], names=["layer", "head"])
        >>> scores = pd.DataFrame({"importance": [0.1, 0.5, 0.2, 0.2], "exclusion": [0.2, 0.5, 0.1, 0.2],
        ...                        "outlier": [False, True, False, False]}, index=index)
        >>> ax = importance_exclusion(scores).axes[0]
        >>> ax.get_title(), [label.get_text() for label in ax.texts]
        ('1 outlier heads (red) of 4', ['L0H1'])
    """
    fig, (ax,) = _figure(1, 6.5, 5.0)
    out = scores["outlier"].astype(bool)
    ax.scatter(scores["importance"][~out], scores["exclusion"][~out], s=14, color="0.55")
    ax.scatter(scores["importance"][out], scores["exclusion"][out], s=30, color="tab:red")
    for (layer, head), row in scores[out].iterrows():
        ax.annotate(f"L{layer}H{head}", (row["importance"], row["exclusion"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("importance (share of kept heads among successes)")
    ax.set_ylabel("exclusion (share of ablated heads among failures)")
    ax.set_title(f"{int(out.sum())} outlier heads (red) of {len(scores)}")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def synergy(
    matrix: Float[torch.Tensor, "pair_i pair_j"], n_heads: int, *, path: str | None = None, title: str = ""
) -> Any:
    """The pairwise synergy matrix (heads in layer-major order; red: synergy, blue: redundancy).

    Example:
        >>> import torch
        >>> from headkit.plots import synergy
        >>> fig = synergy(torch.randn(8, 8), n_heads=4)   # 2 layers x 4 heads
        >>> len(fig.axes), [label.get_text() for label in fig.axes[0].get_xticklabels()]
        (2, ['L0', 'L1'])
    """
    m = torch.as_tensor(matrix).detach().double().cpu()
    shown = m[torch.isfinite(m)]
    limit = float(torch.quantile(shown.abs(), 0.995)) if shown.numel() else 1.0
    size = min(10.0, 3.0 + 0.07 * m.shape[0])
    fig, (ax,) = _figure(1, size + 1.3, size)
    image = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="interaction contrast of P(success)")
    n_layers = m.shape[0] // n_heads
    step = max(1, n_layers // 12)
    ticks = [layer * n_heads for layer in range(0, n_layers, step)]
    for axis in (ax.set_xticks, ax.set_yticks):
        axis(ticks)
    ax.set_xticklabels([f"L{t // n_heads}" for t in ticks], fontsize=7)
    ax.set_yticklabels([f"L{t // n_heads}" for t in ticks], fontsize=7)
    ax.set_title(title or "synergy between heads", fontsize=9)
    return _save(fig, path)


def counterfactual(wide: pd.DataFrame, differences: pd.DataFrame, *, metric: str = "counterfactual importance",
                   path: str | None = None) -> Any:
    """Seed 000's figures: importance per sentence under each condition (left), none - ablated per sentence (right).

    ``wide`` has one row per sentence and one column per condition ("none" first); ``differences`` one column
    per ablated condition (:meth:`headkit.analyses.counterfactual.Counterfactual.differences`).

    Example:
        >>> import pandas as pd
        >>> from headkit.plots import counterfactual
        >>> wide = pd.DataFrame({"none": [0.5, 0.1], "random": [0.2, 0.3]})
        >>> fig = counterfactual(wide, wide[["random"]].rsub(wide["none"], axis=0))
        >>> [ax.get_title() for ax in fig.axes]
        ['importance per sentence', 'difference (no ablation - ablated)']
    """
    fig, (left, right) = _figure(2, 6.0, 3.8)
    color = {condition: f"C{n}" for n, condition in enumerate(wide.columns)}  # one color per condition, both panels
    for condition in wide.columns:
        left.plot(wide.index, wide[condition], marker="o", markersize=3, label=condition, color=color[condition])
    left.set_xlabel("sentence")
    left.set_ylabel(metric.replace("_", " "))
    left.set_title("importance per sentence")
    left.legend(fontsize=8)
    width = 0.8 / max(1, len(differences.columns))
    for n, condition in enumerate(differences.columns):
        right.bar(differences.index + n * width - 0.4 + width / 2, differences[condition], width=width, label=condition,
                  color=color.get(condition))
    right.axhline(0, color="0.3", linewidth=0.8)
    right.set_xlabel("sentence")
    right.set_ylabel("none - ablated (< 0: more important ablated)")
    right.set_title("difference (no ablation - ablated)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def by_category(table: pd.DataFrame, metric: str, conditions: Sequence[str], *, path: str | None = None) -> Any:
    """Box plots of a metric by sentence category, one panel per condition (seed 000's box plots).

    ``table`` has columns ``category``, ``condition`` and ``metric`` (one row per sentence and condition).

    Example:
        >>> import pandas as pd
        >>> from headkit.plots import by_category
        >>> t = pd.DataFrame({"category": ["plan", "compute"] * 2, "condition": ["none"] * 2 + ["random"] * 2,
        ...                   "cf": [0.5, 0.1, 0.2, 0.3]})
        >>> [ax.get_title() for ax in by_category(t, "cf", ["none", "random"]).axes]
        ['none', 'random']
    """
    categories = sorted(table["category"].unique())
    fig, axes = _figure(len(conditions), max(3.0, 0.5 * len(categories) + 1.2), 4.2)
    low, high = table[metric].min(), table[metric].max()
    pad = 0.05 * (high - low or 1.0)
    for ax, condition in zip(axes, conditions):
        part = table[table["condition"] == condition]
        ax.boxplot([part.loc[part["category"] == c, metric].to_numpy() for c in categories])
        ax.set_xticks(range(1, len(categories) + 1), categories)  # (boxplot's label keyword was renamed in 3.9)
        ax.set_title(condition)
        ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel(metric.replace("_", " "))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
