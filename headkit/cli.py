"""The ``headkit`` command.

    headkit demo      every intervention on the copy task, on the embedded default model (Gemma 3 270M)
    headkit chg       causal head gating on a built-in task: roles of every head, Figures 2 and 3b
    headkit mc        the stochastic-ablation study (seed 003): thousands of random head masks, fused
    headkit receivers receiver heads (kurtosis of vertical attention scores) over reasoning traces
    headkit suppress  sentence-suppression KL matrix of one text
    headkit triad     attention vs direct effect vs ablation effect per head (induction)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import headkit as hk
from headkit.core.interventions import Intervention
from headkit.prompts import Task, copy_task
from headkit.readouts import score_next_token

__all__ = ["main", "demo", "chg", "mc", "receivers", "suppress", "triad"]



def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headkit`` console command.

    Example:
        >>> from headkit.cli import main
        >>> main(["--help"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="headkit", description="Exact attention-head interventions.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="apply each intervention to a few heads of the default model on the copy task"
    )
    demo_parser.add_argument(
        "--adapter", choices=["huggingface", "transformer_lens"], default="huggingface",
        help="run through plain transformers (default) or a TransformerLens bridge",
    )
    demo_parser.add_argument("--heads", default=None, help='heads to intervene on, e.g. "L5H1 L5H3" (default: found)')
    demo_parser.add_argument("--top", type=int, default=4, help="how many heads to pick when --heads is not given")
    demo_parser.add_argument("--repeats", type=int, default=3, help="forward passes timed per row (median reported)")
    chg_parser = commands.add_parser(
        "chg", help="causal head gating on a built-in task: every head's role, the RGB head map, ablation curves",
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
    chg_parser.add_argument("--out", default="chg_out", help="folder for the PNG figures and CSV tables")
    chg_parser.add_argument("--adapter", choices=["huggingface", "transformer_lens"], default="huggingface")
    mc_parser = commands.add_parser(
        "mc", help="stochastic-ablation study: random head masks, fused many per forward pass (seed 003)",
        description="Evaluate random keep/ablate head masks on the seed-003 copy prompts with the default model, "
        "many masks per forward pass: the seed's importance and exclusion scores, outlier heads (checked by keeping "
        "or ablating only them), each head's effect on success with bootstrap intervals, and pairwise synergy. "
        "Every outcome goes to OUT/outcomes: run the same command again to resume or (larger --masks) extend.",
    )
    mc_parser.add_argument("--masks", type=int, default=None,
                           help="masks per phase (default: 10000 as the seed on a GPU, 100 on a CPU)")
    mc_parser.add_argument("--p-keep", default="auto",
                           help='"auto" (calibrated to 25%% / 75%% success, default) or the seed\'s "0.3,0.85"')
    mc_parser.add_argument("--prompts", default=None,
                           help="a text file of prompt<TAB>target lines (default: the seed-003 copy prompts)")
    mc_parser.add_argument("--seed", type=int, default=0, help="seed of the masks")
    mc_parser.add_argument("--top", type=int, default=10, help="heads listed per score (10)")
    mc_parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    mc_parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    mc_parser.add_argument("--out", default="mc_out", help="folder for figures, CSV tables and the outcome log")
    rec_parser = commands.add_parser(
        "receivers", help="receiver heads (Thought Anchors): kurtosis of vertical attention scores over traces",
        description="Scan every head's sentence-level attention over reasoning traces (one text file per trace, "
        "default: four built-in traces) and rank heads by the kurtosis of their vertical scores.",
    )
    rec_parser.add_argument("texts", nargs="*", help="text files, one reasoning trace each (default: built-in)")
    rec_parser.add_argument("--proximity", type=int, default=4, help="sentences ignored near the diagonal (4)")
    rec_parser.add_argument("--top", type=int, default=20, help="receiver heads to keep (default 20)")
    rec_parser.add_argument("--out", default="receivers_out", help="folder for the figure and CSV tables")
    sup_parser = commands.add_parser(
        "suppress", help="sentence-suppression KL matrix (Thought Anchors Figure 6) for one text",
        description="For each sentence, suppress attention to its tokens before softmax and measure the mean "
        "KL(baseline || suppressed) at every later sentence.",
    )
    sup_parser.add_argument("text", nargs="?", help="a text file (default: the first built-in reasoning trace)")
    sup_parser.add_argument("--heads", default=None, help='heads to suppress in, e.g. "L5H1 L9H2" (default: all)')
    sup_parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (authors: 0.6)")
    sup_parser.add_argument("--log", action="store_true", help="average log(KL + 1e-9) as the authors' figure")
    sup_parser.add_argument("--out", default="suppress_out", help="folder for the figure and CSV table")
    tri_parser = commands.add_parser(
        "triad", help="attention vs direct effect vs ablation effect per head, on a repeated random-token sequence",
    )
    tri_parser.add_argument("--length", type=int, default=10, help="random tokens before the repeat (10)")
    tri_parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens")
    tri_parser.add_argument("--top", type=int, default=10, help="rows of each top-k table (10)")
    tri_parser.add_argument("--out", default="triad_out", help="folder for the CSV table")
    for sub in (rec_parser, sup_parser):
        sub.add_argument("--adapter", choices=["huggingface", "transformer_lens"], default="huggingface")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            demo(adapter=args.adapter, heads=args.heads, top=args.top, repeats=args.repeats)
        elif args.command == "mc":
            mc(masks=args.masks, p_keep=args.p_keep, prompts=args.prompts, seed=args.seed, top=args.top,
               device=args.device, dtype=args.dtype, out_dir=args.out)
        elif args.command == "receivers":
            receivers(texts=args.texts, proximity_ignore=args.proximity, top=args.top, out_dir=args.out,
                      adapter=args.adapter)
        elif args.command == "suppress":
            suppress(text=args.text, heads=args.heads, temperature=args.temperature, log=args.log,
                     out_dir=args.out, adapter=args.adapter)
        elif args.command == "triad":
            triad(length=args.length, seed=args.seed, top=args.top, out_dir=args.out)
        else:
            try:
                ks = [int(k) for k in args.ks.split(",") if k.strip()]
            except ValueError:
                raise hk.HeadkitError(f"chg got --ks {args.ks!r}; expected head counts like 1,2,4,8. "
                                      "Fix: pass whole numbers separated by commas (empty to skip the curves)") from None
            chg(task=args.task, seeds=args.seeds, steps=args.steps, reg_steps=args.reg_steps,
                batch_size=args.batch_size, lam=args.lam, ks=ks, out_dir=args.out, adapter=args.adapter)
    except hk.HeadkitError as e:
        print(f"headkit: {e}", file=sys.stderr)
        return 2
    return 0


def demo(
    *,
    adapter: str = "huggingface",
    heads: str | None = None,
    top: int = 4,
    repeats: int = 3,
    out: Callable[[str], Any] = print,
) -> list[dict[str, Any]]:
    """Run every intervention on the copy task with the default model and print a table with timings.

    The heads default to those that attend most from the last token to the word being copied (found
    with capture_attention), i.e. induction-head candidates. Returns the table's rows.

    Example:
        >>> from headkit.cli import demo
        >>> rows = demo(heads="L5H1 L5H3")  # doctest: +SKIP
    """
    started = time.perf_counter()
    model, tokenizer = _default(adapter, None, None)
    backend = hk.get_backend(model, tokenizer)
    shape = backend.shape
    out(f"headkit demo: {hk.models.DEFAULT_MODEL} through the {adapter} adapter "
        f"({shape.n_layers} layers x {shape.n_heads} query heads, {shape.n_kv_heads} key/value head)")
    out(f"loaded in {time.perf_counter() - started:.1f} s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads on {platform.machine()}, float32\n")

    full = copy_task(tokenizer)
    with torch.no_grad():
        logits = backend.logits(full.input_ids, attention_mask=full.attention_mask, last_only=True)
    solved = score_next_token(logits[:, -1], full.targets).bool()
    task = full.subset(solved)
    out(f"copy task (seed 003): the full model completes {len(task)} of {len(full)} prompts; those are used below")
    if len(task) == 0:
        raise hk.HeadkitError("the default model solved none of the copy prompts; expected most. Fix: reinstall")

    chosen = hk.Heads(heads) if heads else _induction_heads(backend, task, top)
    chosen.validate(shape.n_layers, shape.n_heads, n_kv_heads=shape.n_kv_heads, owner="--heads")
    how = "given" if heads else "most attention from the last token to the copied word"
    out(f"heads: {chosen} ({how})\n")

    with torch.no_grad():
        means = hk.compute_means(model, task.input_ids, attention_mask=task.attention_mask)
    everything = hk.Heads.all(shape.n_layers, shape.n_heads)
    control = _random_heads(everything - chosen, len(chosen))
    half = torch.ones(shape.n_layers, shape.n_heads)
    half[chosen.mask(shape.n_layers, shape.n_heads)] = 0.5
    rows: list[tuple[str, str, list[Intervention]]] = [
        ("none", "-", []),
        ("zero_ablate", str(chosen), [hk.zero_ablate(chosen)]),
        ("mean_ablate (means over these prompts)", str(chosen), [hk.mean_ablate(chosen, means)]),
        ("gate 0.5", str(chosen), [hk.gate(half)]),
        ("mask_attention (first sentence keys)", str(chosen), [hk.mask_attention(chosen, keys=task.first_sentence)]),
        ("capture_attention (reads only)", str(chosen), [hk.capture_attention(chosen)]),
        ("zero_ablate, random heads (control)", str(control), [hk.zero_ablate(control)]),
        ("zero_ablate, every head", f"all {len(everything)}", [hk.zero_ablate(everything)]),
    ]
    table = []
    for name, head_text, interventions in rows:
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = backend.logits(task.input_ids, *interventions, attention_mask=task.attention_mask, last_only=True)
            times.append(time.perf_counter() - t0)
        table.append({
            "intervention": name,
            "heads": head_text,
            "correct": int(score_next_token(logits[:, -1], task.targets).sum()),
            "n": len(task),
            "logprob": float(score_next_token(logits[:, -1], task.targets, "logprob").mean()),
            "ms": 1000 * statistics.median(times),
        })
    _print_table(table, out)
    base = table[0]["ms"]
    out(f"\nms: median of {repeats} forward passes over all {len(task)} prompts (logits of the last token only); "
        f"interventions cost {min(r['ms'] for r in table[1:]) / base:.2f}x to {max(r['ms'] for r in table[1:]) / base:.2f}x "
        "the plain forward in this run.")
    return table


def chg(
    *,
    task: str = "copy",
    seeds: int = 2,
    steps: int = 100,
    reg_steps: int = 100,
    batch_size: int = 16,
    lam: float = 0.1,
    ks: Sequence[int] = (1, 2, 4, 8, 12, 16, 24, 32),
    out_dir: str = "chg_out",
    adapter: str = "huggingface",
    model: Any = None,
    tokenizer: Any = None,
    out: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Causal head gating on a built-in task with the default model: print roles, write figures and tables.

    Writes ``roles.png`` (Figure 3b), ``ablation_curves.png`` (Figure 2), ``taxonomy.csv``, ``scores.csv``
    and ``ablation_curves.csv`` into ``out_dir``. ``task="antonym"`` runs contrastive CHG instead (retain the
    instruction variant, forget the in-context one) and writes ``contrastive.png`` / ``contrastive.csv``.
    Returns what it computed.

    Example:
        >>> from headkit.cli import chg
        >>> results = chg(task="ioi", seeds=1, steps=20, reg_steps=20)  # doctest: +SKIP
    """
    import os

    from headkit import data, plots, prompts
    from headkit.analyses import gating

    started = time.perf_counter()
    _out_folder(out_dir)
    model, tokenizer = _default(adapter, model, tokenizer)
    backend = hk.get_backend(model, tokenizer)
    shape = backend.shape
    os.makedirs(out_dir, exist_ok=True)
    out(f"headkit chg: {task} task, {shape.n_layers} layers x {shape.n_heads} heads, {seeds} seed(s) batched, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if task == "antonym":
        retain, forget = data.antonym_pairs("instruction"), data.antonym_pairs("icl")
        full = [gating.sequence_logprob(backend, d).mean().item() for d in (retain, forget)]
        fitted = gating.fit_contrastive(backend, retain, forget, seeds=seeds, steps=steps, batch_size=batch_size,
                                        lam=lam)
        gated = [[gating.sequence_logprob(backend, d, fitted.G[s]).mean().item() for s in range(seeds)]
                 for d in (retain, forget)]
        out(f"contrastive CHG: retain the instruction variant, forget the in-context variant ({len(retain)} pairs)")
        out("  mean log p(target) per token   full model   gated (per seed)")
        for name, f, g in zip(("instruction (retain)", "in-context (forget)"), full, gated):
            out(f"  {name:<28} {f:>10.3f}   " + "  ".join(f"{x:.3f}" for x in g))
        table = fitted.table()
        out("\nheads turned off most (lowest mean gate):")
        out(table.head(8).round(3).to_string())
        table.to_csv(os.path.join(out_dir, "contrastive.csv"))
        fitted.plot(os.path.join(out_dir, "contrastive.png"))
        out(f"\nwrote {out_dir}/contrastive.png and contrastive.csv in {time.perf_counter() - started:.0f} s")
        return {"fit": fitted, "full": full, "gated": gated}

    pairs = {"copy": data.copy_pairs, "ioi": data.ioi_pairs, "arithmetic": data.arithmetic_pairs}[task]()
    data = prompts.examples(backend.tokenizer, pairs)
    fitted = gating.fit(backend, data, seeds=seeds, steps=steps, reg_steps=reg_steps, batch_size=batch_size, lam=lam)
    taxonomy = fitted.taxonomy()
    out(f"fitted in {time.perf_counter() - started:.0f} s on {len(data)} examples "
        f"(G: {steps} steps; G+ and G-: {reg_steps} steps, together)")
    out("\npercent of heads with score >= 0.5 in every seed (always) / in some seed (any):")
    out(fitted.summary().round(1).to_string())
    for name in gating.SCORES:
        top = taxonomy[name].nlargest(5)
        out(f"top {name:<13} " + ", ".join(f"L{l}H{h} {v:.2f}" for (l, h), v in top.items()))
    taxonomy.to_csv(os.path.join(out_dir, "taxonomy.csv"))
    fitted.scores().to_csv(os.path.join(out_dir, "scores.csv"))
    fitted.plot(os.path.join(out_dir, "roles.png"), title=f"CHG roles, {task} task")
    result: dict[str, Any] = {"fit": fitted, "taxonomy": taxonomy}
    if ks:
        curves = gating.ablation_curves(backend, data, fitted, ks=ks)
        curves.to_csv(os.path.join(out_dir, "ablation_curves.csv"), index=False)
        plots.ablation_curves(curves, path=os.path.join(out_dir, "ablation_curves.png"),
                              title=f"Figure 2 check, {task} task")
        mean = curves.groupby(["score", "k"])["delta"].mean().unstack("score")[list(gating.SCORES)]
        out("\nFigure 2 check: delta log p(target) per token when the top-k heads of each score are set to 0 vs 1")
        out("(expected: facilitation < 0, irrelevance ~ 0, interference > 0), mean over seeds:")
        out(mean.round(3).to_string())
        result["curves"] = curves
    out(f"\nwrote {out_dir}/roles.png, ablation_curves.png and CSV tables; total {time.perf_counter() - started:.0f} s")
    return result


def mc(
    *,
    masks: int | None = None,
    p_keep: str | tuple[float, float] = "auto",
    prompts: str | None = None,
    seed: int = 0,
    top: int = 10,
    device: str | None = None,
    dtype: str = "float32",
    out_dir: str = "mc_out",
    model: Any = None,
    tokenizer: Any = None,
    out: Callable[[str], Any] = print,
) -> Any:
    """The stochastic-ablation study on the default model: print the top heads and throughput, write figures.

    ``prompts`` is a text file of ``prompt<TAB>target`` lines (default: the seed-003 copy prompts).
    Writes ``scores.csv``, ``synergy.csv``, ``validation.csv`` and ``scores.png``, ``outliers.png``,
    ``synergy.png`` into ``out_dir``; every outcome is logged under ``out_dir/outcomes`` (running again
    resumes). Returns the :class:`headkit.analyses.stochastic_ablation.Study`.

    Example:
        >>> from headkit.cli import mc
        >>> result = mc(masks=200, p_keep=(0.3, 0.85))  # doctest: +SKIP
    """
    import os

    from headkit.analyses import stochastic_ablation

    started = time.perf_counter()
    device = _device(device)  # everything a user typed is checked before the model loads
    _out_folder(out_dir)
    if isinstance(p_keep, str) and p_keep != "auto":
        try:
            p_keep = tuple(float(p) for p in p_keep.split(","))  # type: ignore[assignment]
        except ValueError:
            raise hk.HeadkitError(f'mc got --p-keep {p_keep!r}; expected "auto" or two numbers like "0.3,0.85". '
                                  'Fix: pass --p-keep 0.3,0.85') from None
        if len(p_keep) != 2 or not all(0 < p <= 1 for p in p_keep):
            raise hk.HeadkitError(f"mc got --p-keep {','.join(map(str, p_keep))}; expected two keep probabilities "
                                  "in (0, 1]. Fix: pass --p-keep 0.3,0.85 (many ablated, few ablated)")
    if masks is not None and (isinstance(masks, bool) or not isinstance(masks, int) or masks < 2):
        raise hk.HeadkitError(f"mc got --masks {masks!r}; expected at least 2 masks per phase. "
                              "Fix: pass --masks 100 (the seed: 10000)")
    texts, targets = _read_pairs(prompts) if prompts else (None, None)
    if prompts and not texts:
        raise hk.HeadkitError(f"--prompts {prompts!r} holds no prompt<TAB>target lines; expected at least one. "
                              "Fix: write one prompt, a tab and its target per line")
    name = type(model).__name__
    if model is None:
        model, tokenizer = hk.load_default(device=device, dtype=getattr(torch, dtype))
        name = hk.models.DEFAULT_MODEL
    if masks is None:
        masks = 10_000 if device.startswith("cuda") else 100
    shape = hk.get_backend(model, tokenizer).shape
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    out(f"headkit mc: {name}, "
        f"{shape.n_layers} x {shape.n_heads} heads, {dtype} on {where}; torch {torch.__version__}")
    out(f"{masks} masks per phase, p_keep {p_keep}" + (" (pass --masks 10000 for the seed's full study)"
                                                        if masks < 10_000 else ""))
    result = stochastic_ablation.study(model, texts, targets, tokenizer=tokenizer, n_masks=masks, p_keep=p_keep,
                                       seed=seed, path=os.path.join(out_dir, "outcomes"))
    n = len(result.prompts)
    task = f"prompts of {prompts}" if prompts else "copy task (seed 003)"
    out(f"\n{task}: the full model completes {n} of {n + len(result.dropped)} prompts; those are used")
    for phase in result.phases.values():
        out(f"phase {phase.name:<13} p_keep {phase.p_keep:.3f}: success {100 * phase.success_rate:.1f}% of "
            f"{len(phase.masks)} masks x {n} prompts")
    out(f"\ntop {top} heads by importance (seed score); * = outlier; delta = P(success | kept) - P(success | ablated);\n"
        "effect = the same by least squares on all mask bits, [95% bootstrap interval]:")
    table = result.top(top, "importance")
    text = table[["importance", "exclusion"]].copy()
    for short in ("many", "few"):
        text[f"effect_{short}"] = [f"{e:+.3f} [{lo:+.3f}, {hi:+.3f}]" for e, lo, hi in
                                   zip(table[f"effect_{short}"], table[f"low_{short}"], table[f"high_{short}"])]
    text.index = [f"L{l}H{h}" + (" *" if o else "") for (l, h), o in zip(table.index, table["outlier"])]
    text["delta_many"], text["delta_few"] = table["delta_many"].to_numpy(), table["delta_few"].to_numpy()
    out(text[["importance", "exclusion", "delta_many", "delta_few", "effect_many", "effect_few"]].round(3).to_string())
    for by in ("exclusion", "delta_many", "delta_few"):
        out(f"top {top} by {by}: " + " ".join(f"L{l}H{h}" for l, h in result.top(top, by).index))
    out(f"\noutlier heads (* above; importance or exclusion above the 88th percentile, as the seed): "
        f"{len(result.outliers)}: {result.outliers}")
    out(result.validation.to_string())
    syn = result.phases["many_ablated"].counts.synergy()
    flat = syn.nan_to_num(0.0).triu(1)
    out("\nstrongest pairs (many-ablated phase; + synergy, - redundancy): " + ", ".join(
        f"L{i // shape.n_heads}H{i % shape.n_heads}+L{j // shape.n_heads}H{j % shape.n_heads} {syn[i, j]:+.3f}"
        for i, j in (divmod(int(k), syn.shape[0]) for k in flat.abs().flatten().topk(5).indices)))
    os.makedirs(out_dir, exist_ok=True)
    result.scores.to_csv(os.path.join(out_dir, "scores.csv"))
    result.synergy().to_csv(os.path.join(out_dir, "synergy.csv"))
    result.validation.to_csv(os.path.join(out_dir, "validation.csv"))
    result.plot(out_dir)
    if result.evaluations:
        out(f"\nthroughput: {result.evaluations:,} masked prompt-evaluations in {result.seconds:.1f} s = "
            f"{result.throughput:,.0f} evaluations/s ({result.throughput / n:,.1f} masks/s; up to "
            f"{result.log['rows_per_pass'] // n} masks = {result.log['rows_per_pass']} rows per forward pass)")
    else:
        out("\nthroughput: nothing evaluated (every outcome read back from the log)")
    out(f"wrote {out_dir}/scores.png, outliers.png, synergy.png and CSV tables; outcomes in {out_dir}/outcomes; "
        f"total {time.perf_counter() - started:.0f} s")
    return result


def _read_pairs(path: str) -> tuple[list[str], list[str]]:
    pairs = []
    for number, line in enumerate(_read_texts([path])[0].splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise hk.HeadkitError(
                f"--prompts {path}: line {number} ({line[:60]!r}) is not 'prompt<TAB>target'; expected one prompt, "
                "a tab and its target per line. Fix: separate them with a tab (the target keeps its leading space)"
            )
        pairs.append((parts[0], parts[1]))
    return [p for p, _ in pairs], [t for _, t in pairs]


def _read_texts(paths: Sequence[str]) -> list[str]:
    from headkit.data import reasoning_traces

    if not paths:
        return reasoning_traces()
    texts = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except OSError as error:
            raise hk.HeadkitError(
                f"could not read text file {path!r} ({error.strerror}); expected a readable UTF-8 text file. "
                "Fix: check the path"
            ) from None
        except UnicodeDecodeError as error:
            raise hk.HeadkitError(
                f"text file {path!r} is not UTF-8 (byte {error.start}: {error.reason}); expected a UTF-8 text file. "
                f"Fix: convert it, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt"
            ) from None
    return texts


def _out_folder(path: str, flag: str = "--out") -> str:
    """The output folder, refusing a path that is a file (before any work is done)."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise hk.HeadkitError(f"{flag} {path!r} is a file; expected a folder for the outputs (created if missing). "
                              f"Fix: pass a folder path, e.g. {flag} {os.path.splitext(path)[0] or 'out'}_dir")
    return path


def _device(device: str | None) -> str:
    """A torch device string that exists here, or a HeadkitError naming what is available."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise hk.HeadkitError(f"--device {device!r} is not a torch device; expected cpu, cuda, cuda:N or mps. "
                              "Fix: pass --device cpu (or leave it out for cuda when available)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise hk.HeadkitError(f"--device {device!r}, but this torch sees no CUDA device (torch {torch.__version__}); "
                              "expected a visible GPU. Fix: pass --device cpu, or install a CUDA build of torch")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise hk.HeadkitError(f"--device {device!r}, but only {torch.cuda.device_count()} CUDA devices are visible; "
                              "expected an index below that. Fix: pass --device cuda:0")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise hk.HeadkitError(f"--device {device!r}, but MPS is not available here; expected an Apple GPU. "
                              "Fix: pass --device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise hk.HeadkitError(f"--device {device!r} is not supported; expected cpu, cuda or mps. Fix: pass --device cpu")
    return device


def _default(adapter: str, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if model is None:
        model, tokenizer = hk.load_default()
        if adapter == "transformer_lens":
            model = _bridge(model, tokenizer)
    return model, tokenizer


def receivers(
    *,
    texts: Sequence[str] = (),
    proximity_ignore: int = 4,
    top: int = 20,
    out_dir: str = "receivers_out",
    adapter: str = "huggingface",
    model: Any = None,
    tokenizer: Any = None,
    out: Callable[[str], Any] = print,
) -> Any:
    """Receiver-head scan of text files (default: the built-in traces): print the top heads, write figures.

    Writes ``receivers.png`` (kurtosis by layer and the first trace's receiver scores), ``kurtosis.csv``
    and ``scores.csv`` (receiver score of every sentence of every trace) into ``out_dir``. Returns the scan.

    Example:
        >>> from headkit.cli import receivers
        >>> scan = receivers(texts=["trace1.txt", "trace2.txt"])  # doctest: +SKIP
    """
    import os

    import pandas as pd

    started = time.perf_counter()
    _out_folder(out_dir)
    contents = _read_texts(texts)  # bad files are named before the model loads
    model, tokenizer = _default(adapter, model, tokenizer)
    backend = hk.get_backend(model, tokenizer)
    traces = [hk.sentences.locate(backend.tokenizer, text) for text in contents]
    out(f"headkit receivers: {len(traces)} trace(s), {sum(len(t) for t in traces)} sentences, "
        f"{sum(t.n_tokens for t in traces)} tokens, {backend.shape.n_layers} layers x {backend.shape.n_heads} heads")
    scan = hk.receivers.scan(backend, traces, proximity_ignore=proximity_ignore)
    top = min(top, int(torch.isfinite(scan.kurtosis.mean(0)[1:]).sum()))
    heads = scan.top_heads(top)
    table = scan.table()
    out(f"\ntop {top} receiver heads (mean kurtosis of vertical scores over traces, layer 0 excluded):")
    out("  " + ", ".join(f"L{l}H{h} {table.loc[(l, h), 'kurtosis']:.2f}" for l, h in heads))
    if len(traces) >= 2:
        try:
            out(f"split-half reliability of head kurtosis (even vs odd traces): r = {scan.reliability():.2f}")
        except hk.HeadkitError as error:
            out(f"split-half reliability: not computed ({error})")
    os.makedirs(out_dir, exist_ok=True)
    table.to_csv(os.path.join(out_dir, "kurtosis.csv"))
    per_trace = [scan.scores(t, heads=heads) for t in range(len(traces))]
    pd.concat([table.assign(trace=t) for t, table in enumerate(per_trace)]).to_csv(os.path.join(out_dir, "scores.csv"))
    first = per_trace[0]
    out("\ntrace 0, sentences with the highest receiver scores:")
    for i, row in first.nlargest(3, "score").iterrows():
        out(f"  {i:>3}  {row['score']:.3f}  {row['text'][:90]}")
    scan.plot(os.path.join(out_dir, "receivers.png"), k=top)
    out(f"\nwrote {out_dir}/receivers.png, kurtosis.csv, scores.csv in {time.perf_counter() - started:.0f} s")
    return scan


def suppress(
    *,
    text: str | None = None,
    heads: str | None = None,
    temperature: float = 1.0,
    log: bool = False,
    out_dir: str = "suppress_out",
    adapter: str = "huggingface",
    model: Any = None,
    tokenizer: Any = None,
    out: Callable[[str], Any] = print,
) -> Any:
    """Sentence-suppression KL matrix of a text file (default: the first built-in trace); print and plot it.

    Writes ``suppression.png`` (rows centred, upper triangle blank) and ``suppression.csv`` (long format).

    Example:
        >>> from headkit.cli import suppress
        >>> result = suppress(text="trace.txt", temperature=0.6, log=True)  # doctest: +SKIP
    """
    import os

    started = time.perf_counter()
    _out_folder(out_dir)
    content = _read_texts([text] if text else [])[0]  # a bad file is named before the model loads
    if heads is not None:
        heads = hk.Heads.parse(heads)  # so is a misspelt --heads
    model, tokenizer = _default(adapter, model, tokenizer)
    backend = hk.get_backend(model, tokenizer)
    sentences = hk.sentences.locate(backend.tokenizer, content)
    out(f"headkit suppress: {len(sentences)} sentences, {sentences.n_tokens} tokens, "
        f"heads: {heads or 'all'}, temperature {temperature}")
    result = hk.suppression.kl_matrix(backend, sentences, heads=heads, temperature=temperature, log=log)
    table = result.table()
    influence = table.groupby("suppressed")["kl"].mean()
    out("\nsentences whose suppression moves later sentences most (mean over later sentences):")
    for j, value in influence.nlargest(4).items():
        out(f"  {j:>3}  {value:.4f}  {sentences.texts[j][:90]}")
    os.makedirs(out_dir, exist_ok=True)
    table.to_csv(os.path.join(out_dir, "suppression.csv"), index=False)
    result.plot(os.path.join(out_dir, "suppression.png"))
    out(f"\nwrote {out_dir}/suppression.png and suppression.csv in {time.perf_counter() - started:.0f} s")
    return result


def triad(
    *,
    length: int = 10,
    seed: int = 0,
    top: int = 10,
    out_dir: str = "triad_out",
    model: Any = None,
    tokenizer: Any = None,
    out: Callable[[str], Any] = print,
) -> Any:
    """The induction triad on the default model: a random token sequence repeated once, the last token predicted.

    Prints the top heads by attention, direct effect and ablation effect, and how far the three agree;
    writes ``triad.csv``. Returns the :class:`headkit.analyses.triad.Triad`.

    Example:
        >>> from headkit.cli import triad
        >>> result = triad(length=10, seed=0)  # doctest: +SKIP
    """
    import os

    started = time.perf_counter()
    _out_folder(out_dir)
    model, tokenizer = _default("huggingface", model, tokenizer)
    bos = tokenizer.bos_token_id
    n_vocab = model.get_output_embeddings().weight.shape[0]
    low = min(1000, n_vocab // 4)  # skip special and byte tokens at the start of the vocabulary
    vocab = range(low, min(n_vocab, low + 20000))
    ids, query, key = hk.triad.induction_sequence(length, vocab, seed=seed, bos=bos)
    result = hk.triad.triad(model, ids, query=query, key=key)
    out(f"headkit triad: {length} random tokens repeated; query = position {query}, key = position {key} "
        f"(the earlier {tokenizer.decode([result.target])!r}); P(target) = {result.p_target:.3f}")
    for metric in hk.triad.METRICS:
        out(f"\ntop {top} by {metric}:")
        out(result.top(metric, top).round(4).to_string())
    out(f"\noverlap of the top-{top} sets:")
    out(result.overlap(top).to_string())
    os.makedirs(out_dir, exist_ok=True)
    result.table.to_csv(os.path.join(out_dir, "triad.csv"))
    out(f"\nwrote {out_dir}/triad.csv in {time.perf_counter() - started:.0f} s")
    return result


def _induction_heads(backend: Any, task: Task, top: int) -> hk.Heads:
    """Heads with the most attention from the last token to the earlier copy of the answer."""
    shape = backend.shape
    capture = hk.capture_attention(hk.Heads.all(shape.n_layers, shape.n_heads))
    with torch.no_grad():
        got = backend.run(task.input_ids, capture, attention_mask=task.attention_mask, last_only=True).captures
    target_keys = (task.input_ids == task.targets[:, None]) & task.first_sentence  # [n, pos]
    last_row = got[capture].patterns[:, :, -1, :]  # [n, heads, key]
    score = (last_row * target_keys[:, None, :]).sum(-1).mean(0)  # [heads]
    best = score.topk(min(top, score.numel())).indices.tolist()
    return hk.Heads([capture.heads.pairs[i] for i in best])


def _random_heads(pool: hk.Heads, k: int) -> hk.Heads:
    generator = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(pool), generator=generator)[:k].tolist()
    return hk.Heads([pool.pairs[i] for i in pick])


def _bridge(model: Any, tokenizer: Any) -> Any:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise hk.HeadkitError(
            "--adapter transformer_lens found no transformer_lens.model_bridge (TransformerLens is not installed, "
            "or it is 2.x, which has no TransformerBridge); expected TransformerLens 3.x or 4.x, which can wrap "
            "the default model. Fix: pip install 'headkit[transformer-lens]' in a fresh environment, or drop "
            "--adapter (a 2.x HookedTransformer works through the Python API: hk.get_backend(model, tokenizer))"
        ) from None
    return TransformerBridge.boot_transformers("gemma-3-270m", hf_model=model, tokenizer=tokenizer, device="cpu")


def _print_table(table: list[dict[str, Any]], out: Callable[[str], Any]) -> None:
    head_width = max(12, *(len(r["heads"]) for r in table))
    header = f"{'intervention':<40} {'heads':<{head_width}} {'top-1':>9} {'log p(answer)':>14} {'ms':>8}"
    out(header)
    out("-" * len(header))
    for r in table:
        out(f"{r['intervention']:<40} {r['heads']:<{head_width}} {r['correct']:>4}/{r['n']:<4} "
            f"{r['logprob']:>14.3f} {r['ms']:>8.0f}")


if __name__ == "__main__":
    sys.exit(main())
