"""Resampled rollouts of a chain of thought under several conditions, streamed to disk and resumable.

Thought Anchors' black-box importance (Bogdan et al. 2025): for each sentence ``i`` of a chain of thought,
start from the text before it (the problem's prompt and sentences ``0..i-1``), let the model rewrite
sentence ``i`` and continue to an answer, ``n`` times, and see how often the answer is right. Seed 000 does
this under several conditions (no ablation, receiver heads ablated, random heads ablated).

Here every condition is a gate ``[layer, head]`` (1 keeps a head, 0 zero-ablates it; any value between is a
soft gate), and all rollouts of one prefix, across conditions, go into one batched ``generate`` call with
per-row gates. Rollout ``r`` of prefix ``i`` uses the same random stream under every condition (common
random numbers: condition differences are not blurred by sampling noise), and a row's text does not depend
on what else is in its batch (:mod:`headkit.analyses.rollouts`).

Records stream to ``rollouts.jsonl`` (one JSON object per rollout) beside ``meta.json`` (the settings); a
run in the same folder skips what is on disk, so a killed run resumes, and more rollouts or another
condition can be added later. A folder written with other settings is refused, not mixed.

    problem = Problem(prompt, sentences, answer="12")
    log = generate(model, tok, problem, {"none": None, "receivers": Heads("L3H1 L5H0")}, "out", rollouts=12)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from headkit.analyses.rollouts import Sampling, check_backend, sample, stream_seed
from headkit.core.errors import HeadkitError, describe, fail

__all__ = ["Problem", "boxed_answer", "conditions_to_gates", "extra_interventions", "generate", "read", "Record"]

Record = dict[str, Any]
"""One rollout: prefix, condition, rollout, removed, resampled, text, answer, correct."""


def boxed_answer(text: str) -> str | None:
    r"""The answer a continuation states: the first ``\boxed{...}``, else the first "answer is X" / "Answer: X".

    A stated answer that starts with a number is that number ("17 dollars" -> "17"), otherwise its first
    word; pass your own ``extract`` for anything else. Spaces, ``$`` and a trailing full stop are removed; None when the text states no answer.

    Example:
        >>> from headkit.analyses.resampling import boxed_answer
        >>> boxed_answer(r"so \boxed{ 12 }."), boxed_answer("The answer is 7 dollars."), boxed_answer("Answer: Bob.")
        ('12', '7', 'Bob')
        >>> boxed_answer("no idea") is None
        True
    """
    found = re.search(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", text)
    if found is None:
        stated = re.search(r"answer(?: is|:)\s*\$?\s*(-?\d+(?:\.\d+)?|[^\s,;.!?]+)", text,
                           flags=re.IGNORECASE)
        if stated is None:
            return None
        value = stated.group(1)
    else:
        value = found.group(1)
    value = value.replace("$", "").replace(" ", "").rstrip(".")
    return value or None


@dataclass(frozen=True)
class Problem:
    """A problem and a chain of thought to resample: prompt, sentences, the correct answer, optional labels.

    ``prompt`` is everything the model sees before the chain of thought (question, chat template, an opening
    ``<think>``); prefix ``i`` is the prompt followed by sentences ``0..i-1`` joined by ``separator``.
    ``categories`` are the user's labels per sentence (e.g. Thought Anchors' plan_generation,
    active_computation, ...). ``extract`` reads the answer from a continuation (default :func:`boxed_answer`)
    and ``check`` judges it (default: equal to ``answer`` after the same normalisation).

    Example:
        >>> from headkit.analyses.resampling import Problem
        >>> p = Problem("Q: 3 + 4 * 2? A:", ["4 * 2 is 8.", "8 + 3 is 11."], answer="11")
        >>> p.prefix(0), p.prefix(1), p.correct("11"), p.correct("14")
        ('Q: 3 + 4 * 2? A:', 'Q: 3 + 4 * 2? A: 4 * 2 is 8.', True, False)
    """

    prompt: str
    sentences: Sequence[str]
    answer: str
    categories: Sequence[str] | None = None
    separator: str = " "
    extract: Callable[[str], str | None] = field(default=boxed_answer, compare=False)
    check: Callable[[str], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sentences", tuple(self.sentences))
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
        if not isinstance(self.prompt, str) or not all(isinstance(s, str) and s.strip() for s in self.sentences):
            raise fail(f"Problem got prompt {describe(self.prompt)} and sentences {list(self.sentences)[:3]}...",
                       "a text prompt and non-empty sentences", "split the chain of thought with hk.sentences.split")
        if len(self.sentences) < 2:
            raise fail(f"Problem got a chain of thought of {len(self.sentences)} sentence(s)",
                       "at least 2 (a sentence's importance compares its prefix with the next one)",
                       "pass the whole chain of thought, split into sentences")
        if self.categories is not None and len(self.categories) != len(self.sentences):
            raise fail(f"Problem got {len(self.categories)} categories for {len(self.sentences)} sentences",
                       "one label per sentence", "pass categories=None, or one label per sentence")

    def prefix(self, i: int) -> str:
        """The text before sentence ``i``: the prompt, then sentences ``0..i-1``."""
        return self.prompt + (self.separator if i and self.prompt else "") + self.separator.join(self.sentences[:i])

    def correct(self, answer: str | None) -> bool:
        """Whether an extracted answer is right (``check``, else equal to ``answer`` up to spaces, ``$`` and case)."""
        if answer is None:
            return False
        if self.check is not None:
            try:
                return bool(self.check(answer))
            except Exception as error:
                raise fail(f"the answer checker raised {type(error).__name__}: {error} on answer {answer!r}",
                           "a function returning True or False for any answer text",
                           "make the checker return False for answers it cannot parse") from error
        expected = boxed_answer(rf"\boxed{{{self.answer}}}") or self.answer
        return answer.strip().lower() == expected.strip().lower()

    def settings(self) -> dict[str, Any]:
        """What identifies the problem in a rollout folder's meta."""
        return {"prompt": self.prompt, "sentences": list(self.sentences), "answer": self.answer,
                "separator": self.separator}


def conditions_to_gates(conditions: Mapping[str, Any], n_layers: int, n_heads: int) -> dict[str, torch.Tensor]:
    """Turn named conditions into gates ``[layer, head]``: None keeps every head, heads are zero-ablated.

    A condition is None, anything :class:`headkit.Heads` accepts (heads to zero-ablate), a gate tensor
    ``[layer, head]`` of per-head values (1 keeps, 0 ablates, between: a soft gate), or any headkit
    intervention (or a list of them: mean-ablation, attention masks, ...), whose gate keeps every head
    (:func:`extra_interventions` returns the interventions).

    Example:
        >>> import headkit as hk
        >>> from headkit.analyses.resampling import conditions_to_gates
        >>> g = conditions_to_gates({"none": None, "ablate": hk.Heads("L1H0")}, 2, 3)
        >>> g["none"].sum().item(), g["ablate"][1].tolist()
        (6.0, [0.0, 1.0, 1.0])
    """
    from headkit.core.heads import Heads

    if not isinstance(conditions, Mapping) or not conditions:
        raise fail(f"got conditions {describe(conditions)}", "a non-empty dict of name -> None, heads, gate or "
                   "interventions", 'pass e.g. {"none": None, "receivers": hk.Heads("L3H1 L5H0")}')
    gates = {}
    for name, value in conditions.items():
        if not isinstance(name, str) or not name or not re.fullmatch(r"[\w.-]+", name):
            raise fail(f"got condition name {name!r}", "a non-empty word (letters, digits, _ . -)",
                       'name conditions e.g. "none", "receivers", "random"')
        if value is None or _interventions(value):
            gates[name] = torch.ones(n_layers, n_heads)
        elif isinstance(value, torch.Tensor):
            if tuple(value.shape) != (n_layers, n_heads) or not torch.isfinite(value).all():
                raise fail(f"condition {name!r} got a gate {describe(value)}", f"finite values [{n_layers}, {n_heads}]",
                           "pass one value per head, or the heads to ablate")
            gates[name] = value.detach().float().cpu()
        else:
            heads = Heads(value)
            heads.validate(n_layers, n_heads, owner=f"condition {name!r}")
            gates[name] = (~heads.mask(n_layers, n_heads)).float()
    return gates


def _interventions(value: Any) -> tuple[Any, ...]:
    from headkit.core.interventions.base import Intervention

    if isinstance(value, Intervention):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Intervention) for v in value):
        return tuple(value)
    return ()


def extra_interventions(conditions: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The interventions each condition applies besides its gate (empty for None, heads and gates).

    Conditions with interventions are generated in calls of their own (their rows cannot share a pass with
    other conditions' rows); gates share one batch.

    Example:
        >>> import headkit as hk
        >>> from headkit.analyses.resampling import extra_interventions
        >>> extra_interventions({"none": None, "mask": hk.mask_attention("L0H1", keys=[(1, 2)])})
        {'none': (), 'mask': (MaskAttention(heads='L0H1', keys=[(1, 2)]),)}
    """
    return {name: _interventions(value) for name, value in conditions.items()}


def _describe_interventions(extra: tuple[Any, ...]) -> list[str]:
    """Interventions as the meta records them: the repr and the float64 sum of every tensor field."""
    out = []
    for iv in extra:
        sums = [f"{float(torch.as_tensor(v).double().sum()):.12g}" for v in iv.plain_fields() if isinstance(v, torch.Tensor)]
        out.append(repr(iv) + (f" sums={sums}" if sums else ""))
    return out


def _fingerprint(model: Any) -> str:
    """A cheap identity of a model's weights: the float64 sum of every parameter (12 significant digits)."""
    with torch.no_grad():
        total = sum(float(p.detach().sum(dtype=torch.float64)) for p in model.parameters())
    return f"{total:.12g}"


def _read_records(path: Path, *, repair: bool = False) -> list[Record]:
    """The records in a JSON-lines file. A torn last line (a killed write) is left out, and cut from the file
    when ``repair`` (only a writer, which holds the folder, does that); any other bad line is refused."""
    if not path.exists():
        return []
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if repair and keep != len(data):  # the last write did not finish: drop its partial line
        with open(path, "r+b") as f:
            f.truncate(keep)
    records = []
    for n, line in enumerate(data[:keep].decode().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise fail(f"{path} line {n} is not a rollout record ({line[:60]!r})",
                           "one JSON object per line, as generate writes them",
                           "delete that line (its rollout is generated again on the next run)") from None
    return records


def read(folder: str | Path) -> tuple[dict[str, Any], list[Record]]:
    """Read a rollout folder: its settings (``meta.json``) and its records (``rollouts.jsonl``).

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from headkit.analyses.resampling import read
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "meta.json").write_text(json.dumps({"seed": 0}))
        ...     _ = (Path(d) / "rollouts.jsonl").write_text('{"prefix": 0}\\n{"pref')   # a torn last line
        ...     read(d)
        ({'seed': 0}, [{'prefix': 0}])
    """
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise fail(f"{folder} has no meta.json", "a folder written by headkit's resampling.generate",
                   "pass the folder given to generate(..., folder)")
    return json.loads((folder / "meta.json").read_text()), _read_records(folder / "rollouts.jsonl")  # read only


def _meta(problem: Problem, gates: dict[str, torch.Tensor], extra: dict[str, tuple[Any, ...]], how: Sampling,
          seed: int, model: Any) -> dict[str, Any]:
    return {"problem": problem.settings(), "sampling": asdict(how), "seed": seed,
            "model": {"class": type(model).__name__, "weights_sum": _fingerprint(model)},
            "conditions": {name: {"interventions": _describe_interventions(extra[name])} if extra[name] else g.tolist()
                           for name, g in gates.items()}}


def _merge_meta(folder: Path, new: dict[str, Any]) -> dict[str, Any]:
    """The folder's meta with ``new`` conditions added; other settings must agree (refused otherwise)."""
    path = folder / "meta.json"
    if not path.exists():
        return new
    old = json.loads(path.read_text())
    differ = [key for key in ("problem", "sampling", "seed", "model") if old.get(key) != new[key]]
    differ += [f"condition {name!r}" for name, g in new["conditions"].items()
               if name in old.get("conditions", {}) and old["conditions"][name] != g]
    if differ:
        raise fail(f"{folder} holds rollouts written with other settings ({', '.join(differ)} differ)",
                   "the settings it was written with, so that rollouts are never mixed",
                   "use a new folder, or the same problem, sampling, seed, model and conditions")
    return {**old, "conditions": {**old.get("conditions", {}), **new["conditions"]}}


def _judged(record: Record, problem: Problem) -> Record:
    """The record with ``answer`` and ``correct`` read from its text by the problem's ``extract`` and ``check``."""
    answer = problem.extract(record["text"])
    if answer is not None and not isinstance(answer, str):
        raise fail(f"the answer extractor returned {describe(answer)}", "a string, or None for no answer",
                   "return str(answer) from it")
    return {**record, "answer": answer, "correct": problem.correct(answer)}


def generate(
    model: Any,
    tokenizer: Any,
    problem: Problem,
    conditions: Mapping[str, Any],
    folder: str | Path,
    *,
    rollouts: int = 12,
    how: Sampling | None = None,
    seed: int = 0,
    prefixes: Iterable[int] | None = None,
    rows_per_call: int | None = None,
    progress: bool = True,
    on_call: Callable[[list[Record]], Any] | None = None,
) -> list[Record]:
    """Generate ``rollouts`` continuations from every prefix under every condition; stream them to ``folder``.

    Prefix ``i`` (0 to the last sentence) removes sentence ``i`` and lets the model rewrite it: a record's
    ``removed`` is sentence ``i``, ``resampled`` the first sentence of the continuation (split by
    :func:`headkit.sentences.split`), ``answer`` what ``problem.extract`` reads from the continuation and
    ``correct`` what ``problem.correct`` says of it. All rows of a prefix go into one ``generate`` call
    (``rows_per_call`` caps it; halved on out-of-memory). Records already in the folder are skipped, and
    their answers are read again from their text with this problem's ``extract`` and ``check`` (so a new
    answer checker re-judges every rollout instead of mixing two judgements). Returns
    every record of the requested prefixes, conditions and rollouts, ordered by (prefix, condition, rollout).

    Example:
        >>> import tempfile, torch, headkit as hk
        >>> from headkit.analyses.resampling import Problem, generate
        >>> from headkit.analyses.rollouts import Sampling
        >>> model, tok = hk.models.tiny("llama", dtype=torch.float64)
        >>> problem = Problem("Tom eats", ["apples .", "Sarah wears hats ."], answer="12")
        >>> with tempfile.TemporaryDirectory() as out:
        ...     records = generate(model, tok, problem, {"none": None, "L0H1": hk.Heads("L0H1")}, out, rollouts=2,
        ...                        how=Sampling(max_new_tokens=4), progress=False)
        >>> len(records), sorted(records[0])
        (8, ['answer', 'condition', 'correct', 'prefix', 'removed', 'resampled', 'rollout', 'text'])
    """
    from tqdm.auto import tqdm

    from headkit.backend import get_backend
    from headkit.sentences import split
    from headkit.sweep import RowSizer, is_out_of_memory

    how = how or Sampling()
    if isinstance(rollouts, bool) or not isinstance(rollouts, int) or rollouts < 1:
        raise fail(f"generate got rollouts={rollouts!r}", "a whole number >= 1", "pass rollouts=12 (the seed's)")
    backend = get_backend(model, tokenizer)
    check_backend(backend)  # everything is checked before anything is written
    shape = backend.shape
    gates = conditions_to_gates(conditions, shape.n_layers, shape.n_heads)
    extra = extra_interventions(conditions)
    for name, interventions in extra.items():
        for iv in interventions:
            try:
                iv.validate(shape)
            except HeadkitError as error:
                raise fail(f"condition {name!r}: {error}", "interventions that fit the model",
                           "fix the condition's heads or positions") from None
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise fail(f"generate got seed={seed!r}", "a whole number", "pass seed=0")
    seed = int(seed)
    chosen = list(range(len(problem.sentences))) if prefixes is None else sorted({int(i) for i in prefixes})
    if any(not 0 <= i < len(problem.sentences) for i in chosen):
        raise fail(f"generate got prefixes {chosen}", f"sentence indices 0..{len(problem.sentences) - 1}",
                   "leave prefixes out for all of them")
    out = Path(folder)
    hf = backend.model
    meta = _merge_meta(out, _meta(problem, gates, extra, how, seed, hf))  # refuses before anything is written
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, out / "meta.json")
    path = out / "rollouts.jsonl"
    have = {(r["prefix"], r["condition"], r["rollout"]): _judged(r, problem) for r in _read_records(path, repair=True)}
    names = list(gates)
    sizer = RowSizer(rows_per_call, total=len(names) * rollouts, owner="generate", name="rows_per_call",
                     start=len(names) * rollouts)
    todo = {i: [(c, r) for c in names for r in range(rollouts) if (i, c, r) not in have] for i in chosen}
    bar = tqdm(total=sum(map(len, todo.values())), desc="rollouts", unit="rollout", disable=not progress)
    with open(path, "a", encoding="utf-8") as log:
        for i, todo_here in todo.items():
            prefix = problem.prefix(i)
            groups: dict[str | None, list[tuple[str, int]]] = {}  # gate-only conditions share calls; others alone
            for c, r in todo_here:
                groups.setdefault(c if extra[c] else None, []).append((c, r))
            for key, rows in groups.items():
                while rows:
                    part = rows[: sizer.size]
                    try:
                        texts = sample(hf, backend.tokenizer, prefix, torch.stack([gates[c] for c, _ in part]),
                                       [stream_seed(seed, i, r) for _, r in part], how, *(extra[key] if key else ()))
                    except Exception as error:  # noqa: BLE001 - only an allocation failure is retried
                        if not is_out_of_memory(error):
                            raise
                        if sizer.size == 1:
                            raise fail(f"one rollout of {how.max_new_tokens} new tokens after a {len(prefix)}-character "
                                       "prefix does not fit in memory", "a generation that fits",
                                       "lower max_new_tokens (--max-new-tokens), or load the model in bfloat16 "
                                       "(--dtype bfloat16)") from error
                        sizer.out_of_memory()
                        continue
                    made = []
                    for (c, r), text in zip(part, texts):
                        first = split(text)
                        made.append(_judged({"prefix": i, "condition": c, "rollout": r, "removed": problem.sentences[i],
                                             "resampled": first[0] if first else "", "text": text}, problem))
                    log.write("".join(json.dumps(m) + "\n" for m in made))
                    log.flush()
                    os.fsync(log.fileno())
                    have.update({(m["prefix"], m["condition"], m["rollout"]): m for m in made})
                    rows = rows[len(part):]
                    bar.update(len(part))
                    if on_call is not None:
                        on_call(made)
    bar.close()
    return [have[(i, c, r)] for i in chosen for c in names for r in range(rollouts)]

