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

Models with random weights have the shapes of Pythia-160M (GPT-NeoX, 12 x 12 heads) and GPT-2 small
(12 x 12); speed does not depend on the weights. ``gemma`` is the real default model. Prompts: 57 random
token sequences with the lengths of the seed-003 copy prompts under the Gemma tokenizer (or 57 of 12-16
tokens when it is not cached). Both methods are checked to give the same decisions.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

import headkit as hk
from headkit import montecarlo
from headkit.sweep import RowSizer


def build(name: str, device: str, dtype: torch.dtype):
    if name == "gemma":
        model, _ = hk.load_default(device=device, dtype=dtype)
        return model
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig

    if name == "pythia160m":
        config = GPTNeoXConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                               vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25)
    elif name == "gpt2":
        config = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)
    else:
        raise SystemExit(f"unknown model {name!r}: use pythia160m, gpt2, gemma")
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()


def prompts(n: int, vocab: int, device: str):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(12, 17, (n,), generator=g)
    width = int(lengths.max())
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        ids[row, width - length :] = torch.randint(10, vocab, (length,), generator=g)
        mask[row, width - length :] = 1
    return ids.to(device), mask.to(device)


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
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def sync():
        if cuda:
            torch.cuda.synchronize()

    import transformers

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
        model = build(name, args.device, dtype)
        backend = hk.get_backend(model)
        shape = backend.shape
        ids, attn = prompts(args.prompts, model.config.vocab_size, args.device)
        masks = montecarlo.bernoulli(args.masks, 0.85, shape.n_layers, shape.n_heads, seed=0)
        with torch.no_grad():
            targets = backend.logits(ids, attention_mask=attn, last_only=True)[:, -1].argmax(-1).cpu()
        chosen: dict[str, int] = {}

        def naive():
            out = []
            with torch.no_grad():
                for mask in masks:
                    off = ~mask
                    ivs = [hk.zero_ablate(hk.Heads(off))] if off.any() else []
                    logits = backend.logits(ids, *ivs, attention_mask=attn)  # full logits, as seed 003
                    out.append(logits[:, -1].argmax(-1).cpu() == targets)
            return torch.stack(out).float()

        def plain():
            m = chosen.get("per_pass", 1)
            with torch.no_grad():
                for start in range(0, args.masks, m):
                    rows = min(m, args.masks - start)
                    backend.logits(ids.repeat(rows, 1), attention_mask=attn.repeat(rows, 1), last_only=True)

        # tune once, then time the fused engine at the tuned size (what a long run settles on)
        tuner_probe = RowSizer(None, args.masks * args.prompts)
        with torch.no_grad():
            while not tuner_probe.settled:
                m = max(1, tuner_probe.size // args.prompts)  # whole masks, as the engine packs them
                sync()
                t0 = time.perf_counter()
                backend.logits(ids.repeat(m, 1), hk.gate(masks[:m].float().repeat_interleave(args.prompts, 0)),
                               attention_mask=attn.repeat(m, 1), last_only=True)
                sync()
                tuner_probe.record(m * args.prompts, time.perf_counter() - t0)
        chosen["per_pass"] = max(1, tuner_probe.size // args.prompts)
        fused_fixed = lambda: montecarlo.evaluate(backend, ids, targets, masks, attention_mask=attn,  # noqa: E731
                                                  rows_per_pass=chosen["per_pass"] * args.prompts,
                                                  progress=False)
        runs = {"naive": naive, "fused": fused_fixed, "plain": plain}
        times = {k: [] for k in runs}
        results = {}
        for _ in range(args.rounds):
            for key, fn in runs.items():
                sync()
                t0 = time.perf_counter()
                results[key] = fn()
                sync()
                times[key].append(time.perf_counter() - t0)
        assert torch.equal(results["naive"], results["fused"]), "fused decisions differ from the naive loop"
        evals = args.masks * args.prompts
        rate = {k: evals / statistics.median(v) for k, v in times.items()}
        print(f"| {name} ({shape.n_layers}x{shape.n_heads}) | {args.masks} x {args.prompts} | {rate['naive']:.1f} "
              f"| {rate['fused']:.1f} | {rate['plain']:.1f} | {rate['fused'] / rate['naive']:.2f}x "
              f"| {rate['plain'] / rate['fused']:.2f}x | {chosen['per_pass']} |", flush=True)
        if args.study:
            from headkit import stochastic_ablation

            sync()
            t0 = time.perf_counter()
            result = stochastic_ablation.study(backend, ids, targets, attention_mask=attn, n_masks=args.study,
                                               p_keep=(0.3, 0.85), progress=False)
            sync()
            studies.append(f"| {name} | 2 x {args.study} masks x {len(result.prompts)} prompts "
                           f"| {time.perf_counter() - t0:.1f} | {result.throughput:.0f} "
                           f"| {result.log['rows_per_pass'] // len(result.prompts)} |")
        model = backend = None  # free this model before the next one loads
    if studies:
        print("\nwhole study (`stochastic_ablation.study`, p_keep 0.3 / 0.85: evaluation, counts, regression with "
              "200 bootstrap refits per phase, validation), timed once after the rounds above:\n")
        print("| model | masks x prompts | seconds | evals/s during evaluation | masks per pass |")
        print("|---|---|---|---|---|")
        print("\n".join(studies))


if __name__ == "__main__":
    main()
