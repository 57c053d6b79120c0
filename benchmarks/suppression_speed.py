"""Sentence-suppression KL matrix: many sentences per forward pass vs one forward pass per sentence.

    python benchmarks/suppression_speed.py                         # CPU, Gemma 3 270M
    python benchmarks/suppression_speed.py --device cuda --dtype bfloat16 --sentences 48

Three ways to the same matrix, interleaved over ``--rounds`` rounds (medians reported):

- ``seed loop``: what the Thought Anchors code does per sentence: one forward pass with full-vocabulary
  logits at every position, then the KL at every position;
- ``one per pass``: ``kl_matrix(..., rows_per_pass=1)``: one forward pass per sentence, logits only at
  the positions of the sentences that can be affected;
- ``batched``: ``kl_matrix`` with ``--rows`` sentences per forward pass (per-row key masks).

It checks that all three give the same matrix (largest difference printed).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

import headkit as hk
from headkit import suppression


def trace(tokenizer, n: int):
    steps = [f"Step {i}: we add {17 * i % 97 + 3} and {31 * i % 89 + 5} to the total." for i in range(n)]
    return hk.sentences.locate(tokenizer, " ".join(steps))


def seed_loop(model, sentences, device):
    """One forward per sentence, full logits everywhere (all heads masked via headkit's mask)."""
    backend = hk.get_backend(model)
    ids = sentences.input_ids.to(device)
    every = hk.Heads.all(backend.shape.n_layers, backend.shape.n_heads)
    member = sentences.membership()
    with torch.no_grad():
        logp = torch.log_softmax(backend.logits(ids)[0].float(), -1)
        s = len(sentences)
        out = torch.full((s, s), torch.nan, dtype=torch.float64)
        for j in range(s):
            logq = torch.log_softmax(backend.logits(ids, hk.mask_attention(every, keys=member[j : j + 1]))[0].float(), -1)
            kl = (logp.exp() * (logp - logq)).sum(-1).clamp(min=0).double().cpu()
            for i in range(j, s):
                out[i, j] = kl[member[i]].mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=24)
    parser.add_argument("--rows", type=int, default=8, help="sentences per forward pass in the batched run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, tok = hk.load_default(device=args.device, dtype=dtype)
    sentences = trace(tok, args.sentences)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = {
        "seed loop": lambda: seed_loop(model, sentences, args.device),
        "one per pass": lambda: suppression.kl_matrix(model, sentences, rows_per_pass=1, progress=False).matrix,
        f"batched ({args.rows} per pass)": lambda: suppression.kl_matrix(
            model, sentences, rows_per_pass=args.rows, progress=False
        ).matrix,
    }
    runs["one per pass"]()  # warm-up
    times = {name: [] for name in runs}
    results = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            results[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    import transformers

    print(f"# sentence-suppression KL matrix, {args.device}, {args.dtype}, Gemma 3 270M")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"TF32 off, {args.rounds} interleaved rounds, medians")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"trace: {len(sentences)} sentences, {sentences.n_tokens} tokens\n")
    base = statistics.median(times["seed loop"])
    print("| method | median s | speed-up vs seed loop | speed-up vs one per pass |")
    print("|---|---|---|---|")
    one = statistics.median(times["one per pass"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {base / m:.2f}x | {one / m:.2f}x |")
    ref = results["seed loop"]
    for name, r in results.items():
        print(f"\nmax |difference| {name} vs seed loop: {(r - ref).nan_to_num(0).abs().max().item():.1e}", end="")
    print()


if __name__ == "__main__":
    main()
