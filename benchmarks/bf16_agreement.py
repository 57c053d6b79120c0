"""Do bfloat16 top-1 decisions agree with float32 ones under random head masks? Where not, why?

    python benchmarks/bf16_agreement.py --masks 40                       # CPU, Gemma 3 270M
    python benchmarks/bf16_agreement.py --device cuda --masks 2000

The same random masks (keep probability ``--p-keep``) on the seed-003 copy prompts the full model
completes, evaluated by the fused engine with the model in float32 and in bfloat16 (``metric="margin"``:
logit(target) - best other logit; the decision is margin > 0). Reports how many (mask, prompt) decisions
differ, the float32 margins of those records, and how far bfloat16 moves margins in general (quantiles of
|margin_bf16 - margin_fp32| over all records): a disagreement is "explained" when its float32 margin is
smaller than the bfloat16 error seen at the 99.9th percentile, i.e. below what bfloat16 resolves here.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

import headkit as hk
from headkit import montecarlo
from headkit.prompts import copy_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=40)
    parser.add_argument("--p-keep", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32
        torch.backends.cudnn.allow_tf32 = False
    margins = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = hk.load_default(device=args.device, dtype=dtype)
        task = copy_task(tok)
        if dtype == torch.float32:
            full = montecarlo.evaluate(model, task.left.input_ids, task.left.targets, torch.ones(1, 18, 4), metric="margin",
                                       attention_mask=task.left.attention_mask, progress=False)[0]
            solved = full > 0
        task = task.rows(solved)
        masks = montecarlo.bernoulli(args.masks, args.p_keep, 18, 4, seed=args.seed)
        margins[dtype] = montecarlo.evaluate(model, task.left.input_ids.to(args.device), task.left.targets, masks,
                                             metric="margin", attention_mask=task.left.attention_mask.to(args.device))
        del model
    fp32, bf16 = margins[torch.float32].double(), margins[torch.bfloat16].double()
    differ = (fp32 > 0) != (bf16 > 0)
    error = (bf16 - fp32).abs().flatten()
    q = torch.quantile(error, torch.tensor([0.5, 0.9, 0.99, 0.999], dtype=torch.float64)).tolist()
    resolution = q[3]
    worst = fp32[differ].abs().max().item() if differ.any() else float("nan")
    unexplained = int((differ & (fp32.abs() >= resolution)).sum())
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print("\n".join([
        "# bfloat16 vs float32 top-1 decisions under random head masks",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- model: {hk.models.DEFAULT_MODEL}; device: {device} ({platform.machine()}); torch {torch.__version__}"
        + ("; TF32 off" if args.device.startswith("cuda") else ""),
        f"- {args.masks} masks, p_keep {args.p_keep}, seed {args.seed}, x {fp32.shape[1]} prompts = {fp32.numel()} "
        f"decisions; success rate fp32 {(fp32 > 0).float().mean():.3f}, bf16 {(bf16 > 0).float().mean():.3f}",
        "",
        f"- decisions that differ: {int(differ.sum())} of {fp32.numel()} ({100 * differ.float().mean():.2f}%)",
        f"- |fp32 margin| of those records: max {worst:.4f}"
        + (f", all: {', '.join(f'{v:.4f}' for v in sorted(fp32[differ].abs().tolist()))}" if 0 < differ.sum() <= 20 else ""),
        f"- |bf16 margin - fp32 margin| over all records: median {q[0]:.4f}, 90% {q[1]:.4f}, 99% {q[2]:.4f}, "
        f"99.9% {q[3]:.4f} (logits)",
        f"- differing decisions whose |fp32 margin| is at least the 99.9% bf16 error ({resolution:.4f}): {unexplained}",
    ]))


if __name__ == "__main__":
    main()
