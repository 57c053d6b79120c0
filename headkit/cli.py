"""The ``headkit`` command: argparse and dispatch; each result reports itself (summary, save, plot).

    headkit demo      every intervention on the copy task, on the embedded default model (Gemma 3 270M)
    headkit chg       causal head gating on a built-in task: roles of every head, Figures 2 and 3b
    headkit mc        the stochastic-ablation study (seed 003): thousands of random head masks, fused
    headkit receivers receiver heads (kurtosis of vertical attention scores) over reasoning traces
    headkit suppress  sentence-suppression KL matrix of one text
    headkit triad     attention vs direct effect vs ablation effect per head (induction)
    headkit bench     ablation throughput on your model and device (naive loop vs fused vs plain, adapters)
    headkit counterfactual  counterfactual importance of each sentence under head ablation (seed 000)

Every command takes ``--model`` (a local transformers folder or a .gguf file; default: the embedded Gemma 3
270M), ``--adapter transformers|transformer_lens|nnsight``, ``--device``, ``--dtype`` and
``--attn-implementation``. Each command checks what the user typed (flags, files, the output folder) before the model loads, prints
the result's ``summary()`` between its own header and timing lines, and writes the result's ``save(out)``.
The commands themselves are Python functions in :mod:`headkit.commands` (importable from here too).

Under ``torchrun --nproc-per-node N -m headkit mc|chg|suppress ...`` the command splits its work over the N
ranks (:mod:`headkit.shards`): rank 0 prints and writes the results, the outcome log is written in shards.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import headkit as hk
from headkit.cli_inputs import ADAPTERS
from headkit.commands import bench, chg, counterfactual, demo, mc, receivers, suppress, triad
from headkit.shards import World, init_from_env

__all__ = ["main", "demo", "chg", "mc", "receivers", "suppress", "triad", "bench", "counterfactual"]



def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headkit`` console command: parse ``argv``, run the command, return the exit code.

    Bad input exits with code 2 and one ``headkit: ...`` line on stderr, before any model loads.

    Example:
        >>> from headkit.cli import main
        >>> try:
        ...     main(["--help"])
        ... except SystemExit as done:
        ...     print("exit", done.code)  # doctest: +ELLIPSIS
        usage: headkit [-h] [--version]...
        ...
        exit 0
        >>> main(["chg", "--ks", "a,b"])   # the message goes to stderr
        2
        >>> main(["triad", "--model", "meta-llama/Llama-3.2-1B"])   # nothing is downloaded: says how to get it
        2
    """
    from headkit.models import DTYPES

    parser = argparse.ArgumentParser(prog="headkit", description="Exact attention-head interventions.")
    parser.add_argument("--version", action="version", version=f"headkit {hk.__version__}")
    commands = parser.add_subparsers(dest="command")
    loads = argparse.ArgumentParser(add_help=False)
    loads.add_argument("--model", default=None,
                       help="a local transformers folder (model + tokenizer) or a .gguf file; nothing is downloaded "
                       "(default: the embedded Gemma 3 270M)")
    loads.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    loads.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights' dtype (default float32)")
    loads.add_argument("--attn-implementation", choices=["sdpa", "eager"], default=None,
                       help="the model's attention (default: as saved; nnsight captures need eager)")
    on = argparse.ArgumentParser(add_help=False, parents=[loads])
    on.add_argument("--adapter", choices=ADAPTERS, default="transformers",
                    help="run through plain transformers (default), a TransformerLens bridge or nnsight")
    demo_parser = commands.add_parser(
        "demo", parents=[on], help="apply each intervention to a few heads of the model on the copy task"
    )
    demo_parser.add_argument("--heads", default=None, help='heads to intervene on, e.g. "L5H1 L5H3" (default: found)')
    demo_parser.add_argument("--top", type=int, default=4, help="how many heads to pick when --heads is not given")
    demo_parser.add_argument("--repeats", type=int, default=3, help="forward passes timed per row (median reported)")
    chg_parser = commands.add_parser(
        "chg", parents=[on], help="causal head gating on a built-in task: every head's role, the RGB head map, ablation curves",
        description="Fit causal head gates (G, then G+ and G- together; all seeds in one batched run) on the default "
        "model. Defaults are sized for a CPU; the paper's recipe is --seeds 10 --steps 500 --reg-steps 500 "
        "--batch-size 64.",
    )
    chg_parser.add_argument("--task", choices=["copy", "ioi", "arithmetic", "antonym"], default="copy",
                            help="built-in task (antonym runs contrastive CHG: keep instructions, forget in-context)")
    chg_parser.add_argument("--seeds", type=int, default=2, help="independent fits, batched together (default 2)")
    chg_parser.add_argument("--steps", type=int, default=100, help="optimiser steps for G (and for contrastive)")
    chg_parser.add_argument("--reg-steps", type=int, default=100, help="optimiser steps for G+ and G- (together)")
    chg_parser.add_argument("--batch-size", type=int, default=16, help="examples per step and seed")
    chg_parser.add_argument("--lam", type=float, default=0.1, help="regulariser magnitude (paper: 0.1)")
    chg_parser.add_argument("--ks", default="1,2,4,8,12,16,24,32",
                            help="head counts for the ablation curves (Figure 2), comma separated; empty to skip")
    chg_parser.add_argument("--data", default=None,
                            help="a text file of prompt<TAB>target lines to fit on instead of --task")
    chg_parser.add_argument("--out", default="chg_out", help="folder for the PNG figures and CSV tables")
    chg_parser.add_argument("--rows-per-pass", type=int, default=None,
                            help="rows per forward pass (default: a step's whole batch)")
    mc_parser = commands.add_parser(
        "mc", parents=[on], help="stochastic-ablation study: random head masks, fused many per forward pass (seed 003)",
        description="Evaluate random keep/ablate head masks on the seed-003 copy prompts with the default model, "
        "many masks per forward pass. Heads are ranked by their effect on the target's margin (ridge regression on "
        "the keep bits of the many-ablated phase, with least squares' 95% intervals: the most mask-efficient "
        "estimator measured on the seed's masks, benchmarks/results/estimator_efficiency.md), with a split-half "
        "measure of how far that ranking can be trusted and about how many masks would make it stable; beside "
        "it the seed's importance and exclusion scores, outlier heads (checked by keeping or ablating only them), each head's effect on success, and pairwise synergy. Every outcome goes to "
        "OUT/outcomes: run the same command again to resume or (larger --masks) extend.",
    )
    mc_parser.add_argument("--masks", type=int, default=None,
                           help="masks per phase (default: 10000 as the seed on a GPU, 100 on a CPU)")
    mc_parser.add_argument("--p-keep", default="auto",
                           help='"auto" (calibrated to 25%% / 75%% success, default) or the seed\'s "0.3,0.85"')
    mc_parser.add_argument("--design", choices=["bernoulli", "balanced"], default="bernoulli",
                           help="masks: bernoulli (default; i.i.d., the seed's) or balanced (each head kept in p_keep "
                           "of every 10 masks; with --p-keep 0.5,0.85 the benchmark's most mask-efficient design)")
    mc_parser.add_argument("--prompts", default=None,
                           help="a text file of prompt<TAB>target lines (default: the seed-003 copy prompts)")
    mc_parser.add_argument("--seed", type=int, default=0, help="seed of the masks")
    mc_parser.add_argument("--top", type=int, default=10, help="heads listed by effect and by each other score (10)")
    mc_parser.add_argument("--out", default="mc_out", help="folder for figures, CSV tables and the outcome log")
    mc_parser.add_argument("--rows-per-pass", type=int, default=None,
                           help="masked prompts per forward pass (default: tuned by throughput; fix it for results "
                           "that are the same bit for bit on any number of ranks)")
    rec_parser = commands.add_parser(
        "receivers", parents=[on], help="receiver heads (Thought Anchors): kurtosis of vertical attention scores over traces",
        description="Scan every head's sentence-level attention over reasoning traces (one text file per trace, "
        "default: four built-in traces) and rank heads by the kurtosis of their vertical scores.",
    )
    rec_parser.add_argument("texts", nargs="*", help="text files, one reasoning trace each (default: built-in)")
    rec_parser.add_argument("--proximity", type=int, default=4, help="sentences ignored near the diagonal (4)")
    rec_parser.add_argument("--top", type=int, default=20, help="receiver heads to keep (default 20)")
    rec_parser.add_argument("--out", default="receivers_out", help="folder for the figure and CSV tables")
    sup_parser = commands.add_parser(
        "suppress", parents=[on], help="sentence-suppression KL matrix (Thought Anchors Figure 6) for one text",
        description="For each sentence, suppress attention to its tokens before softmax and measure the mean "
        "KL(baseline || suppressed) at every later sentence.",
    )
    sup_parser.add_argument("text", nargs="?", help="a text file (default: the first built-in reasoning trace)")
    sup_parser.add_argument("--heads", default=None, help='heads to suppress in, e.g. "L5H1 L9H2" (default: all)')
    sup_parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (authors: 0.6)")
    sup_parser.add_argument("--log", action="store_true", help="average log(KL + 1e-9) as the authors' figure")
    sup_parser.add_argument("--out", default="suppress_out", help="folder for the figure and CSV table")
    sup_parser.add_argument("--rows-per-pass", type=int, default=None,
                            help="suppressed sentences per forward pass (default: as many as 256 MiB of logits hold)")
    tri_parser = commands.add_parser(
        "triad", parents=[on], help="attention vs direct effect vs ablation effect per head, on a repeated random-token sequence",
    )
    tri_parser.add_argument("--length", type=int, default=10, help="random tokens before the repeat (10)")
    tri_parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens")
    tri_parser.add_argument("--top", type=int, default=10, help="rows of each top-k table (10)")
    tri_parser.add_argument("--out", default="triad_out", help="folder for the CSV table")
    from headkit.bench import SHAPES

    bench_parser = commands.add_parser(
        "bench", parents=[loads], help="ablation throughput on your model and device: naive loop vs fused vs plain",
        description="Time seed 003's naive loop (one hooked forward per mask, full logits), the fused engine (many "
        "masks per pass, last-token logits) and a plain forward of the same rows, interleaved over rounds; each "
        "installed adapter's per-forward overhead; optionally the whole study. Writes OUT/bench.json (every raw "
        "timing) and OUT/bench.md.",
    )
    bench_parser.add_argument("--shape", choices=list(SHAPES), default=None,
                              help="random weights of a named shape instead of --model (speed does not depend on them)")
    bench_parser.add_argument("--masks", type=int, default=16, help="head masks (16; the seed: 10000)")
    bench_parser.add_argument("--prompts", type=int, default=57, help="random prompts of 12-16 tokens (57, as the seed)")
    bench_parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    bench_parser.add_argument("--naive-masks", type=int, default=None,
                              help="masks the naive loop runs (default: all; its per-mask rate does not depend on it)")
    bench_parser.add_argument("--study", type=int, default=0, help="also time the whole study, N masks per phase")
    bench_parser.add_argument("--overhead-rounds", type=int, default=10,
                              help="rounds of the per-adapter overhead table (0 skips it)")
    bench_parser.add_argument("--out", default="bench_out", help="folder for bench.json and bench.md")
    cf_parser = commands.add_parser(
        "counterfactual", parents=[loads],
        help="counterfactual importance of each sentence with no, receiver-head and random-head ablation (seed 000)",
        description="Resample every sentence of a chain of thought many times under three conditions (no ablation, "
        "the top-k receiver heads ablated, k random heads ablated), all rollouts of a prefix in one batched "
        "generation, and score each sentence's importance as Thought Anchors does. Rollouts stream to OUT/rollouts "
        "and a rerun resumes them (another --heads, --seed or sampling setting needs another --out). Runs through "
        "plain transformers (per-row random streams use its generate).",
    )
    cf_parser.add_argument("--problem", default=None,
                           help="a JSON file: prompt, sentences (or chain_of_thought), answer, categories "
                           "(default: the built-in problem)")
    cf_parser.add_argument("--rollouts", type=int, default=12, help="rollouts per sentence and condition (12, the seed's)")
    cf_parser.add_argument("--heads", type=int, default=None,
                           help="heads per ablated set (default: 20, or 2%% of the heads on small models (the seed's share))")
    cf_parser.add_argument("--max-new-tokens", type=int, default=None,
                           help="tokens per rollout (default: 80 for the built-in problem, else 256)")
    cf_parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0.6, the authors')")
    cf_parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (0.95, the authors')")
    cf_parser.add_argument("--threshold", type=float, default=0.8,
                           help="cosine similarity below which a resampled sentence counts as different (0.8)")
    cf_parser.add_argument("--embeddings", default="sent,llm",
                           help="similarity judges: sent (all-MiniLM-L6-v2), llm (the model's input embeddings)")
    cf_parser.add_argument("--seed", type=int, default=0, help="seed of the random streams and the random heads")
    cf_parser.add_argument("--rows-per-call", type=int, default=None,
                           help="rollouts per generate call (default: all of a prefix's, halved on out-of-memory)")
    cf_parser.add_argument("--out", default="counterfactual_out", help="folder for the tables, figures and rollouts")
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `headkit`
        parser.print_help()
        return 0
    model = dict(model=args.model, adapter=getattr(args, "adapter", "transformers"), device=args.device, dtype=args.dtype,
                 attn_implementation=args.attn_implementation)
    started_group = False
    try:
        here = _ranks(args.command)
        started_group = here.size > 1
        if not here.first:  # one rank prints and writes; every rank computes its part
            model["out"] = lambda text: None
        if args.command == "demo":
            demo(heads=args.heads, top=args.top, repeats=args.repeats, **model)
        elif args.command == "mc":
            mc(masks=args.masks, p_keep=args.p_keep, design=args.design, prompts=args.prompts, seed=args.seed,
               top=args.top, out_dir=args.out, rows_per_pass=args.rows_per_pass, **model)
        elif args.command == "receivers":
            receivers(texts=args.texts, proximity_ignore=args.proximity, top=args.top, out_dir=args.out, **model)
        elif args.command == "suppress":
            suppress(text=args.text, heads=args.heads, temperature=args.temperature, log=args.log,
                     out_dir=args.out, rows_per_pass=args.rows_per_pass, **model)
        elif args.command == "bench":
            bench(shape=args.shape, masks=args.masks, naive_masks=args.naive_masks, prompts=args.prompts,
                  rounds=args.rounds, study=args.study,
                  overhead_rounds=args.overhead_rounds, out_dir=args.out, model=args.model, device=args.device,
                  dtype=args.dtype, attn_implementation=args.attn_implementation,
                  command=" ".join(["headkit", *(sys.argv[1:] if argv is None else argv)]))
        elif args.command == "counterfactual":
            counterfactual(problem=args.problem, rollouts=args.rollouts, heads=args.heads,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           threshold=args.threshold, embeddings=[e.strip() for e in args.embeddings.split(",")],
                           seed=args.seed, out_dir=args.out, rows_per_call=args.rows_per_call, model=args.model,
                           device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation)
        elif args.command == "triad":
            triad(length=args.length, seed=args.seed, top=args.top, out_dir=args.out, **model)
        else:
            try:
                ks = [int(k) for k in args.ks.split(",") if k.strip()]
            except ValueError:
                raise hk.HeadkitError(f"chg got --ks {args.ks!r}; expected head counts like 1,2,4,8. "
                                      "Fix: pass whole numbers separated by commas (empty to skip the curves)") from None
            chg(task=args.task, data_file=args.data, seeds=args.seeds, steps=args.steps, reg_steps=args.reg_steps,
                batch_size=args.batch_size, lam=args.lam, ks=ks, out_dir=args.out, rows_per_pass=args.rows_per_pass,
                **model)
    except hk.HeadkitError as e:
        print(f"headkit: {e}", file=sys.stderr)
        return 2
    finally:
        if started_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


SHARDED = ("mc", "chg", "suppress")
"""Commands that split their work over torch.distributed ranks (under ``torchrun``)."""


def _ranks(command: str) -> World:
    """The ranks this command runs on: torchrun's process group for a command that shards, else one process."""
    if os.environ.get("WORLD_SIZE", "1") != "1" and command not in SHARDED:
        raise hk.HeadkitError(f"headkit {command} was started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); "
                              f"expected one of {', '.join(SHARDED)}, which split their work over ranks. "
                              f"Fix: run `headkit {command}` in one process, without torchrun")
    return init_from_env()


if __name__ == "__main__":
    sys.exit(main())
