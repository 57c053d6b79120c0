"""Many CHG seeds in one batched run vs the same seeds one after another vs a single seed.

    python benchmarks/chg_seeds.py                                 # CPU: tiny Llama and Gemma 3 270M
    python benchmarks/chg_seeds.py --models gemma --device cuda --dtype bfloat16 --steps 20

Each round fits (a) one seed, (b) ``--seeds`` seeds in one batched run and (c) the same seeds one run
after another, all with the same recipe (``--steps`` for G, then ``--steps`` for G+ and G- together,
``--batch-size`` examples per seed and step) on the seed-003 copy prompts. Rounds are interleaved and
each figure is the median over rounds. The batched and sequential fits must give the same gates; the
script checks it and prints the largest difference.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import headkit as hk
from headkit import gating
from headkit.data import copy_pairs
from headkit.prompts import tokenize


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(model, tokenizer, args):
    data = tokenize(tokenizer, copy_pairs())
    kw = dict(steps=args.steps, reg_steps=args.steps, batch_size=args.batch_size, progress=False)
    seeds = list(range(args.seeds))

    def one():
        return gating.fit(model, data, seeds=[0], **kw)

    def batched():
        return gating.fit(model, data, seeds=seeds, **kw)

    def sequential():
        return [gating.fit(model, data, seeds=[s], **kw) for s in seeds]

    runs = {"1 seed": one, f"{args.seeds} seeds, one batched run": batched, f"{args.seeds} seeds, sequential runs": sequential}
    one()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            sync(args.device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            sync(args.device)
            times[name].append(time.perf_counter() - t0)
    b, s = outputs[f"{args.seeds} seeds, one batched run"], outputs[f"{args.seeds} seeds, sequential runs"]
    diff = max((b.G_minus[i] - r.G_minus[0]).abs().max().item() for i, r in enumerate(s))
    return {name: statistics.median(t) for name, t in times.items()}, diff, len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,gemma")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="steps for G, and again for G+/G- (default 3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default=None, help="results file (default results/chg_seeds_<device>.md)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    warnings.filterwarnings("ignore", message=".*RMS-normalises")  # Gemma's gate caveat; irrelevant to timing
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    lines = [
        f"# CHG: {args.seeds} seeds batched vs sequential vs one ({args.device})",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads; weights {args.dtype}, gate logits float32; TF32 off",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {__import__('transformers').__version__}, headkit {hk.__version__}",
        f"- recipe: G {args.steps} steps, then G+ and G- {args.steps} steps (together); batch {args.batch_size} "
        f"examples per seed and step; seed-003 copy prompts; median of {args.rounds} interleaved rounds after a warm-up",
        "",
    ]
    for label in args.models.split(","):
        if label == "tiny":
            model, tok = hk.models.tiny("llama", dtype=dtype)
            name = "tiny Llama (2 layers x 4 heads, d_model 64)"
        elif label == "gemma":
            model, tok = hk.load_default()
            model = model.to(dtype)
            name = "Gemma 3 270M (18 layers x 4 heads)"
        else:
            parser.error(f"unknown model {label!r}")
        model = model.to(args.device)
        medians, diff, n = bench(model, tok, args)
        one = medians["1 seed"]
        lines += [f"## {name}, {n} prompts", "", "| run | s | vs 1 seed |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.2f} | {v / one:.2f}x |" for k, v in medians.items()]
        batched = medians[f"{args.seeds} seeds, one batched run"]
        seq = medians[f"{args.seeds} seeds, sequential runs"]
        lines += ["", f"Batched is {seq / batched:.2f}x faster than sequential; largest |G- batched - G- sequential| = "
                      f"{diff:.1e}.", ""]
        print("\n".join(lines[-8:]), flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"chg_seeds_{args.device.split(':')[0]}.md")
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
