"""The intervention tour ``headkit demo`` runs: every intervention on a few heads of a model, on the copy task.

:func:`tour` keeps the copy prompts (seed 003) the model completes, picks heads (given, or the induction-head
candidates of :func:`headkit.analyses.induction.induction_heads`), applies each intervention and times it;
the :class:`Tour` it returns reports itself with :meth:`Tour.table` and :meth:`Tour.summary`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import HeadkitError
from headkit.core.heads import Heads

if TYPE_CHECKING:
    import pandas as pd

    from headkit.core.heads import HeadsLike
    from headkit.core.interventions import Intervention

__all__ = ["tour", "Tour"]


@dataclass(frozen=True)
class Tour:
    """What :func:`tour` measured: one row per intervention, the heads and the prompts used.

    ``rows`` are dicts with ``intervention``, ``heads``, ``correct`` (top-1 successes), ``n`` (prompts),
    ``logprob`` (mean log p(answer)) and ``ms`` (median time of a forward pass over all prompts).

    Example:
        >>> import headkit as hk
        >>> from headkit.tour import tour
        >>> model, tok = hk.models.tiny("gemma3")   # completes 1 of the copy prompts
        >>> result = tour(model, tok, heads="L1H1 L3H0", repeats=1)
        >>> result.n_solved, result.n_prompts, str(result.heads)
        (1, 59, 'L1H1 L3H0')
    """

    rows: list[dict[str, Any]]
    heads: Heads
    given: bool
    n_solved: int
    n_prompts: int
    repeats: int

    def table(self) -> pd.DataFrame:
        """The rows as a DataFrame indexed by intervention.

        Example:
            >>> import headkit as hk
            >>> from headkit.tour import tour
            >>> model, tok = hk.models.tiny("gemma3")
            >>> table = tour(model, tok, heads="L1H1 L3H0", repeats=1).table()
            >>> row = table.loc["zero_ablate, every head"]
            >>> row["heads"], int(row["correct"]), int(row["n"])
            ('all 16', 0, 1)
        """
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("intervention")

    def summary(self) -> str:
        """The prompts and heads used, the table of interventions and what they cost, as ``headkit demo`` prints it.

        Example:
            >>> import headkit as hk
            >>> from headkit.tour import tour
            >>> model, tok = hk.models.tiny("gemma3")
            >>> lines = tour(model, tok, heads="L1H1 L3H0", repeats=1).summary().splitlines()
            >>> lines[0]
            'copy task (seed 003): the full model completes 1 of 59 prompts; those are used below'
            >>> lines[1], lines[6].split()[:3]
            ('heads: L1H1 L3H0 (given)', ['zero_ablate', 'L1H1', 'L3H0'])
        """
        how = "given" if self.given else "most attention from the last token to the copied word"
        lines = [f"copy task (seed 003): the full model completes {self.n_solved} of {self.n_prompts} prompts; "
                 "those are used below", f"heads: {self.heads} ({how})\n"]
        head_width = max(12, *(len(r["heads"]) for r in self.rows))
        header = f"{'intervention':<40} {'heads':<{head_width}} {'top-1':>9} {'log p(answer)':>14} {'ms':>8}"
        lines += [header, "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r['intervention']:<40} {r['heads']:<{head_width}} {r['correct']:>4}/{r['n']:<4} "
                         f"{r['logprob']:>14.3f} {r['ms']:>8.0f}")
        base, rest = self.rows[0]["ms"], [r["ms"] for r in self.rows[1:]]
        lines.append(f"\nms: median of {self.repeats} forward passes over all {self.n_solved} prompts (logits of the "
                     f"last token only); interventions cost {min(rest) / base:.2f}x to {max(rest) / base:.2f}x "
                     "the plain forward in this run.")
        return "\n".join(lines)


def tour(model: Any, tokenizer: Any = None, *, heads: HeadsLike | None = None, top: int = 4, repeats: int = 3) -> Tour:
    """Apply every intervention to a few heads on the copy prompts the model completes, timing each.

    ``heads`` defaults to the ``top`` induction-head candidates (most attention from the last token to the
    copied word). Each row is timed over ``repeats`` forward passes (median). Raises when the model completes
    none of the copy prompts.

    Example:
        >>> import headkit as hk
        >>> from headkit.tour import tour
        >>> model, tok = hk.models.tiny("gemma3")
        >>> [row["intervention"] for row in tour(model, tok, top=2, repeats=1).rows][:3]
        ['none', 'zero_ablate', 'mean_ablate (means over these prompts)']
    """
    import headkit as hk
    from headkit.analyses.induction import induction_heads
    from headkit.prompts import copy_task
    from headkit.readouts import score_next_token

    backend = hk.get_backend(model, tokenizer)
    shape = backend.shape
    full = copy_task(backend.tokenizer)
    with torch.no_grad():
        logits = backend.logits(full.left.input_ids, attention_mask=full.left.attention_mask, last_only=True)
    solved = score_next_token(logits[:, -1], full.left.targets).bool()
    if not bool(solved.any()):
        raise HeadkitError(f"the model ({type(model).__name__}) completes none of the {len(full)} copy "
                           "prompts; expected a model that copies (the default Gemma 3 270M completes most). Fix: "
                           "run it on a model trained on text (a random or tiny model copies nothing)")
    task = full.rows(solved)
    view = task.left
    chosen = Heads(heads) if heads else induction_heads(backend, task, top)
    chosen.validate(shape.n_layers, shape.n_heads, n_kv_heads=shape.n_kv_heads, owner="--heads")

    with torch.no_grad():
        means = hk.compute_means(model, view.input_ids, attention_mask=view.attention_mask)
    everything = Heads.all(shape.n_layers, shape.n_heads)
    control = _random_heads(everything - chosen, len(chosen))
    half = torch.ones(shape.n_layers, shape.n_heads)
    half[chosen.mask(shape.n_layers, shape.n_heads)] = 0.5
    plan: list[tuple[str, str, list[Intervention]]] = [
        ("none", "-", []),
        ("zero_ablate", str(chosen), [hk.zero_ablate(chosen)]),
        ("mean_ablate (means over these prompts)", str(chosen), [hk.mean_ablate(chosen, means)]),
        ("gate 0.5", str(chosen), [hk.gate(half)]),
        ("mask_attention (first sentence keys)", str(chosen), [hk.mask_attention(chosen, keys=view.marked)]),
        ("capture_attention (reads only)", str(chosen), [hk.capture_attention(chosen)]),
        ("zero_ablate, random heads (control)", str(control), [hk.zero_ablate(control)]),
        ("zero_ablate, every head", f"all {len(everything)}", [hk.zero_ablate(everything)]),
    ]
    rows = []
    for name, head_text, interventions in plan:
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = backend.logits(view.input_ids, *interventions, attention_mask=view.attention_mask, last_only=True)
            times.append(time.perf_counter() - t0)
        rows.append({
            "intervention": name,
            "heads": head_text,
            "correct": int(score_next_token(logits[:, -1], view.targets).sum()),
            "n": len(task),
            "logprob": float(score_next_token(logits[:, -1], view.targets, "logprob").mean()),
            "ms": 1000 * statistics.median(times),
        })
    return Tour(rows, chosen, bool(heads), len(task), len(full), repeats)


def _random_heads(pool: Heads, k: int) -> Heads:
    """``k`` heads drawn from ``pool`` with a fixed seed (the control row)."""
    generator = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(pool), generator=generator)[:k].tolist()
    return Heads([pool.pairs[i] for i in pick])
