"""Seed 000's study: does ablating the receiver heads change which sentences of a chain of thought matter?

Counterfactual importance (Thought Anchors' black-box method, :mod:`headkit.analyses.importance`) of every
sentence, from rollouts resampled under three conditions: no ablation, the top-k receiver heads ablated
(by kurtosis of their vertical attention scores on this chain of thought, :func:`headkit.receivers.scan`)
and k random heads ablated (seeded, drawn from the same layers). All rollouts of a prefix, across
conditions, share one batched generation (:mod:`headkit.analyses.resampling`); similarity of the resampled
sentence to the removed one is judged with a sentence-embedding model ("sent") and with the model's own
input embeddings ("llm"), as the seed compares both.

    result = counterfactual.study(model, tok, problem, "counterfactual_out", rollouts=12)
    result.table(); result.summary(); result.save("counterfactual_out")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from headkit.analyses.importance import METRICS, check_threshold, importance
from headkit.analyses.resampling import Problem, Record, generate
from headkit.analyses.rollouts import Sampling
from headkit.core.errors import fail

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["default_k", "choose_heads", "study", "Counterfactual"]


def default_k(n_layers: int, n_heads: int) -> int:
    """Heads per ablated set: the seed's 20, or its share of the heads (2 %, at least 1) on smaller models.

    The seed ablated 20 of Llama-8B's 1,024 heads (2 %); 20 of Gemma 3 270M's 72 would be 28 %.

    Example:
        >>> from headkit.analyses.counterfactual import default_k
        >>> default_k(32, 32), default_k(18, 4), default_k(2, 4)
        (20, 2, 1)
    """
    return max(1, min(20, math.ceil(0.02 * n_layers * n_heads)))


def choose_heads(model: Any, tokenizer: Any, problem: Problem, k: int, *, seed: int = 0,
                 proximity_ignore: int = 4) -> dict[str, list[tuple[int, int]]]:
    """The receiver heads (top ``k`` by kurtosis on the problem's chain of thought) and ``k`` random heads.

    Receivers exclude layer 0 (as Thought Anchors); the random heads are drawn without replacement from
    layers 1 and up with a seeded generator. ``proximity_ignore`` is lowered on short chains of thought so
    that at least 4 sentences keep a vertical score.

    Example:
        >>> import headkit as hk
        >>> from headkit.analyses.counterfactual import choose_heads
        >>> from headkit.analyses.resampling import Problem
        >>> model, tok = hk.models.tiny("llama")
        >>> words = ["cat", "dog", "boy", "girl", "man", "chef"]
        >>> problem = Problem("Q:", [f"the {w} eats apples ." for w in words], answer="1")
        >>> heads = choose_heads(model, tok, problem, 2)
        >>> len(heads["receivers"]), len(heads["random"]), all(layer >= 1 for layer, _ in heads["random"])
        (2, 2, True)
    """
    from headkit.analyses.receivers import scan
    from headkit.backend import get_backend
    from headkit.sentences import locate

    backend = get_backend(model, tokenizer)
    shape = backend.shape
    pool = [(layer, head) for layer in range(1 if shape.n_layers > 1 else 0, shape.n_layers)
            for head in range(shape.n_heads)]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(pool):
        raise fail(f"got k={k!r} heads to ablate", f"a whole number from 1 to {len(pool)} (the heads above layer 0)",
                   f"pass k={default_k(shape.n_layers, shape.n_heads)}")
    n = len(problem.sentences)
    if n < 4:
        raise fail(f"a chain of thought of {n} sentences", "at least 4 to rank receiver heads by kurtosis",
                   "pass the receiver heads yourself (conditions=...), or a longer chain of thought")
    trace = locate(backend.tokenizer, problem.prefix(n), list(problem.sentences))
    found = scan(backend, [trace], proximity_ignore=min(proximity_ignore, n - 4), progress=False)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k]
    return {"receivers": found.top_heads(k), "random": sorted(pool[int(i)] for i in order)}


class Counterfactual:
    """Importance of every sentence under every condition, for each embedding kind (what :func:`study` returns).

    ``rows`` are :func:`headkit.analyses.importance.importance` rows with an ``embedding`` key; ``heads`` the
    ablated heads per condition.

    Example:
        >>> from headkit.analyses.counterfactual import Counterfactual
        >>> from headkit.analyses.resampling import Problem
        >>> p = Problem("Q:", ["Plan it.", "Compute it."], answer="1", categories=["plan", "compute"])
        >>> rows = [{"condition": c, "embedding": "sent", "sentence": i, "counterfactual_importance_kl": v}
        ...         for c, i, v in [("none", 0, 0.5), ("none", 1, 0.1), ("random", 0, 0.2), ("random", 1, 0.3)]]
        >>> r = Counterfactual(p, rows, {"none": [], "random": [(1, 0)]})
        >>> r.differences()["random"].round(2).tolist()      # none - ablated, per sentence
        [0.3, -0.2]
    """

    def __init__(self, problem: Problem, rows: list[dict[str, Any]], heads: Mapping[str, Sequence[tuple[int, int]]],
                 records: list[Record] | None = None, metric: str = "counterfactual_importance_kl") -> None:
        if metric not in METRICS:
            raise fail(f"got metric {metric!r}", f"one of {list(METRICS)}", 'pass metric="counterfactual_importance_kl"')
        self.problem, self.rows, self.heads, self.records, self.metric = problem, rows, dict(heads), records or [], metric

    @property
    def conditions(self) -> list[str]:
        """The conditions, "none" first."""
        names = list(dict.fromkeys(r["condition"] for r in self.rows))
        return sorted(names, key=lambda c: (c != "none", names.index(c)))

    @property
    def embeddings(self) -> list[str]:
        """The embedding kinds the counterfactual metrics were computed with."""
        return list(dict.fromkeys(r["embedding"] for r in self.rows))

    def table(self) -> pd.DataFrame:
        """One row per (sentence, condition, embedding): the sentence, its category and every metric."""
        import pandas as pd

        df = pd.DataFrame(self.rows)
        df.insert(2, "text", [self.problem.sentences[i] for i in df["sentence"]])
        cats = self.problem.categories
        df.insert(3, "category", [cats[i] if cats else "" for i in df["sentence"]])
        return df.sort_values(["embedding", "condition", "sentence"], kind="stable").reset_index(drop=True)

    def wide(self, metric: str | None = None, embedding: str | None = None) -> pd.DataFrame:
        """One metric (default :attr:`metric`) per sentence (rows) and condition (columns), for one embedding."""
        table = self.table()
        kind = embedding or self.embeddings[0]
        got = table[table["embedding"] == kind].pivot(index="sentence", columns="condition", values=metric or self.metric)
        return got[self.conditions]

    def differences(self, metric: str | None = None, embedding: str | None = None) -> pd.DataFrame:
        """The seed's "Difference (Non Ablated - Ablated)": the no-ablation value minus each condition's, per sentence.

        Negative means the sentence became more important under ablation.
        """
        wide = self.wide(metric, embedding)
        return wide[[c for c in self.conditions if c != "none"]].rsub(wide["none"], axis=0)

    def changes(self, top: int = 5, metric: str | None = None, embedding: str | None = None) -> pd.DataFrame:
        """The sentences whose importance increased and decreased most under each ablation (the seed's lists)."""
        import pandas as pd

        diff = self.differences(metric, embedding)
        cats = self.problem.categories
        out = []
        for condition in diff.columns:
            change = -diff[condition]  # ablated - none: positive = more important after ablation
            for direction, picked in (("increase", change.nlargest(top)), ("decrease", change.nsmallest(top))):
                out += [{"condition": condition, "direction": direction, "sentence": i, "change": float(v),
                         "category": cats[i] if cats else "", "text": self.problem.sentences[i]}
                        for i, v in picked.items() if (v > 0) == (direction == "increase") and v != 0]
        return pd.DataFrame(out, columns=["condition", "direction", "sentence", "change", "category", "text"])

    def summary(self, top: int = 3) -> str:
        """Accuracy from the start, mean importance per condition (and per category) and the largest changes."""
        table = self.table()
        kind = self.embeddings[0]
        lines = [f"counterfactual importance ({self.metric}, {kind} embeddings) over {len(self.problem.sentences)} "
                 "sentences:"]
        for condition in self.conditions:
            part = table[(table["embedding"] == kind) & (table["condition"] == condition)]
            heads = self.heads.get(condition) or []
            named = " ".join(f"L{layer}H{head}" for layer, head in heads[:8]) + (" ..." if len(heads) > 8 else "")
            lines.append(f"  {condition:<10} accuracy from the start {part['accuracy'].iloc[0]:.2f}, mean importance "
                         f"{part[self.metric].mean():.3f}" + (f"  (ablating {len(heads)}: {named})" if heads else ""))
            if self.metric != "counterfactual_importance_accuracy":
                lines[-1] += f"; accuracy variant {part['counterfactual_importance_accuracy'].mean():+.3f}"
        start = table[(table["condition"] == "none") & (table["sentence"] == 0)]["accuracy"]
        if len(start) and not 0.2 < start.iloc[0] < 0.8:
            lines.append(f"  note: accuracy from the start is {start.iloc[0]:.2f}; near 0 or 1 no sentence can change "
                         "it much (pick a problem the model solves sometimes)")
        if self.problem.categories:
            by = table[table["embedding"] == kind].groupby(["category", "condition"])[self.metric].mean().unstack()
            lines.append("\nmean importance by category:")
            lines += ["  " + line for line in by[self.conditions].round(3).to_string().splitlines()]
        changes = self.changes(top)
        for _, row in changes.iterrows():
            lines.append(f"  {row['condition']}: largest {row['direction']} {row['change']:+.3f} at sentence "
                         f"{row['sentence']} [{row['category']}] {row['text'][:70]}")
        return "\n".join(lines)

    def plot(self, path: str | None = None, *, metric: str | None = None, embedding: str | None = None) -> Any:
        """Importance per sentence under each condition, and the none - ablated differences (the seed's figures)."""
        from headkit import plots

        return plots.counterfactual(self.wide(metric, embedding), self.differences(metric, embedding),
                                    metric=metric or self.metric, path=path)

    def plot_categories(self, path: str | None = None, *, metric: str | None = None, embedding: str | None = None) -> Any:
        """Box plots of importance by sentence category, one panel per condition (the seed's box plots)."""
        from headkit import plots

        table = self.table()
        kind = embedding or self.embeddings[0]
        return plots.by_category(table[table["embedding"] == kind], metric or self.metric, self.conditions, path=path)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``importance.csv`` (the table), ``differences.csv``, ``changes.csv`` and, per embedding,
        ``importance_<kind>.png`` and (with categories) ``categories_<kind>.png``; returns the paths."""
        import pandas as pd

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "importance.csv", out / "differences.csv", out / "changes.csv"]
        self.table().to_csv(paths[0], index=False)
        pd.concat([self.differences(embedding=k).assign(embedding=k) for k in self.embeddings]).to_csv(paths[1])
        pd.concat([self.changes(embedding=k).assign(embedding=k) for k in self.embeddings]).to_csv(paths[2], index=False)
        for kind in self.embeddings:
            paths.append(out / f"importance_{kind}.png")
            self.plot(str(paths[-1]), embedding=kind)
            if self.problem.categories:
                paths.append(out / f"categories_{kind}.png")
                self.plot_categories(str(paths[-1]), embedding=kind)
        return paths

    def __repr__(self) -> str:
        return (f"Counterfactual({len(self.problem.sentences)} sentences, conditions {self.conditions}, "
                f"embeddings {self.embeddings}, {len(self.records)} rollouts)")


def study(
    model: Any,
    tokenizer: Any,
    problem: Problem,
    folder: str | Path,
    *,
    rollouts: int = 12,
    k: int | None = None,
    conditions: Mapping[str, Any] | None = None,
    how: Sampling | None = None,
    seed: int = 0,
    threshold: float = 0.8,
    embeddings: Sequence[Literal["sent", "llm"]] = ("sent", "llm"),
    kl: Literal["answer", "correct"] = "answer",
    metric: str = "counterfactual_importance_kl",
    rows_per_call: int | None = None,
    progress: bool = True,
) -> Counterfactual:
    """Seed 000 end to end: choose the heads, resample every sentence under every condition, score importance.

    Conditions default to none / the top-``k`` receiver heads / ``k`` random heads (``k`` by
    :func:`default_k`); pass ``conditions`` (name -> heads, gate, interventions or None) to choose your own. Rollouts
    stream to ``folder`` and resume (:func:`headkit.analyses.resampling.generate`); ``embeddings`` picks
    the similarity judges ("sent": all-MiniLM-L6-v2, "llm": the model's input embeddings).

    Example:
        >>> import tempfile, torch, headkit as hk
        >>> from headkit.analyses import counterfactual
        >>> from headkit.analyses.resampling import Problem
        >>> from headkit.analyses.rollouts import Sampling
        >>> model, tok = hk.models.tiny("llama", dtype=torch.float64)
        >>> problem = Problem("Q:", [f"the {w} eats apples ." for w in ["cat", "dog", "boy", "girl"]], answer="1")
        >>> with tempfile.TemporaryDirectory() as out:
        ...     result = counterfactual.study(model, tok, problem, out, rollouts=2, k=1, embeddings=["llm"],
        ...                                   how=Sampling(max_new_tokens=3), progress=False)
        >>> result.conditions, result.wide().shape
        (['none', 'receivers', 'random'], (4, 3))
    """
    from headkit.analyses import embeddings as emb
    from headkit.backend import get_backend

    unknown = [kind for kind in embeddings if kind not in emb.KINDS]
    if not embeddings or unknown:
        raise fail(f"got embeddings {list(embeddings)}", f"some of {list(emb.KINDS)}", 'pass embeddings=("sent", "llm")')
    check_threshold(threshold)  # before any rollout is generated
    backend = get_backend(model, tokenizer)
    shape = backend.shape
    judges = {kind: emb.sentence_model() if kind == "sent" else emb.input_embeddings(backend.model, backend.tokenizer)
              for kind in embeddings}  # a missing embedding model is named before any rollout is generated
    if conditions is None:
        chosen = choose_heads(backend, tokenizer, problem, k if k is not None else default_k(shape.n_layers, shape.n_heads),
                              seed=seed)
        conditions = {"none": None, **chosen}
    from headkit.analyses.resampling import extra_interventions
    from headkit.core.heads import Heads

    extra = extra_interventions(conditions)
    heads = {name: list(Heads(value).pairs) if value is not None and not isinstance(value, torch.Tensor)
             and not extra[name] else [] for name, value in conditions.items()}
    records = generate(backend.model, backend.tokenizer, problem, conditions, folder, rollouts=rollouts, how=how,
                       seed=seed, rows_per_call=rows_per_call, progress=progress)
    rows = [{**row, "embedding": kind} for kind, judge in judges.items()
            for row in importance(records, judge, threshold=threshold, kl=kl)]
    return Counterfactual(problem, rows, heads, records, metric)
