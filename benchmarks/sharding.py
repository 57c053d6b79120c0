"""Sharded Monte Carlo: N ranks x T/N threads against 1 rank x T threads on the same masks (medians, interleaved).

    python benchmarks/sharding.py --ranks 2 --threads 2 --shape pythia-160m --masks 64 --rounds 3

Each run is a fresh process group started by torchrun (or one process alone) that builds the named shape
(random weights, seeded), warms up on one pass, then times ``montecarlo.evaluate`` over every mask with a
fixed ``rows_per_pass`` between two barriers; rank 0 reports the seconds. Startup (imports, building the
model) is not timed: it is the same in both and does not grow with the masks. The scores of both runs are
compared bit for bit. Writes a markdown results file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(shape: str, masks: int, prompts: int, rows_per_pass: int, out: str) -> None:
    import torch

    import headkit as hk
    from headkit import bench, montecarlo

    if "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("gloo")
    here = hk.shards.world()
    model = bench.shape_model(shape)
    backend = hk.get_backend(model)
    ids, attn = bench.random_prompts(prompts, backend.vocab_size)
    targets = ids[:, -1]
    shape_ = backend.shape
    all_masks = montecarlo.bernoulli(masks, 0.3, shape_.n_layers, shape_.n_heads, seed=0)
    kw = dict(attention_mask=attn, metric="margin", rows_per_pass=rows_per_pass, progress=False)
    montecarlo.evaluate(backend, ids, targets, all_masks[: here.size], **kw)  # warm-up: one pass per rank
    here.barrier()
    started = time.perf_counter()
    scores = montecarlo.evaluate(backend, ids, targets, all_masks, **kw)
    here.barrier()
    seconds = time.perf_counter() - started
    if here.first:
        torch.save({"seconds": seconds, "scores": scores, "threads": torch.get_num_threads()}, out)
    if "WORLD_SIZE" in os.environ:
        torch.distributed.destroy_process_group()


def launch(ranks: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    work = [__file__, "--worker", "--shape", args.shape, "--masks", str(args.masks), "--prompts", str(args.prompts),
            "--rows-per-pass", str(args.rows_per_pass), "--out", str(out)]
    command = [sys.executable, *(["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] if ranks > 1 else []),
               *work]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return torch.load(out, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (each rank gets threads / ranks)")
    parser.add_argument("--shape", default="pythia-160m")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=57)
    parser.add_argument("--rows-per-pass", type=int, default=228, help="fixed (4 masks of 57 prompts)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/sharding_cpu.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.shape, args.masks, args.prompts, args.rows_per_pass, args.out)
        return
    import torch
    import transformers

    per_rank = max(1, args.threads // args.ranks)
    times: dict[str, list[float]] = {"one": [], "sharded": []}
    equal = True
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):  # interleaved: one of each per round
            one = launch(1, args.threads, args, Path(folder) / f"one{r}.pt")
            sharded = launch(args.ranks, per_rank, args, Path(folder) / f"sharded{r}.pt")
            times["one"].append(one["seconds"])
            times["sharded"].append(sharded["seconds"])
            equal &= torch.equal(one["scores"], sharded["scores"])
            print(f"round {r}: 1 x {args.threads} threads {one['seconds']:.2f} s, "
                  f"{args.ranks} x {per_rank} {sharded['seconds']:.2f} s", flush=True)
    one_s, sharded_s = statistics.median(times["one"]), statistics.median(times["sharded"])
    command = "python " + " ".join(sys.argv)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    evaluations = args.masks * args.prompts
    text = f"""# Sharded Monte Carlo on CPU: {args.ranks} ranks x {per_rank} thread vs 1 rank x {args.threads} threads

Command: `{command}`

Machine: {cpu}, {os.cpu_count()} logical CPUs; fp32; torch {torch.__version__}, transformers {transformers.__version__},
Python {platform.python_version()}; gloo. Shape {args.shape} (random weights), {args.prompts} prompts of 12-16 tokens,
{args.masks} masks (p_keep 0.3), rows_per_pass {args.rows_per_pass} fixed; timed between barriers after a warm-up
pass (process start and model build not timed). Rounds interleaved: {args.rounds}.

| run | median s | evaluations/s | raw s |
|---|---|---|---|
| 1 rank x {args.threads} threads | {one_s:.2f} | {evaluations / one_s:.0f} | {', '.join(f'{t:.2f}' for t in times['one'])} |
| {args.ranks} ranks x {per_rank} thread | {sharded_s:.2f} | {evaluations / sharded_s:.0f} | {', '.join(f'{t:.2f}' for t in times['sharded'])} |

Sharded speed / one-process speed: **{one_s / sharded_s:.2f}x** (target: within 0.8x-1.25x).
Scores equal bit for bit in every round: {equal}.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps({"one": times["one"], "sharded": times["sharded"]}))


if __name__ == "__main__":
    main()
