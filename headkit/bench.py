"""Ablation throughput on your model and device: the naive loop, the fused engine and a plain forward, side by side.

:func:`run` measures, interleaved over rounds (medians):

- ``naive``: seed 003's way, one forward pass of the whole prompt batch per head mask, full-vocabulary
  logits, the ablated heads zeroed by a hook, top-1 read at each prompt's last token;
- ``fused``: :func:`headkit.analyses.montecarlo.evaluate`, many masks per pass (per-row gates), last-token
  logits only, at the rows per pass its throughput tuner settles on (tuned once before the rounds);
- ``plain``: the same rows as the fused passes without any hook, last-token logits only;

checks that the fused decisions equal the naive loop's, and optionally times the whole stochastic-ablation
study and each installed adapter's per-forward overhead. Models are the user's (a model object or a
folder) or a named shape with random weights (:data:`SHAPES`; speed does not depend on the weights).
:class:`Bench` prints itself and writes JSON (every raw timing) and markdown. ``headkit bench`` is the
command; the scripts in ``benchmarks/`` call this module.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import fail

if TYPE_CHECKING:
    from jaxtyping import Int

__all__ = ["SHAPES", "shape_model", "random_prompts", "interleaved", "throughput", "overhead", "run", "Bench"]

SHAPES: dict[str, dict[str, Any]] = {
    "pythia-160m": dict(model_type="gpt_neox", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25),
    "gpt2-small": dict(model_type="gpt2", n_layer=12, n_head=12, n_embd=768, vocab_size=50257),
    "gemma-3-270m": dict(model_type="gemma3_text", hidden_size=640, num_hidden_layers=18, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=256, intermediate_size=2048, vocab_size=262144,
                         sliding_window=512, max_position_embeddings=32768, rope_theta=1_000_000.0,
                         query_pre_attn_scalar=256),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500_000.0, tie_word_embeddings=True),
}
"""Model shapes :func:`shape_model` builds with random weights (the real models' sizes)."""


def shape_model(name: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                attn_implementation: str = "sdpa", seed: int = 0) -> Any:
    """A transformers model of a named shape (:data:`SHAPES`) with random weights, in eval mode.

    Example:
        >>> import headkit as hk
        >>> from headkit.bench import shape_model
        >>> hk.get_backend(shape_model("gpt2-small", device="meta")).shape
        ModelShape(n_layers=12, n_heads=12, d_head=64, n_kv_heads=12)
    """
    if name not in SHAPES:
        raise fail(f"bench got --shape {name!r}", f"one of {', '.join(SHAPES)}", "pass --shape gpt2-small")
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):  # built where it runs: "meta" gives the shape without memory or time
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype=dtype).eval()


def random_prompts(n: int, vocab: int, device: str | torch.device = "cpu",
                   seed: int = 0) -> tuple[Int[torch.Tensor, "n pos"], Int[torch.Tensor, "n pos"]]:
    """``n`` random token sequences of 12-16 tokens (the seed-003 copy prompts' lengths), left-padded, and their mask.

    Example:
        >>> from headkit.bench import random_prompts
        >>> ids, mask = random_prompts(4, 1000)
        >>> ids.shape[0], bool(mask[:, -1].all()), 12 <= int(mask.sum(-1).min())
        (4, True, True)
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, 17, (n,), generator=g)
    width = int(lengths.max())
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        ids[row, width - length :] = torch.randint(10, vocab, (length,), generator=g)
        mask[row, width - length :] = 1
    return ids.to(device), mask.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int, device: torch.device | str = "cpu",
                warmup: bool = False) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time each run once per round, in turn (so drift hits all alike): seconds per call, and each one's last result.

    On CUDA the device is synchronised around every call. ``warmup`` calls each once first, untimed.

    Example:
        >>> from headkit.bench import interleaved
        >>> times, results = interleaved({"a": lambda: 1, "b": lambda: 2}, rounds=3)
        >>> [len(t) for t in times.values()], results
        ([3, 3], {'a': 1, 'b': 2})
    """
    device = torch.device(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    if warmup:
        for fn in runs.values():
            fn()
    for _ in range(rounds):
        for name, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            results[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times, results


def throughput(backend: Any, ids: Int[torch.Tensor, "prompt pos"], attention_mask: Int[torch.Tensor, "prompt pos"],
               *, masks: int = 16, rounds: int = 3, p_keep: float = 0.85, seed: int = 0,
               naive_masks: int | None = None) -> dict[str, Any]:
    """Naive loop vs fused engine vs plain forward on these prompts: evaluations per second and raw timings.

    Targets are the full model's own top-1 tokens; the masks are Bernoulli(``p_keep``) keep/ablate masks.
    The naive loop runs the first ``naive_masks`` masks (default: all; its rate per mask does not depend on
    how many, and on a GPU thousands of its passes would take most of a benchmark's time). The decisions of
    the masks both ran are compared: in float32/float64 a difference raises; in bfloat16/float16 near-ties
    can flip between the two ways of ablating, so the agreeing fraction is reported.

    Example:
        >>> import headkit as hk
        >>> from headkit.bench import random_prompts, throughput
        >>> model, _ = hk.models.tiny("llama")
        >>> ids, mask = random_prompts(4, 100)
        >>> t = throughput(hk.get_backend(model), ids, mask, masks=4, rounds=1)
        >>> sorted(t["evals_per_s"]), t["evaluations"], t["decisions_equal"]
        (['fused', 'naive', 'plain'], 16, True)
    """
    import headkit as hk
    from headkit.analyses import montecarlo
    from headkit.sweep import RowSizer

    shape, device = backend.shape, backend.device
    n = ids.shape[0]
    drawn = montecarlo.bernoulli(masks, p_keep, shape.n_layers, shape.n_heads, seed=seed)
    with torch.no_grad():
        targets = backend.logits(ids, attention_mask=attention_mask, last_only=True)[:, -1].argmax(-1).cpu()
    probe = RowSizer(None, masks * n, step=n)  # tune once, from one whole mask: what a long run settles on
    with torch.no_grad():
        while not probe.settled:
            m = max(1, probe.size // n)  # whole masks, as the engine packs them
            _sync(device)
            t0 = time.perf_counter()
            backend.logits(ids.repeat(m, 1), hk.gate(drawn[:m].float().repeat_interleave(n, 0)),
                           attention_mask=attention_mask.repeat(m, 1), last_only=True)
            _sync(device)
            probe.record(m * n, time.perf_counter() - t0)
    per_pass = max(1, probe.size // n)

    n_naive = masks if naive_masks is None else max(1, min(masks, naive_masks))

    def naive() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for mask in drawn[:n_naive]:
                off = ~mask
                ivs = [hk.zero_ablate(hk.Heads(off))] if off.any() else []
                logits = backend.logits(ids, *ivs, attention_mask=attention_mask)  # full logits, as seed 003
                out.append(logits[:, -1].argmax(-1).cpu() == targets)
        return torch.stack(out).float()

    def fused() -> torch.Tensor:
        return montecarlo.evaluate(backend, ids, targets, drawn, attention_mask=attention_mask,
                                   rows_per_pass=per_pass * n, progress=False)

    def plain() -> None:
        with torch.no_grad():
            for start in range(0, masks, per_pass):
                rows = min(per_pass, masks - start)
                backend.logits(ids.repeat(rows, 1), attention_mask=attention_mask.repeat(rows, 1), last_only=True)

    times, results = interleaved({"naive": naive, "fused": fused, "plain": plain}, rounds, device)
    agree = float((results["naive"] == results["fused"][:n_naive]).float().mean())
    exact = backend.dtype in (torch.float32, torch.float64)
    if exact and agree < 1:
        raise fail(f"bench: the fused decisions differ from the naive loop's ({1 - agree:.2%} of them) in "
                   f"{backend.dtype}", "the same top-1 decisions", "report this with the model and dtype")
    evals = masks * n
    rate = {k: evals / statistics.median(v) for k, v in times.items()}
    rate["naive"] = n_naive * n / statistics.median(times["naive"])
    return {"masks": masks, "naive_masks": n_naive, "prompts": n, "evaluations": evals, "masks_per_pass": per_pass,
            "p_keep": p_keep, "seconds": times, "evals_per_s": rate, "fused_over_naive": rate["fused"] / rate["naive"],
            "fused_time_over_plain": rate["plain"] / rate["fused"], "decisions_equal": agree == 1,
            "decisions_agree": agree}


def overhead(model: Any, tokenizer: Any, ids: Int[torch.Tensor, "batch pos"], *, rounds: int = 10) -> dict[str, Any]:
    """Per-forward cost of each intervention through each installed adapter, as ratios to its plain forward.

    ``model`` is a transformers model; TransformerLens (a bridge on a copy) and nnsight (a traced copy)
    are measured when installed. Heads: two (or four) of the middle and late layers; all variants
    interleaved, one call each per round, medians.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.bench import overhead
        >>> model, tok = hk.models.tiny("llama")
        >>> o = overhead(model, tok, torch.randint(4, 100, (2, 8)), rounds=2)
        >>> o["ratio"]["transformers: plain forward"]
        1.0
    """
    import copy
    import importlib.util

    import headkit as hk
    from headkit.adapters import huggingface as hk_hf

    shape = hk_hf.model_shape(model)
    ids = ids.to(model.device)
    if tokenizer is None:  # a shape with random weights: nnsight and TransformerLens want a tokenizer object,
        tokenizer = hk.models.tiny_tokenizer()  # and only token ids are fed here, so any one will do
    late = sorted({shape.n_layers // 2, shape.n_layers - 1})
    heads = hk.Heads([(layer, h) for layer in late for h in range(min(2, shape.n_heads))])
    keys = [(1, max(2, ids.shape[1] // 2))]
    cases = {
        f"zero_ablate ({len(heads)} heads)": [hk.zero_ablate(heads)],
        "gate (every head, every layer)": [hk.gate(torch.rand(shape.n_layers, shape.n_heads))],
        "mask_attention (same heads)": [hk.mask_attention(heads, keys=keys)],
        "capture_attention (same heads)": [hk.capture_attention(heads)],
    }
    runs: dict[str, Callable[[], Any]] = {"transformers: plain forward": lambda: model(ids, use_cache=False)}
    for name, ivs in cases.items():
        def hf_run(ivs: list = ivs) -> None:
            with hk_hf.applied(model, *ivs):
                model(ids, use_cache=False)
        runs[f"transformers: {name}"] = hf_run
    if importlib.util.find_spec("nnsight") is not None:
        from nnsight import TransformersModel

        from headkit.adapters import nnsight as hk_nn

        traced = TransformersModel(copy.deepcopy(model), tokenizer=tokenizer)

        def plain_trace() -> None:
            with traced.trace(ids):
                traced.output.logits.save()
        runs["nnsight: plain trace"] = plain_trace
        for name, ivs in cases.items():
            if name.startswith("capture") and model.config._attn_implementation != "eager":
                continue  # nnsight reads attention weights only under eager attention

            def nn_run(ivs: list = ivs) -> None:
                with traced.trace(ids):
                    hk_nn.apply(traced, *ivs)
                    traced.output.logits.save()
            runs[f"nnsight: {name}"] = nn_run
    if importlib.util.find_spec("transformer_lens") is not None:
        try:
            from transformer_lens.model_bridge import TransformerBridge
        except ImportError:  # TransformerLens 2.x: no bridge
            TransformerBridge = None
        if TransformerBridge is not None:
            from headkit.adapters import transformer_lens as hk_tl

            bridge = TransformerBridge.boot_transformers("bench", hf_model=copy.deepcopy(model), tokenizer=tokenizer,
                                                         device=str(model.device))
            runs["TransformerLens: plain bridge forward"] = lambda: bridge(ids)
            for name, ivs in cases.items():
                def tl_run(ivs: list = ivs) -> None:
                    with hk_tl.applied(bridge, *ivs):
                        bridge(ids)
                runs[f"TransformerLens: {name}"] = tl_run
    with torch.no_grad():
        times, _ = interleaved(runs, rounds, model.device, warmup=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = {name.split(":")[0]: ms for name, ms in med.items() if "plain" in name}
    return {"batch": list(ids.shape), "seconds": times, "ms": {k: v * 1000 for k, v in med.items()},
            "ratio": {k: round(v / base[k.split(":")[0]], 4) for k, v in med.items()},
            "vs_transformers": {k: v / base["transformers"] for k, v in med.items()}}


@dataclass
class Bench:
    """A benchmark's figures and where they were measured; :meth:`summary` prints them, :meth:`save` writes them.

    Example:
        >>> from headkit.bench import Bench
        >>> b = Bench({"model": "m", "device": "cpu", "dtype": "float32", "versions": {}, "command": "x"})
        >>> b.summary().splitlines()[0]
        '# headkit bench: m, cpu, float32'
    """

    meta: dict[str, Any]
    throughput: dict[str, Any] | None = None
    overhead: dict[str, Any] | None = None
    study: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """The results as markdown: what was measured where, then one table per measurement."""
        m = self.meta
        lines = [f"# headkit bench: {m['model']}, {m['device']}, {m['dtype']}", "",
                 f"- command: `{m['command']}`",
                 f"- device: {m.get('device_name', m['device'])}; dtype {m['dtype']}",
                 "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
        if self.throughput:
            t = self.throughput
            r = t["evals_per_s"]
            naive = t.get("naive_masks", t["masks"])
            lines += [f"## Ablation throughput: {t['masks']} masks x {t['prompts']} prompts "
                      f"(p_keep {t['p_keep']}; naive loop on {naive}), {len(t['seconds']['naive'])} interleaved "
                      "rounds, medians", "",
                      "| naive loop (evals/s) | fused (evals/s) | plain forward (evals/s) | fused / naive "
                      "| fused time / plain time | masks per pass | decisions agree |",
                      "|---:|---:|---:|---:|---:|---:|---|",
                      f"| {r['naive']:.1f} | {r['fused']:.1f} | {r['plain']:.1f} | {t['fused_over_naive']:.2f}x "
                      f"| {t['fused_time_over_plain']:.2f}x | {t['masks_per_pass']} "
                      f"| {t.get('decisions_agree', 1.0):.2%} |", ""]
        if self.study:
            s = self.study
            lines += [f"## Whole study: 2 x {s['masks']} masks x {s['prompts']} prompts", "",
                      f"{s['seconds']:.1f} s end to end; {s['evals_per_s']:.0f} evals/s during evaluation; "
                      f"{s['masks_per_pass']} masks per pass", ""]
        if self.overhead:
            o = self.overhead
            rounds = len(next(iter(o["seconds"].values())))
            lines += [f"## Per-forward overhead, batch {o['batch'][0]} x {o['batch'][1]} tokens, "
                      f"{rounds} interleaved rounds, medians", "",
                      "| variant | ms | ratio | vs transformers |", "|---|---:|---:|---:|"]
            lines += [f"| {k} | {o['ms'][k]:.2f} | {o['ratio'][k]:.2f}x | {o['vs_transformers'][k]:.2f}x |"
                      for k in o["ms"]]
            lines.append("")
        return "\n".join(lines)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``bench.json`` (everything, every raw timing) and ``bench.md`` (:meth:`summary`); return the paths.

        Example:
            >>> import json, tempfile
            >>> from headkit.bench import Bench
            >>> with tempfile.TemporaryDirectory() as out:
            ...     paths = Bench({"model": "m", "device": "cpu", "dtype": "float32", "versions": {},
            ...                    "command": "x"}).save(out)
            ...     [p.name for p in paths], json.loads(paths[0].read_text())["meta"]["model"]
            (['bench.json', 'bench.md'], 'm')
        """
        from headkit.analyses.outcome_log import write_json_atomic

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        record = {"meta": self.meta, "throughput": self.throughput, "study": self.study, "overhead": self.overhead,
                  **self.extra}
        paths = [out / "bench.json", out / "bench.md"]
        write_json_atomic(paths[0], json.loads(json.dumps(record, default=str)))
        scratch = paths[1].with_name(f".{paths[1].name}.tmp")
        scratch.write_text(self.summary() + "\n")
        os.replace(scratch, paths[1])  # a crash leaves the previous file, never half of one
        return paths


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "transformer-lens", "nnsight", "headkit"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def run(model: Any = None, tokenizer: Any = None, *, shape: str | None = None, device: str | None = None,
        dtype: str = "float32", masks: int = 16, prompts: int = 57, rounds: int = 3, study: int = 0,
        overhead_rounds: int = 10, attn_implementation: str | None = None, command: str | None = None,
        out: Callable[[str], Any] | None = None, naive_masks: int | None = None) -> Bench:
    """Benchmark ablation throughput (and per-adapter overhead, and optionally the whole study) on one model.

    ``model`` is a model object, a folder or ``.gguf`` file, or None with ``shape`` (random weights of a
    named shape, :data:`SHAPES`) or neither (the embedded default model). ``overhead_rounds=0`` skips the
    adapter overhead; ``study=N`` also times the stochastic-ablation study with N masks per phase;
    ``naive_masks`` runs the naive loop on fewer masks (see :func:`throughput`).

    Example:
        >>> import headkit as hk
        >>> from headkit import bench
        >>> model, tok = hk.models.tiny("llama")
        >>> b = bench.run(model, tok, masks=4, prompts=4, rounds=1, overhead_rounds=0)
        >>> b.throughput["decisions_equal"], b.meta["model"]
        (True, 'LlamaForCausalLM')
    """
    import headkit as hk
    from headkit.models import DEFAULT_MODEL, dtype_of, load

    if shape is not None and model is not None:
        raise fail("bench got both a model and --shape", "one of them", "drop --shape, or --model")
    for name, value, low in (("masks", masks, 1), ("prompts", prompts, 1), ("rounds", rounds, 1),
                             ("study", study, 0), ("overhead_rounds", overhead_rounds, 0),
                             ("naive_masks", masks if naive_masks is None else naive_masks, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail(f"bench got {name}={value!r}", f"a whole number >= {low}", f"pass {name}={max(low, 1)}")
    torch_dtype = dtype_of(dtype)
    where = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shape is not None:
        model = shape_model(shape, device=where, dtype=torch_dtype, attn_implementation=attn_implementation or "sdpa")
        name = f"{shape} shape (random weights)"
    elif model is None or isinstance(model, (str, os.PathLike)):
        name = DEFAULT_MODEL if model is None else os.fspath(model)
        model, tokenizer = load(model, dtype=dtype, device=where,
                                attn_implementation=attn_implementation)  # type: ignore[arg-type]
    else:
        name = type(model).__name__
    backend = hk.get_backend(model, tokenizer)
    dev = backend.device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    meta = {"model": name, "device": str(dev), "dtype": str(backend.dtype).replace("torch.", ""),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads",
            "shape": str(backend.shape), "n_layers": backend.shape.n_layers, "n_heads": backend.shape.n_heads,
            "versions": _versions(),
            "command": command or "headkit.bench.run(...)", "tf32": False if dev.type == "cuda" else None}
    ids, attn = random_prompts(prompts, backend.vocab_size, dev)
    say = out or (lambda text: None)
    say(f"headkit bench: {name}, {meta['device_name']}, {meta['dtype']}: {masks} masks x {prompts} prompts, "
        f"{rounds} rounds")
    result = Bench(meta, throughput=throughput(backend, ids, attn, masks=masks, rounds=rounds, naive_masks=naive_masks))
    if study:
        from headkit.analyses import stochastic_ablation

        with torch.no_grad():
            targets = backend.logits(ids, attention_mask=attn, last_only=True)[:, -1].argmax(-1).cpu()
        _sync(dev)
        t0 = time.perf_counter()
        done = stochastic_ablation.study(backend, ids, targets, attention_mask=attn, n_masks=study,
                                         p_keep=(0.3, 0.85), progress=False)
        _sync(dev)
        result.study = {"masks": study, "prompts": len(done.prompts), "seconds": time.perf_counter() - t0,
                        "evals_per_s": done.throughput, "masks_per_pass": done.log["rows_per_pass"] // len(done.prompts)}
    if overhead_rounds and hasattr(model, "config") and hasattr(model, "generate"):  # a transformers model
        ids8 = torch.randint(10, min(backend.vocab_size, 20000), (8, 32), generator=torch.Generator().manual_seed(0))
        result.overhead = overhead(model, tokenizer, ids8, rounds=overhead_rounds)
    return result

