"""The two capture rows of overhead.py alone, on Gemma 3 270M: capture_attention vs the plain forward.

    python benchmarks/capture_overhead.py --rounds 15

transformers and TransformerLens (a bridge), the same four heads and batch (8 x 32 tokens) as overhead.py,
interleaved per round, medians; prints one line of ratios. Used to re-check a single overhead.py run on a
shared machine where 1.3-1.8 s forwards drift by several percent.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import headkit as hk
from headkit import bench
from headkit.adapters import huggingface as hk_hf
from headkit.adapters import transformer_lens as hk_tl


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    model, tok = hk.load_default()
    ids = torch.randint(10, 20000, (8, 32))
    bridge = TransformerBridge.boot_transformers("gemma", hf_model=copy.deepcopy(model), tokenizer=tok, device="cpu")
    capture = hk.capture_attention(hk.Heads.parse("L5H1 L5H3 L11H2 L13H3"))

    def hf_capture():
        with hk_hf.applied(model, capture):
            model(ids, use_cache=False)

    def tl_capture():
        with hk_tl.applied(bridge, capture):
            bridge(ids)

    runs = {"hf plain": lambda: model(ids, use_cache=False), "hf capture": hf_capture,
            "tl plain": lambda: bridge(ids), "tl capture": tl_capture}
    with torch.no_grad():
        times, _ = bench.interleaved(runs, args.rounds, warmup=True)
    m = {name: statistics.median(t) for name, t in times.items()}
    print(args.label, f"hf capture {m['hf capture'] / m['hf plain']:.3f}x  tl capture {m['tl capture'] / m['tl plain']:.3f}x"
          f"  (plain hf {m['hf plain'] * 1e3:.0f} ms, tl {m['tl plain'] * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
