"""Per-forward cost of headkit interventions, as ratios to plain forwards measured in the same run.

    python benchmarks/overhead.py                       # tiny Llama and Gemma 3 270M, writes results/
    python benchmarks/overhead.py --models tiny --rounds 50

Variants run interleaved (one of each per round) so drift hits all of them alike; each figure is the
median over rounds. Each framework's variants are compared with its own plain forward (transformers
forward, TransformerLens bridge forward, nnsight trace), and every row also with the plain transformers
forward ("vs HF"), so the frameworks' own costs show too. A thin caller of ``headkit.bench.overhead``
(``headkit bench`` prints the same table for any model). Heads: two of each of the middle and the last
layer (the earlier script's were L1H0 L1H2 on the tiny model and L5H1 L5H3 L11H2 L13H3 on Gemma).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

import headkit as hk
from headkit import bench


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny,gemma", help="comma list of tiny, gemma")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead_cpu.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sections = []
    for which in args.models.split(","):
        if which == "tiny":
            model, tok = hk.models.tiny("llama")
            ids = torch.randint(4, 100, (8, 32))
            label = "tiny Llama (2 layers x 4 heads, d_model 64), batch 8 x 32 tokens"
        else:
            model, tok = hk.load_default()
            ids = torch.randint(10, 20000, (8, 32))
            label = "Gemma 3 270M (18 layers x 4 heads), batch 8 x 32 tokens"
        o = bench.overhead(model, tok, ids, rounds=args.rounds)
        rows = [(name, o["ms"][name], o["ratio"][name], o["vs_transformers"][name]) for name in o["ms"]]
        sections.append((label, rows))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    from importlib.metadata import version

    lines = [
        "# Per-forward overhead of headkit interventions (CPU)",
        "",
        f"- command: `python benchmarks/overhead.py --models {args.models} --rounds {args.rounds}`",
        f"- device: {cpu}, {torch.get_num_threads()} threads; dtype float32; eager/sdpa as loaded (sdpa)",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{version('transformers')}, transformer-lens {version('transformer-lens')}, nnsight {version('nnsight')}, "
        f"headkit {hk.__version__}",
        f"- method: all variants interleaved, one call each per round, {args.rounds} rounds after a warm-up; "
        "median ms per call (attach + forward + detach; for nnsight the whole traced call). Ratio: to the plain "
        "forward of the same framework; vs HF: to the plain transformers forward. nnsight captures are left out: "
        "they need eager attention and these models run sdpa.",
        "",
    ]
    for label, rows in sections:
        lines += [f"## {label}", "", "| variant | ms | ratio | vs HF |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {ms:.2f} | {r:.2f}x | {h:.2f}x |" for n, ms, r, h in rows]
        lines.append("")
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
