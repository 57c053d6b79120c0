"""Masked prompt-evaluations per second: naive loop vs fused engine vs a plain forward of the same rows.

    python benchmarks/montecarlo_speed.py                                  # CPU: Pythia-160M, GPT-2 small shapes
    python benchmarks/montecarlo_speed.py --models gemma --masks 16
    python benchmarks/montecarlo_speed.py --device cuda --dtype bfloat16 --masks 2000
    python benchmarks/montecarlo_speed.py --device cuda --dtype bfloat16 --models pythia160m --study 10000

Per model, side by side in each round (interleaved, medians over ``--rounds``):

- ``naive loop``: seed 003's way, one forward pass of the whole prompt batch per mask, full logits, the
  ablated heads zeroed by a hook (``hk.zero_ablate`` through the transformers adapter), top-1 decision read
  at each prompt's last token;
- ``fused``: ``montecarlo.evaluate(..., metric="top1")``: many masks per pass, per-row gates, last-token
  logits only; timed at the masks-per-pass its throughput tuner settles on (tuned once before the rounds,
  with the same doubling rule evaluate uses);
- ``plain forward``: the same rows as the fused passes (prompt batch repeated), no hooks, last-token
  logits only: what the hardware does without any intervention.

A thin caller of ``headkit.bench`` (``headkit bench`` measures the same for any model or shape).
Models with random weights have the shapes of Pythia-160M (GPT-NeoX, 12 x 12 heads) and GPT-2 small
(12 x 12); speed does not depend on the weights. ``gemma`` is the real default model. Prompts: 57 random
token sequences of 12-16 tokens (the seed-003 copy prompts' lengths), left-padded. Both methods are checked
to give the same decisions.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from headkit import bench

NAMES = {"pythia160m": "pythia-160m", "gpt2": "gpt2-small", "gemma": None}  # None: the real default model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="pythia160m,gpt2")
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=57)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--study", type=int, default=0,
                        help="also time the whole stochastic-ablation study with this many masks per phase")
    args = parser.parse_args()
    import transformers

    cuda = args.device.startswith("cuda")
    print(f"# masked prompt-evaluations per second, {args.device}, {args.dtype}"
          + (", TF32 off" if cuda else f", {torch.get_num_threads()} CPU threads"))
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.rounds} interleaved rounds, medians")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| model | masks x prompts | naive loop (evals/s) | fused (evals/s) | plain forward (evals/s) "
          "| fused / naive | fused time / plain time | masks per pass |")
    print("|---|---|---|---|---|---|---|---|")
    studies = []
    for name in args.models.split(","):
        if name not in NAMES:
            raise SystemExit(f"unknown model {name!r}: use {', '.join(NAMES)}")
        result = bench.run(shape=NAMES[name], device=args.device, dtype=args.dtype, masks=args.masks,
                           prompts=args.prompts, rounds=args.rounds, study=args.study, overhead_rounds=0)
        t, rate = result.throughput, result.throughput["evals_per_s"]
        print(f"| {name} ({result.meta['n_layers']}x{result.meta['n_heads']}) | {args.masks} x {args.prompts} | {rate['naive']:.1f} "
              f"| {rate['fused']:.1f} | {rate['plain']:.1f} | {t['fused_over_naive']:.2f}x "
              f"| {t['fused_time_over_plain']:.2f}x | {t['masks_per_pass']} |", flush=True)
        if result.study:
            s = result.study
            studies.append(f"| {name} | 2 x {s['masks']} masks x {s['prompts']} prompts | {s['seconds']:.1f} "
                           f"| {s['evals_per_s']:.0f} | {s['masks_per_pass']} |")
    if studies:
        print("\nwhole study (`stochastic_ablation.study`, p_keep 0.3 / 0.85: evaluation, counts, regression with "
              "200 bootstrap refits per phase, validation), timed once after the rounds above:\n")
        print("| model | masks x prompts | seconds | evals/s during evaluation | masks per pass |")
        print("|---|---|---|---|---|")
        print("\n".join(studies))


if __name__ == "__main__":
    main()
