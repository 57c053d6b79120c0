"""The prepared benchmark suite: every speed claim headkit makes, on named shapes, into one results folder.

    python -m headkit.bench_suite --out results/gpu            # on one GPU, bfloat16 (benchmarks/gpu.sh)
    python -m headkit.bench_suite --quick --out /tmp/quick     # the same code at toy sizes, on a CPU (CI)

It needs only torch and transformers (models are named shapes with random weights, :data:`headkit.bench.SHAPES`:
speed does not depend on the weights) and measures, interleaved over rounds (medians):

1. **throughput** per shape: seed 003's naive loop vs the fused engine vs a plain forward of the same rows
   (:func:`headkit.bench.throughput`), 57 prompts, >= 2,000 masks;
2. **the seed's full study** (2 x 10,000 masks x 57 prompts) end to end on the Pythia-160M shape;
3. **CHG**: one batched fit of 10 seeds vs one seed, the same steps (:func:`chg_seeds`);
4. **suppression**: the KL matrix with many suppressed sentences per pass vs one per pass (:func:`suppression`);
5. **precision**: bfloat16 vs float32 top-1 decisions under the same random masks (:func:`precision`).

Each part is written as soon as it is done (``part.json``; ``summary.md`` and ``suite.json`` at the end,
with the figures against the targets), so a run stopped by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from headkit.bench import SHAPES, interleaved, random_prompts, run, shape_model
from headkit.core.errors import fail

__all__ = ["chg_seeds", "suppression", "precision", "suite", "PARTS", "TARGETS"]

PARTS = ("throughput", "study", "chg", "suppression", "precision")
"""The suite's parts, in the order they run (:func:`suite`'s ``parts`` picks some)."""

TARGETS = {
    "fused_over_naive": (">=", 50.0, "fused >= 50x the naive loop (Pythia-160M shape, 57 prompts, bf16)"),
    "fused_time_over_plain": ("<=", 1.0, "fused time <= 1.0x a plain forward of the same rows"),
    "study_seconds": ("<=", 15.0, "the seed's full study (2 x 10,000 masks x 57 prompts) in <= 15 s"),
    "chg_ten_over_one": ("<=", 2.0, "CHG: 10 seeds in <= 2x the time of one"),
}
"""The GPU targets the suite reports against (issue: on one H100/H200, bfloat16)."""


def chg_seeds(backend: Any, prompts: Any, *, seeds: int = 10, steps: int = 3, batch_size: int = 16, rounds: int = 3,
              device: str | torch.device = "cpu") -> dict[str, Any]:
    """Seconds of one CHG fit of ``seeds`` seeds (batched) vs one seed, same recipe and steps; medians of rounds.

    Example:
        >>> import headkit as hk
        >>> from headkit.bench_suite import chg_seeds
        >>> model, tok = hk.models.tiny("llama")
        >>> data = hk.prompts.Prompts.from_tokens([[1, 5, 6], [1, 7, 8]], [[9], [10]])
        >>> r = chg_seeds(hk.get_backend(model), data, seeds=2, steps=1, batch_size=2, rounds=1)
        >>> sorted(r["seconds"]), r["seeds"]
        (['many', 'one'], 2)
    """
    from headkit.analyses import gating

    kw = dict(steps=steps, reg_steps=steps, batch_size=batch_size, progress=False)
    runs = {"one": lambda: gating.fit(backend, prompts, seeds=1, **kw),
            "many": lambda: gating.fit(backend, prompts, seeds=seeds, **kw)}
    times, _ = interleaved(runs, rounds, device, warmup=True)
    one, many = statistics.median(times["one"]), statistics.median(times["many"])
    return {"seeds": seeds, "steps": steps, "batch_size": batch_size, "seconds": times, "one_s": one, "many_s": many,
            "ratio": many / one}


def _sentences(n: int, length: int, vocab: int, seed: int = 0) -> Any:
    """A text of ``n`` random-token sentences of ``length`` tokens each (after a first token), for shapes
    without a tokenizer."""
    from headkit.sentences import Sentences

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (1, 1 + n * length), generator=g)
    spans = [(1 + i * length, 1 + (i + 1) * length) for i in range(n)]
    return Sentences("", [f"sentence {i}" for i in range(n)], ids, spans, [(0, 0)] * n)


def suppression(backend: Any, *, sentences: int = 48, length: int = 20, rows_per_pass: int = 8, rounds: int = 3,
                device: str | torch.device = "cpu") -> dict[str, Any]:
    """Seconds of the sentence-suppression KL matrix with ``rows_per_pass`` sentences per pass vs one per pass.

    Both give the same matrix (largest difference reported).

    Example:
        >>> import headkit as hk
        >>> from headkit.bench_suite import suppression
        >>> model, _ = hk.models.tiny("llama")
        >>> r = suppression(hk.get_backend(model), sentences=4, length=3, rows_per_pass=2, rounds=1)
        >>> r["sentences"], r["max_difference"] < 1e-5
        (4, True)
    """
    from headkit.analyses.suppression import kl_matrix

    text = _sentences(sentences, length, backend.vocab_size)
    text.input_ids = text.input_ids.to(backend.device)
    runs = {"per_sentence": lambda: kl_matrix(backend, text, rows_per_pass=1, progress=False).matrix,
            "batched": lambda: kl_matrix(backend, text, rows_per_pass=rows_per_pass, progress=False).matrix}
    times, got = interleaved(runs, rounds, device, warmup=True)
    diff = float((got["batched"] - got["per_sentence"]).abs().nan_to_num(0).max())
    one, many = statistics.median(times["per_sentence"]), statistics.median(times["batched"])
    return {"sentences": sentences, "tokens": int(text.input_ids.shape[1]), "rows_per_pass": rows_per_pass,
            "seconds": times, "per_sentence_s": one, "batched_s": many, "speedup": one / many, "max_difference": diff}


def precision(shape: str, *, masks: int = 2000, prompts: int = 57, device: str = "cpu",
              p_keep: float = 0.85) -> dict[str, Any]:
    """bfloat16 vs float32 top-1 decisions of the same random-weight model under the same random masks.

    Targets are the float32 model's own top-1 tokens; a disagreement whose float32 margin is below
    bfloat16's resolution at that logit (2^-8 of its size) is a near-tie, not an error.

    Example:
        >>> from headkit.bench_suite import precision
        >>> r = precision("gpt2-small", masks=2, prompts=2)
        >>> r["evaluations"], 0.0 <= r["agree"] <= 1.0
        (4, True)
    """
    import headkit as hk
    from headkit.analyses import montecarlo

    full = shape_model(shape, device=device, dtype=torch.float32)
    backend = hk.get_backend(full)
    ids, attn = random_prompts(prompts, backend.vocab_size, device)
    with torch.no_grad():
        logits = backend.logits(ids, attention_mask=attn, last_only=True)[:, -1]
    targets = logits.argmax(-1).cpu()
    s = backend.shape
    drawn = montecarlo.bernoulli(masks, p_keep, s.n_layers, s.n_heads, seed=0)
    kw = dict(attention_mask=attn, metric="margin", progress=False)
    fp32 = montecarlo.evaluate(backend, ids, targets, drawn, **kw)
    half = hk.get_backend(full.to(torch.bfloat16))
    bf16 = montecarlo.evaluate(half, ids, targets, drawn, **kw)
    differ = (fp32 > 0) != (bf16 > 0)
    resolution = logits.float().abs().max(-1).values.cpu() * 2.0**-8  # per prompt
    near = fp32.abs() < resolution[None, :]
    return {"shape": shape, "masks": masks, "prompts": prompts, "evaluations": masks * prompts,
            "agree": 1 - float(differ.float().mean()), "disagreements": int(differ.sum()),
            "disagreements_near_ties": int((differ & near).sum()),
            "median_abs_margin_fp32": float(fp32.abs().median())}


def suite(out_dir: str | Path, *, quick: bool = False, device: str | None = None,
          shapes: Sequence[str] | None = None, parts: Sequence[str] | None = None,
          say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the suite's parts (all of :data:`PARTS` by default) into ``out_dir``; returns what :func:`summary_text` reports.

    ``quick`` runs the same code at toy sizes (a CPU check of the suite, not a measurement); the whole quick
    suite takes about 25 s on a CPU (tests/test_bench_suite.py runs it).

    Example:
        >>> import tempfile
        >>> from headkit.bench_suite import suite
        >>> with tempfile.TemporaryDirectory() as out:
        ...     record = suite(out, quick=True, parts=["precision"], say=lambda text: None)
        >>> sorted(record["parts"]), record["parts"]["precision"]["evaluations"]
        (['precision'], 32)
    """
    import headkit as hk

    unknown = sorted(set(parts or ()) - set(PARTS))
    if unknown:
        raise fail(f"unknown suite part(s) {unknown}", f"some of {list(PARTS)}", "leave parts out to run them all")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    where = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if where.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dtype = "float32" if quick else "bfloat16"
    size = dict(masks=4, naive_masks=2, prompts=4, rounds=1, study=8, chg_seeds=2, chg_steps=1, chg_batch=2,
                sentences=4, length=4, rows=2, precision_masks=8) if quick else \
        dict(masks=2000, naive_masks=100, prompts=57, rounds=3, study=10_000, chg_seeds=10, chg_steps=10, chg_batch=16,
             sentences=48, length=20, rows=8, precision_masks=2000)
    chosen = list(shapes or (("pythia-160m", "gpt2-small") if quick else SHAPES))
    record: dict[str, Any] = {
        "meta": {"device": where, "device_name": torch.cuda.get_device_name(where) if where.startswith("cuda")
                 else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads",
                 "dtype": dtype, "quick": quick, "sizes": size, "torch": torch.__version__,
                 "transformers": _version("transformers"), "headkit": hk.__version__, "python": platform.python_version(),
                 "tf32": False if where.startswith("cuda") else None},
        "parts": {},
    }

    def part(name: str, fn: Callable[[], Any]) -> None:
        started = time.perf_counter()
        say(f"== {name}")
        record["parts"][name] = fn()
        (out / f"{name}.json").write_text(json.dumps(record["parts"][name], indent=1, default=str))
        say(f"   done in {time.perf_counter() - started:.1f} s")

    def throughput() -> dict[str, Any]:
        got = {}
        for shape in chosen:
            b = run(shape=shape, device=where, dtype=dtype, masks=size["masks"], naive_masks=size["naive_masks"],
                    prompts=size["prompts"], rounds=size["rounds"], overhead_rounds=0,
                    command=f"headkit.bench.run(shape={shape!r}, dtype={dtype!r}, masks={size['masks']}, ...)")
            b.save(out / shape)
            t = b.throughput or {}
            say(f"   {shape}: fused {t['fused_over_naive']:.1f}x naive, fused time {t['fused_time_over_plain']:.2f}x "
                f"plain, {t['masks_per_pass']} masks per pass")
            got[shape] = {k: t[k] for k in ("evals_per_s", "fused_over_naive", "fused_time_over_plain",
                                             "masks_per_pass", "decisions_agree", "seconds", "naive_masks")}
        return got

    def study() -> dict[str, Any]:
        b = run(shape=chosen[0], device=where, dtype=dtype, masks=1, prompts=size["prompts"], rounds=1,
                study=size["study"], overhead_rounds=0, command=f"headkit.bench.run(..., study={size['study']})")
        say(f"   {chosen[0]}: 2 x {size['study']} masks in {(b.study or {})['seconds']:.1f} s")
        return {"shape": chosen[0], **(b.study or {})}

    def backend_of(shape: str) -> Any:
        return hk.get_backend(shape_model(shape, device=where, dtype=hk.models.dtype_of(dtype)))

    def chg() -> dict[str, Any]:
        backend = backend_of(chosen[0])
        ids, attn = random_prompts(max(64, size["chg_batch"]), backend.vocab_size)
        g = torch.Generator().manual_seed(1)
        rows = [row[m.bool()].tolist() for row, m in zip(ids, attn)]
        data = hk.prompts.Prompts.from_tokens(rows, [torch.randint(10, backend.vocab_size, (2,), generator=g).tolist()
                                                     for _ in rows])
        r = chg_seeds(backend, data, seeds=size["chg_seeds"], steps=size["chg_steps"], batch_size=size["chg_batch"],
                      rounds=size["rounds"], device=where)
        say(f"   {size['chg_seeds']} seeds {r['many_s']:.2f} s vs 1 seed {r['one_s']:.2f} s: {r['ratio']:.2f}x")
        return {"shape": chosen[0], **r}

    def sup() -> dict[str, Any]:
        r = suppression(backend_of(chosen[0]), sentences=size["sentences"], length=size["length"],
                        rows_per_pass=size["rows"], rounds=size["rounds"], device=where)
        say(f"   {r['sentences']} sentences: batched {r['batched_s']:.2f} s vs one per pass {r['per_sentence_s']:.2f} s "
            f"({r['speedup']:.2f}x), largest difference {r['max_difference']:.2g}")
        return {"shape": chosen[0], **r}

    def prec() -> dict[str, Any]:
        r = precision(chosen[0], masks=size["precision_masks"], prompts=size["prompts"], device=where)
        say(f"   bf16 agrees with fp32 on {r['agree']:.2%} of {r['evaluations']} decisions "
            f"({r['disagreements_near_ties']} of {r['disagreements']} disagreements are near-ties)")
        return r

    run_part = {"throughput": throughput, "study": study, "chg": chg, "suppression": sup, "precision": prec}
    for name in PARTS:
        if parts is None or name in parts:
            part(name, run_part[name])
    (out / "suite.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "summary.md").write_text(summary_text(record) + "\n")
    say(summary_text(record))
    return record


def summary_text(record: dict[str, Any]) -> str:
    """The suite's figures against :data:`TARGETS`, as markdown (targets are for one H100/H200 in bfloat16).

    Example:
        >>> from headkit.bench_suite import summary_text
        >>> rec = {"meta": {"device_name": "cpu", "dtype": "float32", "quick": True, "torch": "2", "transformers": "5",
        ...                 "headkit": "0.1", "python": "3.11", "device": "cpu", "sizes": {}}, "parts": {}}
        >>> summary_text(rec).splitlines()[0]
        '# headkit GPU suite: cpu, float32 (quick: toy sizes, not a measurement)'
    """
    m, p = record["meta"], record["parts"]
    lines = [f"# headkit GPU suite: {m['device_name']}, {m['dtype']}"
             + (" (quick: toy sizes, not a measurement)" if m["quick"] else ""), "",
             f"- versions: torch {m['torch']}, transformers {m['transformers']}, headkit {m['headkit']}, "
             f"Python {m['python']}; TF32 {m.get('tf32')}",
             f"- sizes: {json.dumps(m['sizes'])}", "- command: `benchmarks/gpu.sh"
             + (" --quick" if m["quick"] else "") + "` (python -m headkit.bench_suite)", ""]
    if "throughput" in p:
        lines += ["## Throughput (medians of interleaved rounds; random weights)", "",
                  "| shape | naive evals/s | fused evals/s | plain evals/s | fused / naive | fused time / plain | "
                  "masks per pass | decisions agree |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for shape, t in p["throughput"].items():
            r = t["evals_per_s"]
            lines.append(f"| {shape} | {r['naive']:.0f} | {r['fused']:.0f} | {r['plain']:.0f} | "
                         f"{t['fused_over_naive']:.1f}x | {t['fused_time_over_plain']:.2f}x | {t['masks_per_pass']} | "
                         f"{t['decisions_agree']:.2%} |")
        lines.append("")
    if "study" in p:
        s = p["study"]
        lines += [f"## The seed's study: 2 x {s['masks']} masks x {s['prompts']} prompts ({s['shape']} shape)", "",
                  f"{s['seconds']:.1f} s end to end, {s['evals_per_s']:.0f} evals/s, {s['masks_per_pass']} masks per "
                  "pass", ""]
    if "chg" in p:
        c = p["chg"]
        lines += [f"## CHG: {c['seeds']} seeds vs 1 ({c['shape']} shape, {c['steps']} + {c['steps']} steps, "
                  f"batch {c['batch_size']})", "",
                  f"{c['many_s']:.2f} s vs {c['one_s']:.2f} s: {c['ratio']:.2f}x the time for {c['seeds']}x the fits",
                  ""]
    if "suppression" in p:
        s = p["suppression"]
        lines += [f"## Suppression: {s['sentences']} sentences, {s['tokens']} tokens ({s['shape']} shape)", "",
                  f"{s['rows_per_pass']} sentences per pass {s['batched_s']:.2f} s vs one per pass "
                  f"{s['per_sentence_s']:.2f} s: {s['speedup']:.2f}x; largest difference {s['max_difference']:.2g}", ""]
    if "precision" in p:
        q = p["precision"]
        lines += [f"## bfloat16 vs float32 decisions ({q['shape']} shape, {q['masks']} masks x {q['prompts']} prompts)",
                  "", f"agree on {q['agree']:.2%}; {q['disagreements']} disagreements, {q['disagreements_near_ties']} "
                  f"of them near-ties (float32 margin below bf16's resolution); median |margin| "
                  f"{q['median_abs_margin_fp32']:.3g} (random weights: margins are small, so this is a harsh case)", ""]
    figures = _figures(p)
    if figures:
        lines += ["## Against the targets (one H100/H200, bfloat16)", "", "| target | measured | met |", "|---|---:|---|"]
        for key, (op, bound, text) in TARGETS.items():
            if key in figures:
                value = figures[key]
                met = value >= bound if op == ">=" else value <= bound
                lines.append(f"| {text} | {value:.2f} | {'yes' if met else 'no'}{' (quick)' if m['quick'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def _figures(parts: dict[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    pythia = parts.get("throughput", {}).get("pythia-160m")
    if pythia:
        found["fused_over_naive"] = pythia["fused_over_naive"]
        found["fused_time_over_plain"] = pythia["fused_time_over_plain"]
    if "study" in parts:
        found["study_seconds"] = parts["study"]["seconds"]
    if "chg" in parts:
        found["chg_ten_over_one"] = parts["chg"]["ratio"]
    return found


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m headkit.bench_suite``: parse the flags and run :func:`suite`."""
    parser = argparse.ArgumentParser(prog="python -m headkit.bench_suite", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu", help="the results folder")
    parser.add_argument("--quick", action="store_true", help="toy sizes in float32: check that it runs (CPU, CI)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--shapes", default=None, help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--parts", default=None, help=f"comma-separated, from {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)

    def listed(text: str | None) -> list[str] | None:
        return [item.strip() for item in text.split(",")] if text else None

    suite(args.out, quick=args.quick, device=args.device, shapes=listed(args.shapes), parts=listed(args.parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
