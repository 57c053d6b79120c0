"""Build (once) the reference pools the estimator-efficiency benchmark measures against.

    python benchmarks/reference_pool.py --cache /tmp/reference_pool     # Gemma 3 270M, CPU, about 100 min

Real model (Gemma 3 270M), the seed-003 copy prompts the full model completes, readout = margin
(logit(target) - the largest other logit; success is margin > 0). Every pool is evaluated with the fused
engine into an :class:`~headkit.analyses.outcome_log.OutcomeLog` under ``--cache`` (a killed run resumes where
it stopped) and then written, compressed, to ``benchmarks/results/reference_pool.npz``:

- ``exact``: the full model, every single-head ablation (all heads but one kept) and every leave-one-in
  mask (only one head kept), 2 + 2 x 72 masks;
- ``pairs``: ``--pairs`` antithetic pairs at p_keep = 0.5 (a mask and its complement; 2 x 1,200 = 2,400
  masks). Every mask is marginally a Bernoulli(0.5) mask, so one member per pair is an i.i.d. design, whole
  pairs are the antithetic design (which at p = 0.5 is also balanced: each head is kept in exactly half of
  the masks), and what a run does not use is the reference (at least 2,000 masks for runs of up to 200);
- ``seed``: ``--seed-masks`` i.i.d. Bernoulli(0.3) masks, the seed's "many ablated" phase whose
  importance score is the baseline;
- ``balanced``: ``--balanced-masks`` masks at p_keep = 0.5 in blocks of 10, each head kept in exactly 5 masks
  of every block (:func:`~headkit.analyses.estimators.balanced`), so a run of whole blocks is balanced;
- ``balanced30``: as many masks at p_keep = 0.3 in blocks of 10 (each head kept in exactly 3 of every block):
  the seed's keep probability in the balanced design the study uses.

A pool already in ``--out`` with the same masks is kept as it is, not evaluated again (so a pool added
later costs only its own masks).
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import headkit as hk
from headkit import montecarlo
from headkit.analyses.estimators import antithetic, balanced
from headkit.analyses.outcome_log import OutcomeLog
from headkit.prompts import copy_task

OUT = Path(__file__).parent / "results" / "reference_pool.npz"
BLOCK = 10
"""Masks per balanced block: each head kept in exactly p_keep x 10 of them (5 at 0.5, 3 at 0.3), so any union of blocks is balanced."""


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def exact_masks(n_layers: int, n_heads: int) -> torch.Tensor:
    """Full model, then every single-head ablation, then every leave-one-in mask (only that head kept)."""
    h = n_layers * n_heads
    full = torch.ones(1, h, dtype=torch.bool)
    empty = torch.zeros(1, h, dtype=torch.bool)
    one_out = ~torch.eye(h, dtype=torch.bool)
    one_in = torch.eye(h, dtype=torch.bool)
    return torch.cat([full, empty, one_out, one_in]).reshape(-1, n_layers, n_heads)


def run_pool(model, task, masks: torch.Tensor, folder: Path, meta: dict) -> torch.Tensor:
    shape = hk.get_backend(model).shape
    log = OutcomeLog(folder, n_layers=shape.n_layers, n_heads=shape.n_heads, n_prompts=len(task), meta=meta)
    first = done = len(log)
    started = time.perf_counter()
    if done < len(masks):
        chunks = montecarlo.evaluate_chunks(model, task.left.input_ids, task.left.targets, masks[done:], metric="margin",
                                            attention_mask=task.left.attention_mask, progress=False)
        for chunk in chunks:
            log.append(masks[done : done + chunk.shape[0]], chunk)
            done += chunk.shape[0]
            if done % 40 < chunk.shape[0] or done == len(masks):
                rate = (time.perf_counter() - started) / (done - first)
                print(f"{folder.name}: {done}/{len(masks)} masks ({rate:.2f} s per mask)", flush=True)
    stored, margins = log.read()
    log.close()
    if not torch.equal(stored[: len(masks)], masks):
        raise SystemExit(f"{folder} holds other masks: remove it or pass another --cache")
    return margins[: len(masks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="reference_pool", help="folder for the outcome logs (resumable)")
    parser.add_argument("--pairs", type=int, default=1200, help="antithetic pairs at p_keep = 0.5")
    parser.add_argument("--seed-masks", type=int, default=400, help="Bernoulli(0.3) masks for the seed's score")
    parser.add_argument("--balanced-masks", type=int, default=400, help=f"balanced masks at p_keep = 0.5 (blocks of {BLOCK})")
    parser.add_argument("--out", default=str(OUT), help="the compressed pools")
    args = parser.parse_args()
    started = time.perf_counter()
    model, tok = hk.load_default()
    full = copy_task(tok)
    shape = hk.get_backend(model).shape
    n_layers, n_heads = shape.n_layers, shape.n_heads
    whole = torch.ones(1, n_layers, n_heads)
    margin = montecarlo.evaluate(model, full.left.input_ids, full.left.targets, whole, metric="margin",
                                 attention_mask=full.left.attention_mask, progress=False)[0]
    keep = margin > 0
    task = full.rows(keep)
    cache = Path(args.cache)
    base = {"model": hk.models.DEFAULT_MODEL, "metric": "margin", "prompts": list(task.texts)}
    designs = {
        "exact": exact_masks(n_layers, n_heads),
        "seed": montecarlo.bernoulli(args.seed_masks, 0.3, n_layers, n_heads, seed=300),
        "pairs": antithetic(2 * args.pairs, 0.5, n_layers, n_heads, seed=2026),
        "balanced": torch.cat([balanced(BLOCK, 0.5, n_layers, n_heads, seed=5000 + b)
                               for b in range(args.balanced_masks // BLOCK)]),
        "balanced30": balanced(args.balanced_masks, 0.3, n_layers, n_heads, seed=6000, block=BLOCK),
    }
    stored = dict(np.load(args.out)) if Path(args.out).exists() else {}
    if stored and list(stored.get("prompts", [])) != list(task.texts):
        stored = {}  # other prompts: nothing stored can be kept
    before = ast.literal_eval(str(stored["info"])) if "info" in stored else {}
    # where each pool was evaluated: a pool kept from an earlier run keeps that run's machine
    where = {name: before.get("devices", {}).get(name, before.get("device", "unknown")) for name in designs}
    here = f"CPU ({torch.get_num_threads()} threads, {platform.machine()}, {cpu_name()}), torch {torch.__version__}"
    out: dict[str, np.ndarray] = {}
    for name, masks in designs.items():
        packed = np.packbits(masks.reshape(len(masks), -1).numpy(), axis=1)
        if f"{name}_masks" in stored and np.array_equal(stored[f"{name}_masks"], packed):
            print(f"{name}: {len(masks)} masks already in {args.out}, kept", flush=True)
            out[f"{name}_masks"], out[f"{name}_margins"] = packed, stored[f"{name}_margins"]
            continue
        margins = run_pool(model, task, masks, cache / name, base | {"design": name})
        out[f"{name}_masks"] = packed
        out[f"{name}_margins"] = margins.float().numpy()
        where[name] = here
    minutes = (time.perf_counter() - started) / 60
    info = {
        "model": hk.models.DEFAULT_MODEL, "dtype": "float32", "torch": torch.__version__,
        "device": "; ".join(f"{name}: {device}" for name, device in where.items()),
        "devices": where,
        "prompts": f"the seed-003 copy prompts the full model completes ({len(task)} of {len(full)})",
        "command": "python benchmarks/reference_pool.py " + f"--pairs {args.pairs} --seed-masks {args.seed_masks} "
                   f"--balanced-masks {args.balanced_masks}",
        "seeds": "exact: none; seed: montecarlo.bernoulli(seed=300, p=0.3); pairs: estimators.antithetic(seed=2026, p=0.5); "
                 f"balanced: estimators.balanced({BLOCK}, 0.5, seed=5000 + block); balanced30: "
                 f"estimators.balanced({args.balanced_masks}, 0.3, seed=6000, block={BLOCK})",
        "minutes": f"{minutes:.1f} (this run; a resumed run counts only its own part)",
    }
    partial = Path(args.out).with_suffix(".partial.npz")  # written aside, then swapped in: a crash keeps the old file
    np.savez_compressed(partial, n_layers=n_layers, n_heads=n_heads, prompts=np.array(task.texts),
                        info=np.array(repr(info)), **out)
    os.replace(partial, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    main()
