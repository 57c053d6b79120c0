"""Rollouts per second: every condition and rollout of a prefix in one batched generate call vs one rollout per call.

    python benchmarks/rollouts_speed.py --rollouts 12 --prefix 4 --rounds 3 --out benchmarks/results/rollouts_speed_cpu.md

Both runs generate the same rollouts of the built-in counterfactual problem (3 conditions: no ablation and
two fixed sets of 4 heads) with the same settings and random streams, through
``headkit.analyses.resampling.generate`` into a fresh folder each time; only ``rows_per_call`` differs (all
rows of the prefix vs 1). Rounds alternate the two (medians). The texts of the two runs are compared: each
row has its own random stream, so they agree up to float32 rounding differences between batch sizes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import headkit as hk
from headkit.analyses import resampling
from headkit.analyses.rollouts import Sampling
from headkit.bench import interleaved
from headkit.data import COUNTERFACTUAL_MAX_NEW_TOKENS, counterfactual_problem

CONDITIONS = {"none": None, "four": hk.Heads("L5H0 L9H1 L12H2 L15H3"), "other": hk.Heads("L3H1 L7H2 L11H0 L16H1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=12)
    parser.add_argument("--prefix", type=int, default=4, help="the prefix (sentence index) resampled")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="markdown results file")
    args = parser.parse_args()
    model, tok = hk.models.load_default()
    problem = counterfactual_problem()
    how = Sampling(max_new_tokens=COUNTERFACTUAL_MAX_NEW_TOKENS)
    rows = len(CONDITIONS) * args.rollouts

    def run(per_call: int | None):
        def go():
            with tempfile.TemporaryDirectory() as folder:
                return resampling.generate(model, tok, problem, CONDITIONS, folder, rollouts=args.rollouts, how=how,
                                           prefixes=[args.prefix], rows_per_call=per_call, progress=False)
        return go

    times, results = interleaved({"batched": run(None), "one per call": run(1)}, rounds=args.rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    same = sum(a["text"] == b["text"] for a, b in zip(results["batched"], results["one per call"]))
    tokens = [len(tok(r["text"], add_special_tokens=False).input_ids) for r in results["batched"]]
    lines = [
        "# Batched rollouts vs one rollout per generate call (issue 16's target: >= 5x)", "",
        f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads; float32",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {__import__('transformers').__version__}, headkit {hk.__version__}",
        f"- model: {hk.models.DEFAULT_MODEL}; the built-in counterfactual problem, prefix {args.prefix}; "
        f"{len(CONDITIONS)} conditions x {args.rollouts} rollouts = {rows} rollouts, temperature {how.temperature}, "
        f"top-p {how.top_p}, up to {how.max_new_tokens} new tokens (median {statistics.median(tokens):.0f} generated)",
        f"- command: `python {' '.join(sys.argv)}`", f"- {args.rounds} interleaved rounds, medians", "",
        "| run | seconds (median) | rollouts / s | all rounds (s) |", "|---|---:|---:|---|",
    ]
    for name, t in times.items():
        lines.append(f"| {name} | {med[name]:.1f} | {rows / med[name]:.2f} | {', '.join(f'{x:.1f}' for x in t)} |")
    ratio = med["one per call"] / med["batched"]
    lines += ["", f"Batched: **{ratio:.2f}x** the rollouts per second of one rollout per call "
              f"(target >= 5x: {'met' if ratio >= 5 else 'not met'}).",
              f"Texts identical between the two runs: {same} of {rows} (they may differ where float32 rounding changes with the batch size)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
