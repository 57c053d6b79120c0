"""How many masks each head-score estimator needs before two independent runs agree on the top-k heads.

    python benchmarks/estimator_efficiency.py --masks 400 --cache /tmp/efficiency    # Gemma 3 270M, CPU ~35 min

Real model (Gemma 3 270M), the seed-003 copy prompts the full model completes, top-1 success (read off the
margin: logit(target) - best other logit > 0). One pool of ``--masks`` random masks per design, evaluated
with the fused engine and kept in an :class:`~headkit.analyses.outcome_log.OutcomeLog` under ``--cache`` (a killed
run resumes):

- ``seed p=0.30``: the seed's "many ablated" phase (importance);
- ``auto p=...``: the same phase with ``p_keep`` calibrated to 25% success (``montecarlo.calibrate``);
- ``seed p=0.85``: the seed's "few ablated" phase (exclusion; it already sits near 75% success).

Two independently seeded runs of N masks are two disjoint random subsets of a pool (masks are i.i.d.).
For each N, ``--splits`` random disjoint pairs give the mean overlap of the two runs' top-k heads
(|A & B| / k). "Masks needed" = the smallest N whose mean overlap reaches ``--agree``. Estimators:

- ``importance`` / ``exclusion``: seed 003's sum-normalised scores (importance on the low-p pools,
  exclusion on the high-p pool);
- ``kept - ablated``: P(success | head kept) - P(success | head ablated) (``Counts.effect``);
- ``regression``: least squares of each mask's success rate on its bits (``mask_statistics.regression``'s
  point estimate), defined from N > heads + 1 masks;
- ``regression (margin)``: the same on the mean margin, a continuous metric.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import headkit as hk
from headkit import montecarlo
from headkit.analyses import mask_statistics
from headkit.analyses.outcome_log import OutcomeLog
from headkit.prompts import copy_task


def scores_of(masks: torch.Tensor, success: torch.Tensor, margin: torch.Tensor, name: str) -> torch.Tensor:
    """One score per head (flat), larger = more important, from masks [n, L, H] and outcomes [n, P]."""
    if name in ("importance", "exclusion", "kept - ablated"):
        counts = mask_statistics.Counts(*masks.shape[1:])
        counts.update(masks, success.double())
        value = {"importance": counts.importance, "exclusion": counts.exclusion, "kept - ablated": counts.effect}[name]()
        return value.flatten()
    outcomes = success.double() if name == "regression" else margin.double()
    return torch.tensor(mask_statistics.regression(masks, outcomes, n_boot=0)["effect"].to_numpy())


def pool(model, task, p: float, n: int, seed: int, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    shape = hk.get_backend(model).shape
    masks = montecarlo.bernoulli(n, p, shape.n_layers, shape.n_heads, seed=seed)
    log = OutcomeLog(folder, n_layers=shape.n_layers, n_heads=shape.n_heads, n_prompts=len(task),
                     meta={"p_keep": p, "seed": seed, "metric": "margin", "prompts": list(task.texts)})
    done = min(len(log), n)
    if done < n:
        chunks = montecarlo.evaluate_chunks(model, task.left.input_ids, task.left.targets, masks[done:], metric="margin",
                                            attention_mask=task.left.attention_mask, rows_per_pass=len(task))
        for chunk in chunks:
            log.append(masks[done : done + chunk.shape[0]], chunk)
            done += chunk.shape[0]
    stored_masks, margins = log.read()
    assert torch.equal(stored_masks[:n], masks), "the log holds other masks"
    return masks, margins[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=400, help="masks per pool (runs of up to half of it)")
    parser.add_argument("--cache", default="efficiency_pools", help="folder for the outcome logs (resumable)")
    parser.add_argument("--k", type=int, default=8, help="top-k heads compared")
    parser.add_argument("--agree", type=float, default=0.8, help="mean top-k overlap that counts as agreement")
    parser.add_argument("--splits", type=int, default=200, help="random disjoint pairs of runs per N")
    parser.add_argument("--success", type=float, default=0.25, help="success rate the auto design calibrates to")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = hk.load_default()
    full = copy_task(tok)
    margin = montecarlo.evaluate(model, full.left.input_ids, full.left.targets, torch.ones(1, 18, 4), metric="margin",
                                 attention_mask=full.left.attention_mask, progress=False)[0]
    task = full.rows(margin > 0)
    cache = Path(args.cache)
    started = time.perf_counter()
    calib = cache / "calibrated_p.txt"
    if calib.exists():
        p_auto = float(calib.read_text())
    else:
        p_auto = montecarlo.calibrate(model, task.left.input_ids, task.left.targets, success=args.success, seed=0,
                                      attention_mask=task.left.attention_mask)
        cache.mkdir(parents=True, exist_ok=True)
        calib.write_text(repr(p_auto))
    designs = {"seed p=0.30": (0.3, 300), f"auto p={p_auto:.3f}": (p_auto, 500), "seed p=0.85": (0.85, 850)}
    pools = {name: pool(model, task, p, args.masks, seed, cache / f"p{p:.4f}_s{seed}")
             for name, (p, seed) in designs.items()}
    minutes = (time.perf_counter() - started) / 60

    estimators = {"seed p=0.30": ["importance", "kept - ablated", "regression", "regression (margin)"],
                  f"auto p={p_auto:.3f}": ["importance", "kept - ablated", "regression", "regression (margin)"],
                  "seed p=0.85": ["exclusion", "kept - ablated", "regression", "regression (margin)"]}
    grid = [n for n in (10, 20, 30, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400, 500) if 2 * n <= args.masks]
    ks = sorted({3, 5, args.k})
    n_heads = 18 * 4
    g = torch.Generator().manual_seed(1)
    lines = []

    def ranks(v: torch.Tensor) -> torch.Tensor:
        return v.argsort().argsort().double()

    for design, names in estimators.items():
        masks, margins = pools[design]
        success = margins > 0
        lines.append(f"\n### {design}: success rate {success.float().mean():.3f} over {len(masks)} masks x {len(task)} "
                     "prompts\n")
        lines.append("| estimator | agreement | " + " | ".join(f"N={n}" for n in grid) + " | masks needed |")
        lines.append("|---|---|" + "---|" * (len(grid) + 1))
        for name in names:
            rows = {f"top-{k}": [] for k in ks} | {"Spearman": []}
            for n in grid:
                if name.startswith("regression") and n <= n_heads + 1:
                    for row in rows.values():
                        row.append(float("nan"))
                    continue
                overlap = {k: 0.0 for k in ks}
                rho = 0.0
                for _ in range(args.splits):
                    perm = torch.randperm(len(masks), generator=g)
                    a, b = perm[:n], perm[n : 2 * n]
                    sa = scores_of(masks[a], success[a], margins[a], name).nan_to_num(-1e9)
                    sb = scores_of(masks[b], success[b], margins[b], name).nan_to_num(-1e9)
                    for k in ks:
                        overlap[k] += len(set(sa.topk(k).indices.tolist()) & set(sb.topk(k).indices.tolist())) / k
                    rho += float(torch.corrcoef(torch.stack([ranks(sa), ranks(sb)]))[0, 1])
                for k in ks:
                    rows[f"top-{k}"].append(overlap[k] / args.splits)
                rows["Spearman"].append(rho / args.splits)
            for label, row in rows.items():
                hit = next((n for n, v in zip(grid, row) if v == v and v >= args.agree), None)
                cells = " | ".join("-" if v != v else f"{v:.2f}" for v in row)
                lines.append(f"| {name} | {label} | {cells} | {hit if hit else f'> {grid[-1]}'} |")

    # the study at full pool size: the seed's design (importance at p=0.30, exclusion at p=0.85) and outliers
    from headkit.analyses.stochastic_ablation import outliers

    def counts(design):
        masks, margins = pools[design]
        c = mask_statistics.Counts(18, 4)
        c.update(masks, (margins > 0).double())
        return c

    name = lambda i: f"L{i // 4}H{i % 4}"  # noqa: E731
    study = ["", f"### The study on the whole pools ({args.masks} masks per design)", ""]
    for low in ("seed p=0.30", f"auto p={p_auto:.3f}"):
        importance, exclusion = counts(low).importance(), counts("seed p=0.85").exclusion()
        chosen = outliers(importance, exclusion)
        check = torch.stack([chosen, ~chosen, torch.ones_like(chosen)])
        correct = montecarlo.evaluate(model, task.left.input_ids, task.left.targets, check, attention_mask=task.left.attention_mask,
                                      progress=False).sum(1).int().tolist()
        study.append(f"- importance from `{low}`, exclusion from `seed p=0.85`: {int(chosen.sum())} outliers "
                     f"({hk.Heads(chosen)}); only they kept: {correct[0]}/{len(task)} correct; they ablated: "
                     f"{correct[1]}/{len(task)}; full model {correct[2]}/{len(task)}")
    for design in designs:
        masks, margins = pools[design]
        table = mask_statistics.regression(masks, (margins > 0).double(), n_boot=200, seed=0)
        top = table.sort_values("effect", ascending=False).head(args.k)
        study.append(f"- `{design}`, regression, top {args.k} effects on the success rate [95% bootstrap]: " + ", ".join(
            f"L{l}H{h} {r.effect:+.3f} [{r.low:+.3f}, {r.high:+.3f}]" for (l, h), r in top.iterrows()))
        syn = counts(design).synergy().nan_to_num(0.0).triu(1)
        pairs = [divmod(int(i), 72) for i in syn.abs().flatten().topk(4).indices]
        study.append("  strongest pairwise interactions (synergy +, redundancy -): "
                     + ", ".join(f"{name(i)}+{name(j)} {syn[i, j]:+.3f}" for i, j in pairs))
    lines += study

    header = [
        "# Estimator efficiency: masks until two independent runs agree on the top-k heads",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- model: {hk.models.DEFAULT_MODEL}, float32, CPU ({torch.get_num_threads()} threads, {platform.machine()}); "
        f"torch {torch.__version__}",
        f"- prompts: the seed-003 copy prompts the full model completes ({len(task)} of {len(full)})",
        f"- top-k overlap |A & B| / k (k = {', '.join(map(str, ks))}) and Spearman rank correlation of all 72 scores, "
        f"means over {args.splits} random disjoint pairs of runs of N masks drawn from one pool of {args.masks} masks "
        f"per design; masks needed = smallest N whose mean reaches {args.agree}; chance top-k overlap is k/72",
        f"- auto design: p_keep calibrated to success {args.success} -> {p_auto:.3f}",
        f"- pools evaluated (or read back) in {minutes:.1f} min",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)


if __name__ == "__main__":
    main()
