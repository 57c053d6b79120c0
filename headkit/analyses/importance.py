"""Thought Anchors' black-box sentence importance, from resampled rollouts, as the authors define it.

The definitions follow ``analyze_rollouts.py`` of interp-reasoning/thought-anchors (its defaults:
answer-distribution KL without Laplace smoothing, similar rollouts pooled with the next prefix's in the
counterfactual KL, signed differences). For sentence ``i`` of one condition, with ``R_i`` the rollouts of
prefix ``i`` (sentence ``i`` removed and resampled) that state an answer and ``next`` the lowest prefix
above ``i`` that has rollouts:

- ``accuracy``: the fraction of ``R_i`` that is correct (0 when none states an answer);
- ``resampling_importance_accuracy``: ``accuracy(i + 1) - accuracy(i)`` (0 for the last sentence);
- ``resampling_importance_kl``: KL(answers of all rollouts of ``i`` || answers of ``next``);
- ``different_trajectories_fraction``: the share of ``R_i`` whose resampled sentence has cosine similarity
  below ``threshold`` (0.8) with the removed one ("dissimilar");
- ``overdeterminedness``: 1 - distinct resampled sentences / ``|R_i|`` (exact string match);
  like the authors, this and the previous fraction are 0 for the last sentence (there is no ``next``);
- ``counterfactual_importance_accuracy``: accuracy of the dissimilar rollouts - accuracy of ``R_next``
  (0 when there are no dissimilar rollouts);
- ``counterfactual_importance_kl``: KL(answers of dissimilar || answers of ``R_next`` and the similar rollouts).

KL is over the distribution of answer strings (stripped, lower-cased), ``p = (count + 1e-9) / (total + 1e-9 V)``
over the ``V`` answers seen in either set, clipped at 0; 0 when either set states no answer. With
``kl="correct"`` it is the authors' ``use_prob_true`` variant, the KL between the two Bernoulli
distributions of correctness.

A rollout "states an answer" when its answer is a non-empty string (the extractor returns None otherwise).
Differences from the authors' script, on purpose: their answer normalisation is LaTeX-specific (answers
here come from the problem's own ``extract`` and are only stripped and lower-cased for counting); they drop
chunks shorter than 4 characters before indexing, here every sentence the user gives is kept; and their
prefix removes the sentence with ``str.replace`` (every copy of it), here it is the exact text before it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from headkit.core.errors import fail

__all__ = ["METRICS", "kl_divergence", "check_threshold", "importance"]

METRICS = ("accuracy", "resampling_importance_accuracy", "resampling_importance_kl",
           "counterfactual_importance_accuracy", "counterfactual_importance_kl",
           "different_trajectories_fraction", "overdeterminedness")
"""The columns :func:`importance` computes for every sentence."""

_ALPHA = 1e-9


def _answered(record: Mapping[str, Any]) -> bool:
    answer = record.get("answer")
    return isinstance(answer, str) and answer.strip() != ""


def _bucket(answer: str) -> str:
    """The answer as KL counts it: stripped and lower-cased (the authors' normalize_answer, minus its LaTeX rules)."""
    return answer.strip().lower()


def kl_divergence(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]],
                  kl: Literal["answer", "correct"] = "answer") -> float:
    """KL(first || second) between two sets of rollouts' answers (or correctness), as Thought Anchors computes it.

    Example:
        >>> from headkit.analyses.importance import kl_divergence
        >>> a = [{"answer": "12", "correct": True}] * 3 + [{"answer": "9", "correct": False}]
        >>> b = [{"answer": "12", "correct": True}, {"answer": "9", "correct": False}]
        >>> round(kl_divergence(a, b), 6)                  # .75 log(.75/.5) + .25 log(.25/.5)
        0.130812
        >>> kl_divergence(a, a), kl_divergence(a, [])
        (0.0, 0.0)
    """
    if kl == "correct":
        n1, n2 = len(first), len(second)
        if not n1 or not n2:
            return 0.0
        p = (sum(bool(r["correct"]) for r in first) + _ALPHA) / (n1 + 2 * _ALPHA)
        q = (sum(bool(r["correct"]) for r in second) + _ALPHA) / (n2 + 2 * _ALPHA)
        return max(0.0, p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    if kl != "answer":
        raise fail(f"got kl={kl!r}", '"answer" (answer distributions) or "correct" (P(correct))', 'pass kl="answer"')
    c1 = Counter(_bucket(r["answer"]) for r in first if _answered(r))
    c2 = Counter(_bucket(r["answer"]) for r in second if _answered(r))
    if not c1 or not c2:
        return 0.0
    support = set(c1) | set(c2)
    t1, t2 = sum(c1.values()) + _ALPHA * len(support), sum(c2.values()) + _ALPHA * len(support)
    total = 0.0
    for answer in sorted(support):  # a fixed order: the same sum on every run
        p, q = (c1[answer] + _ALPHA) / t1, (c2[answer] + _ALPHA) / t2
        total += p * math.log(p / q)
    return max(0.0, total)


def _accuracy(records: Sequence[Mapping[str, Any]]) -> float:
    return sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_threshold(threshold: object) -> None:
    """Refuse a cosine-similarity threshold outside (0, 1).

    Example:
        >>> from headkit.analyses.importance import check_threshold
        >>> check_threshold(0.8) is None
        True
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise fail(f"got similarity threshold {threshold!r}", "a number strictly between 0 and 1",
                   "pass threshold=0.8 (Thought Anchors')")


def importance(
    records: Iterable[Mapping[str, Any]],
    embed: Callable[[list[str]], Mapping[str, np.ndarray]],
    *,
    threshold: float = 0.8,
    kl: Literal["answer", "correct"] = "answer",
) -> list[dict[str, Any]]:
    """Every metric of the module docstring for every (condition, sentence) the records cover.

    ``records`` are rollouts as :func:`headkit.analyses.resampling.generate` writes them (prefix, condition,
    removed, resampled, answer, correct). ``embed`` maps a list of distinct sentences to their vectors
    (:mod:`headkit.analyses.embeddings`); each distinct sentence is asked for once. Returns one dict per
    (condition, sentence) with ``condition``, ``sentence``, ``rollouts`` and the :data:`METRICS`.

    Example:
        >>> import numpy as np
        >>> from headkit.analyses.importance import importance
        >>> vec = {"a": np.array([1.0, 0]), "b": np.array([0, 1.0]), "c": np.array([1.0, 0.1])}
        >>> rec = lambda i, removed, resampled, ok: {"prefix": i, "condition": "none", "removed": removed,
        ...     "resampled": resampled, "answer": "1" if ok else "2", "correct": ok}
        >>> rows = importance([rec(0, "a", "b", False), rec(0, "a", "c", True), rec(1, "c", "c", True),
        ...                    rec(1, "c", "c", True)], lambda texts: {t: vec[t] for t in texts})
        >>> r = rows[0]
        >>> r["accuracy"], r["resampling_importance_accuracy"], r["counterfactual_importance_accuracy"]
        (0.5, 0.5, -1.0)
        >>> r["different_trajectories_fraction"], r["overdeterminedness"], rows[1]["resampling_importance_accuracy"]
        (0.5, 0.0, 0.0)
    """
    check_threshold(threshold)
    if kl not in ("answer", "correct"):
        raise fail(f"got kl={kl!r}", '"answer" (answer distributions) or "correct" (P(correct))', 'pass kl="answer"')
    by: dict[str, dict[int, list[Mapping[str, Any]]]] = {}
    for r in records:
        by.setdefault(r["condition"], {}).setdefault(int(r["prefix"]), []).append(r)
    texts = sorted({t for per in by.values() for rs in per.values() for r in rs if _answered(r)
                    for t in (r["removed"], r["resampled"])})
    vectors = embed(texts) if texts else {}
    rows = []
    for condition, per in by.items():
        answered = {i: [r for r in rs if _answered(r)] for i, rs in per.items()}
        accuracy = {i: _accuracy(rs) for i, rs in answered.items()}
        for i in sorted(per):
            later = [j for j in per if j > i]
            nxt = min(later) if later else None
            here = answered[i]
            similar, dissimilar = [], []
            for r in here:
                (dissimilar if _cosine(vectors[r["removed"]], vectors[r["resampled"]]) < threshold else similar).append(r)
            counted = here if nxt is not None else []  # the authors return 0 for both on the last sentence
            row = {"condition": condition, "sentence": i, "rollouts": len(per[i]), "accuracy": accuracy[i],
                   "resampling_importance_accuracy": accuracy[i + 1] - accuracy[i] if i + 1 in accuracy else 0.0,
                   "resampling_importance_kl": kl_divergence(per[i], per[nxt], kl) if nxt is not None else 0.0,
                   "different_trajectories_fraction": len(dissimilar) / len(counted) if counted else 0.0,
                   "overdeterminedness": 1 - len({r["resampled"] for r in counted}) / len(counted) if counted else 0.0}
            if dissimilar and nxt is not None and answered[nxt]:
                row["counterfactual_importance_accuracy"] = _accuracy(dissimilar) - accuracy[nxt]
                row["counterfactual_importance_kl"] = kl_divergence(dissimilar, answered[nxt] + similar, kl)
            else:
                row["counterfactual_importance_accuracy"] = row["counterfactual_importance_kl"] = 0.0
            rows.append(row)
    return rows
