"""The stochastic-ablation study (seed 003): which heads a task needs, read off thousands of random head masks.

Two phases of random keep/ablate masks, each head kept independently with probability ``p_keep``:

- *many ablated* (the seed keeps 30% of heads): the **importance** score of a head is its share of kept-head
  events among the successes, so heads that success needs stand out;
- *few ablated* (the seed keeps 85%): the **exclusion** penalty is a head's share of ablated-head events
  among the failures, so heads whose loss breaks the task stand out.

Outliers follow the seed's rule (above the 88th percentile of either score), and are checked by running the
model with only them kept and with only them ablated.

The study ranks heads by default by their **effect** on the target's margin (logit of the target minus the
best other logit): ridge regression of each mask's mean margin on its keep bits over the many-ablated
phase (:func:`headkit.analyses.estimators.ridge`, penalty by generalised cross-validation, with least
squares' intervals). It uses the masks the seed's phase evaluates anyway; against a 2,400-mask reference on
Gemma 3 270M it needed 2.9x fewer of the seed's i.i.d. p = 0.3 masks than the seed's importance for the same
agreement (the best pair measured, a balanced p = 0.5 design, 4.0x; benchmarks/results/estimator_efficiency.md). How far that ranking
can be trusted is :attr:`Study.trust` (split halves, :func:`headkit.analyses.estimators.stability`).
Beside it: the seed's scores, each phase's ``delta`` (success rate kept minus ablated) and least-squares
effect on success with bootstrap intervals, and the pairwise **synergy** (interaction contrast, see
:meth:`headkit.analyses.mask_statistics.Counts.synergy`).

``p_keep="auto"`` calibrates the two phases to 25% and 75% success, so neither score rests on a handful of
records. ``path=`` logs every outcome to disk (masks bit-packed); running the same call again resumes and
ends with the same scores.

    result = stochastic_ablation.study(model, n_masks=10_000)    # the seed-003 prompts by default
    result.top(10)                 # by effect on the margin; result.top(10, by="importance") for the seed's
    print(result.trust.summary())  # how far the ranking can be trusted
    result.plot("mc_out")

This module runs the study (:func:`study`, its settings :class:`StudyConfig`, the calibration of
``p_keep="auto"``, the outlier rule); what it returns, :class:`Study` with its :class:`Phase` records and
its reporting, is :mod:`headkit.analyses.study_results` (both re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headkit.analyses.estimators import balanced, ridge, stability
from headkit.analyses.mask_statistics import Counts, regression
from headkit.analyses.montecarlo import bernoulli, calibrate, evaluate, evaluate_chunks, masks_per_pass
from headkit.analyses.outcome_shards import run_phase
from headkit.analyses.study_results import PHASES, Phase, Study
from headkit.config import configure
from headkit.core.errors import fail
from headkit.core.heads import Heads
from headkit.shards import world

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jaxtyping import Bool, Float, Int

__all__ = ["study", "StudyConfig", "Study", "Phase", "outliers", "SEED_P_KEEP", "AUTO_SUCCESS"]


SEED_P_KEEP = (0.3, 0.85)
"""The seed's keep probabilities: phase "many ablated", phase "few ablated"."""
AUTO_SUCCESS = (0.25, 0.75)
"""Success rates ``p_keep="auto"`` calibrates the two phases to."""
DESIGNS = ("bernoulli", "balanced")
"""How a phase's masks are drawn: ``"bernoulli"`` (i.i.d., as the seed) or ``"balanced"`` (each head kept in
p_keep of every block of :data:`BLOCK` masks, :func:`headkit.analyses.estimators.balanced`)."""
BLOCK = 10
"""Masks per balanced block (as in the efficiency benchmark's balanced designs)."""
TRUST_TOP = 5
"""How many top heads :attr:`Study.trust` follows through its half-size fits."""


def outliers(
    importance: Float[torch.Tensor, "layer head"], exclusion: Float[torch.Tensor, "layer head"], *, percentile: float = 88.0
) -> Bool[torch.Tensor, "layer head"]:
    """The seed's outlier heads: importance or exclusion above its ``percentile``-th percentile over heads.

    Example:
        >>> import torch
        >>> from headkit.analyses.stochastic_ablation import outliers
        >>> imp = torch.arange(8.0).reshape(2, 4); exc = imp.flip(-1)
        >>> outliers(imp, exc, percentile=88).int().tolist()
        [[0, 0, 0, 0], [1, 0, 0, 1]]
    """
    def above(scores: torch.Tensor) -> torch.Tensor:
        flat = scores.double().flatten().numpy()
        distance = flat - flat.mean()  # as the seed (does not change the rule)
        return torch.from_numpy(distance > np.percentile(distance, percentile))

    return (above(importance) | above(exclusion)).reshape(importance.shape)


@dataclass(frozen=True)
class StudyConfig:
    """How :func:`study` samples and scores: seed 003's settings by default, checked when built.

    ``n_masks`` random masks per phase; ``p_keep`` the two phases' keep probabilities (many ablated, few
    ablated) or ``"auto"`` (calibrated to the ``success`` rates on ``calibration_masks`` extra masks);
    ``design`` how masks are drawn: ``"bernoulli"`` (default: i.i.d., the seed's) or ``"balanced"`` (every
    head kept in ``p_keep`` of each block of 10 masks, so no head is over- or under-sampled by chance; in the
    efficiency benchmark it helped at p_keep 0.5 and not at 0.3);
    ``seed`` of the masks; ``percentile`` of the outlier rule; ``n_boot`` bootstrap resamples of the
    success regressions, and random split halves for the ranking's trust (:attr:`Study.trust`).

    Example:
        >>> from headkit.analyses.stochastic_ablation import StudyConfig
        >>> StudyConfig(n_masks=500).n_masks, StudyConfig().p_keep
        (500, (0.3, 0.85))
        >>> try:
        ...     StudyConfig(percentile=100)
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        study got percentile=100
    """

    n_masks: int = 10_000
    p_keep: tuple[float, float] | str = SEED_P_KEEP
    design: str = "bernoulli"
    success: tuple[float, float] = AUTO_SUCCESS
    calibration_masks: int = 64
    seed: int = 0
    percentile: float = 88.0
    n_boot: int = 200

    def __post_init__(self) -> None:
        n_masks, percentile, n_boot, calibration_masks = self.n_masks, self.percentile, self.n_boot, self.calibration_masks
        if isinstance(n_masks, bool) or not isinstance(n_masks, int) or n_masks < 2:
            raise fail(f"study got n_masks={n_masks!r}", "n_masks >= 2 per phase (thousands for stable scores)",
                       "pass e.g. n_masks=10_000")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile < 100:
            raise fail(f"study got percentile={percentile!r}", "a percentile strictly between 0 and 100 (the seed: 88)",
                       "pass percentile=88")
        if self.p_keep == "auto" and (isinstance(calibration_masks, bool) or not isinstance(calibration_masks, int)
                                      or calibration_masks < 8):
            raise fail(f"study got calibration_masks={calibration_masks!r}",
                       "calibration_masks >= 8 (the logistic curve needs points; 64 by default)",
                       "pass calibration_masks=64")
        if self.design not in DESIGNS:
            raise fail(f"study got design={self.design!r}", f"one of {list(DESIGNS)}",
                       "pass design='bernoulli' (default: the seed's i.i.d. masks) or design='balanced'")
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
            raise fail(f"study got n_boot={n_boot!r}", "a number of bootstrap resamples (and trust splits) >= 0",
                       "pass n_boot=200")


def study(
    model: Any,
    prompts: Sequence[str] | Int[torch.Tensor, "prompt pos"] | None = None,
    targets: Sequence[str] | Int[torch.Tensor, " prompt"] | None = None,
    *,
    config: StudyConfig | None = None,
    tokenizer: Any = None,
    attention_mask: Int[torch.Tensor, "prompt pos"] | None = None,
    path: str | Path | None = None,
    rows_per_pass: int | None = None,
    progress: bool = True,
    **changes: Any,
) -> Study:
    """Run the stochastic-ablation study: ``n_masks`` random masks per phase, head effects, the seed's scores, outliers.

    ``prompts``/``targets`` default to the seed-003 copy prompts ("Tom eats apples. Tom eats" -> " apples");
    targets must be single tokens. Token ids work too (prompts left-padded, with ``attention_mask``).
    Prompts the full model gets wrong are dropped first (as the seed does).
    ``config`` (:class:`StudyConfig`, seed 003's by default; keyword ``changes`` replace its fields, e.g.
    ``n_masks=500``) says how many masks, which keep probabilities (``p_keep``: a pair, or ``"auto"``,
    calibrated by :func:`headkit.analyses.montecarlo.calibrate`), and how outliers and intervals are found.
    ``path`` keeps every outcome on disk; calling again with the same arguments resumes (or extends, with a
    larger ``n_masks``) and gives the same scores. ``scores`` (see :class:`Study`) leads with ``effect``
    (ridge on the margin, the default ranking), then ``ols`` and its interval (least squares); ``trust``
    says how far that ranking can be trusted (``n_boot`` split halves, whole blocks for ``design="balanced"``; None when
    ``n_boot < 2`` or there are fewer than 4 masks, or blocks, to split).

    On Gemma 3 270M (:func:`headkit.load_default`) the seed-003 prompts and ``n_masks=10_000`` are the study
    as published; the example runs a tiny model on three prompts.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit import stochastic_ablation
        >>> model, tok = hk.models.tiny("llama")   # 2 layers x 4 heads
        >>> prompts = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads"]
        >>> backend = hk.get_backend(model, tok)   # targets: the model's own answers, so no prompt is dropped
        >>> targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in prompts])
        >>> result = stochastic_ablation.study(model, prompts, targets, tokenizer=tok, n_masks=40, n_boot=20,
        ...                                    rows_per_pass=64, progress=False)
        >>> result.dropped, result.scores.shape, [name for name in result.phases]
        ([], (8, 17), ['many_ablated', 'few_ablated'])
        >>> list(result.scores.columns[:6]), result.trust.k, len(result.trust.rank_correlation)
        (['effect', 'ols', 'se', 'low', 'high', 'in_top5'], 5, 20)
        >>> [round(float(result.scores[name].sum()), 6) for name in ("importance", "exclusion")]   # shares of events
        [1.0, 1.0]
        >>> result.validation.loc["full model", ["correct", "prompts"]].tolist()   # right on every kept prompt
        [3, 3]
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from headkit.backend import get_backend
    from headkit.data import COPY_PROMPTS
    from headkit.prompts import left_padded, single_tokens

    backend = get_backend(model, tokenizer)
    n_layers, n_heads = backend.shape.n_layers, backend.shape.n_heads
    tok = tokenizer if tokenizer is not None else getattr(backend, "tokenizer", None)
    if prompts is None and targets is None:
        prompts, targets = [p for p, _ in COPY_PROMPTS], [a for _, a in COPY_PROMPTS]
    if prompts is None or targets is None or isinstance(prompts, str) or isinstance(targets, str):
        raise fail("study got prompts without targets (or one string)", "a list of prompts and one target per prompt",
                   "pass prompts=[...] and targets=[...], or neither for the seed-003 copy prompts")
    how = configure(StudyConfig, config, changes, "study")
    n_masks, seed = how.n_masks, how.seed
    if isinstance(prompts, torch.Tensor):
        ids, attn = left_padded(prompts, attention_mask, tok)
        prompts = [tok.decode(row[mask.bool()]) if tok is not None else f"prompt {i}"
                   for i, (row, mask) in enumerate(zip(ids, attn))]
    else:
        prompts = list(prompts)
        ids, attn = left_padded(prompts, None, tok)
    target_ids = single_tokens(targets if isinstance(targets, torch.Tensor) else list(targets), "targets", prompts,
                            len(prompts), tok, backend.vocab_size)
    targets = [tok.decode([t]) if tok is not None else str(t) for t in target_ids.tolist()]

    # the full model must get a prompt right for ablations to say anything about it (as the seed)
    full = evaluate(backend, ids, target_ids, torch.ones(1, n_layers, n_heads), metric="margin", attention_mask=attn,
                    tokenizer=tok, progress=False)[0]
    solved = full > 0
    dropped = [p for p, ok in zip(prompts, solved.tolist()) if not ok]
    if not bool(solved.any()):
        raise fail(f"study: the full model gets none of the {len(prompts)} prompts right (top-1)",
                   "prompts the unablated model completes", "check the targets (leading spaces?) and the model")
    keep = solved.nonzero()[:, 0]
    ids, attn, target_ids = ids[keep], attn[keep], target_ids[keep]
    prompts, targets = [prompts[i] for i in keep], [targets[i] for i in keep]
    # trim columns that are padding in every kept prompt (left padding)
    first = int((attn.sum(0) > 0).nonzero()[0, 0])
    ids, attn = ids[:, first:], attn[:, first:]

    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise fail(f"study got path={str(path)!r}, which is a file", "a folder for the outcome log (created if missing)",
                   "pass a folder path, e.g. path='runs/copy'")
    common = {"model": type(model).__name__, "n_layers": n_layers, "n_heads": n_heads,
              "prompts": _digest(ids.tolist(), attn.tolist()), "targets": target_ids.tolist(), "seed": seed}
    root = Path(path) if path is not None else None
    p_pair = _p_keep(how, backend, (ids, target_ids, attn), tok, root, common, progress)

    phases: dict[str, Phase] = {}
    evaluations, seconds, largest = 0, 0.0, [0]
    here = world()
    block = masks_per_pass(rows_per_pass, len(prompts))
    for i, (name, p) in enumerate(zip(PHASES, p_pair)):
        masks = (balanced(n_masks, p, n_layers, n_heads, seed=2 * seed + i, block=BLOCK) if how.design == "balanced"
                 else bernoulli(n_masks, p, n_layers, n_heads, seed=2 * seed + i))
        chunks = evaluate_chunks(backend, ids, target_ids, masks[:1], metric="margin", attention_mask=attn,
                                 tokenizer=tok, rows_per_pass=rows_per_pass, progress=False)
        log = dict(n_layers=n_layers, n_heads=n_heads, n_prompts=len(prompts),
                   meta={**common, "phase": name, "p_keep": p, "metric": "margin",
                         # logs written before designs existed hold i.i.d. masks and no "design": they still resume
                         **({"design": how.design} if how.design != "bernoulli" else {})})
        started = time.perf_counter()
        rank = f", rank 0 of {here.size}" if here.size > 1 else ""
        with tqdm(desc=f"{name} (p_keep {p:.2f}{rank})", unit="mask", disable=not (progress and here.first)) as bar:
            def planned(mine: int, stored: int) -> None:  # this rank's masks, after those stored (one process)
                bar.reset(total=mine + (stored if here.size == 1 else 0))
                bar.update(stored if here.size == 1 else 0)

            def passed(m: int) -> None:
                bar.update(m)
                largest[0] = max(largest[0], m * len(prompts))

            margins, evaluated = run_phase(chunks.over, masks, root / name if root is not None else None, log,
                                           block=block, on_plan=planned, on_chunk=passed, here=here)
        seconds += time.perf_counter() - started
        evaluations += evaluated * len(prompts)
        counts = Counts(n_layers, n_heads)
        counts.update(masks, (margins > 0).double())
        phases[name] = Phase(name, p, masks, margins, counts)

    many, few = phases["many_ablated"], phases["few_ablated"]
    index = pd.MultiIndex.from_product([range(n_layers), range(n_heads)], names=["layer", "head"])
    # the default ranking: ridge on the margin of the many-ablated phase's masks, the best estimator measured on
    # the seed's own masks (benchmarks/results/estimator_efficiency.md), with no extra masks
    effects = ridge(many.masks, many.margins)
    scores = effects[["effect", "ols", "se", "low", "high"]].copy()
    trust = None
    unit = BLOCK if how.design == "balanced" else 1  # split balanced runs by whole blocks
    if how.n_boot >= 2 and -(-n_masks // unit) >= 4:
        trust = stability(many.masks, many.margins, k=min(TRUST_TOP, n_layers * n_heads), splits=how.n_boot,
                          block=unit, lam=effects.attrs["lam"], seed=seed)
        scores[f"in_top{trust.k}"] = trust.in_top.flatten().numpy()
    scores["importance"] = many.counts.importance().flatten().numpy()
    scores["exclusion"] = few.counts.exclusion().flatten().numpy()
    for short, phase in (("many", many), ("few", few)):
        scores[f"delta_{short}"] = phase.counts.delta().flatten().numpy()
        if n_masks > n_layers * n_heads + 1:  # least squares needs more masks than heads + intercept
            fit = regression(phase.masks, phase.success.double(), n_boot=how.n_boot, seed=seed)
        else:
            fit = pd.DataFrame({"effect": np.nan, "low": np.nan, "high": np.nan}, index=index)
        scores[f"effect_{short}"], scores[f"low_{short}"], scores[f"high_{short}"] = fit["effect"], fit["low"], fit["high"]
    chosen = outliers(many.counts.importance(), few.counts.exclusion(), percentile=how.percentile)
    scores["outlier"] = chosen.flatten().numpy()

    check = torch.stack([chosen, ~chosen, torch.ones_like(chosen)])
    correct = evaluate(backend, ids, target_ids, check, metric="margin", attention_mask=attn, tokenizer=tok,
                       progress=False).gt(0).sum(1)
    n_out, n_all = int(chosen.sum()), n_layers * n_heads
    validation = pd.DataFrame({
        "heads_used": [n_out, n_all - n_out, n_all],
        "correct": correct.tolist(),
        "prompts": [len(prompts)] * 3,
    }, index=pd.Index(["outliers kept only", "outliers ablated", "full model"], name="model"))
    validation["rate"] = validation["correct"] / validation["prompts"]
    scores.attrs["lam"] = effects.attrs["lam"]
    return Study(prompts, targets, dropped, n_layers, n_heads, phases, scores, Heads(chosen), validation,
                 evaluations, seconds, {"path": str(root) if root else None, "rows_per_pass": largest[0],
                                        "ranks": here.size, "design": how.design}, trust)


def _p_keep(how: StudyConfig, backend: Any, task: tuple[torch.Tensor, torch.Tensor, torch.Tensor], tok: Any,
            root: Path | None, common: dict[str, Any], progress: bool) -> tuple[float, float]:
    """The two phases' keep probabilities: given, or calibrated (and remembered in the log folder)."""
    p_keep, success, calibration_masks, seed = how.p_keep, how.success, how.calibration_masks, how.seed
    ids, target_ids, attn = task
    if p_keep != "auto":
        try:
            pair = tuple(float(p) for p in p_keep)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2 or not all(0.0 < p <= 1.0 for p in pair):
            raise fail(f"study got p_keep={p_keep!r}", '(p_many_ablated, p_few_ablated) in (0, 1], or "auto"',
                       'pass p_keep=(0.3, 0.85) (the seed) or p_keep="auto"')
        return pair[0], pair[1]
    rates = tuple(float(s) for s in success)
    if len(rates) != 2 or not all(0.0 < s < 1.0 for s in rates):
        raise fail(f"study got success={success!r}", "two target success rates in (0, 1)", "pass success=(0.25, 0.75)")
    key = {**common, "success": list(rates), "calibration_masks": calibration_masks}
    remembered = root / "calibration.json" if root is not None else None
    if remembered is not None and remembered.exists():
        from headkit.analyses.outcome_log import read_json

        try:
            stored = read_json(remembered)
        except ValueError:  # damaged: it only caches a calibration, which is recomputed below
            stored = None
        if isinstance(stored, dict) and stored.get("inputs") == json.loads(json.dumps(key)):
            p = stored.get("p_keep")
            if isinstance(p, list) and len(p) == 2 and all(isinstance(x, float) and 0 < x <= 1 for x in p):
                return p[0], p[1]
    pair = calibrate(backend, ids, target_ids, success=rates, n_masks=calibration_masks, attention_mask=attn,
                     tokenizer=tok, seed=1000 + seed, progress=progress)
    if remembered is not None:
        from headkit.analyses.outcome_log import write_json_atomic

        remembered.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(remembered, {"inputs": key, "p_keep": list(pair)})
    return pair[0], pair[1]


def _digest(*values: Any) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]
