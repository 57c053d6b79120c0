"""Per-forward cost of headkit interventions, as ratios to plain forwards measured in the same run.

    python benchmarks/overhead.py                       # tiny Llama and Gemma 3 270M, writes results/
    python benchmarks/overhead.py --models tiny --rounds 50

Variants run interleaved (one of each per round) so drift hits all of them alike; each figure is the
median over rounds. Each framework's variants are compared with its own plain forward (transformers
forward, TransformerLens bridge forward, nnsight trace), and every row also with the plain transformers
forward ("vs HF"), so the frameworks' own costs show too.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import headkit as hk
from headkit.adapters import huggingface as hk_hf
from headkit.adapters import nnsight as hk_nn
from headkit.adapters import transformer_lens as hk_tl


def variants(shape, positions):
    heads = hk.Heads.parse("L1H0 L1H2") if shape.n_layers < 6 else hk.Heads.parse("L5H1 L5H3 L11H2 L13H3")
    keys = [(1, max(2, positions // 2))]
    return {
        "zero_ablate (4 heads)" if len(heads) == 4 else "zero_ablate (2 heads)": [hk.zero_ablate(heads)],
        "gate (every head, every layer)": [hk.gate(torch.rand(shape.n_layers, shape.n_heads))],
        "mask_attention (same heads)": [hk.mask_attention(heads, keys=keys)],
        "capture_attention (same heads)": [hk.capture_attention(heads)],
    }


def timed(fn, rounds_out, name):
    t0 = time.perf_counter()
    fn()
    rounds_out.setdefault(name, []).append(time.perf_counter() - t0)


def bench(label, model, tokenizer, ids, rounds):
    from nnsight import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(label, hf_model=copy.deepcopy(model), tokenizer=tokenizer, device="cpu")
    shape = hk_hf.model_shape(model)
    cases = variants(shape, ids.shape[1])
    runs = {"transformers: plain forward": lambda: model(ids, use_cache=False)}
    for name, ivs in cases.items():
        def hf_run(ivs=ivs):
            with hk_hf.applied(model, *ivs):
                model(ids, use_cache=False)
        runs[f"transformers: {name}"] = hf_run
    traced = TransformersModel(copy.deepcopy(model), tokenizer=tokenizer)

    def plain_trace():
        with traced.trace(ids):
            traced.output.logits.save()

    runs["nnsight: plain trace"] = plain_trace
    for name, ivs in cases.items():
        if name.startswith("capture") and model.config._attn_implementation != "eager":
            continue  # nnsight reads weights only under eager attention

        def nn_run(ivs=ivs):
            with traced.trace(ids):
                hk_nn.apply(traced, *ivs)
                traced.output.logits.save()

        runs[f"nnsight: {name}"] = nn_run
    runs["TransformerLens: plain bridge forward"] = lambda: bridge(ids)
    for name, ivs in cases.items():
        def tl_run(ivs=ivs):
            with hk_tl.applied(bridge, *ivs):
                bridge(ids)
        runs[f"TransformerLens: {name}"] = tl_run
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                timed(fn, times, name)
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    bases = {
        "transformers": med["transformers: plain forward"],
        "nnsight": med["nnsight: plain trace"],
        "TransformerLens": med["TransformerLens: plain bridge forward"],
    }
    rows = [(name, ms, ms / bases[name.split(":")[0]], ms / bases["transformers"]) for name, ms in med.items()]
    return rows


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
        rows = bench(which, model, tok, ids, args.rounds)
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
