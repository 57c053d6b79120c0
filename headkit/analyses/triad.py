"""Attention vs direct effect vs ablation effect, per head, for one predicted token (seed 004's triad).

For a sequence, a query position ``q`` and a target token ``x`` predicted at ``q`` (in an induction
sequence ``... A X ... A`` -> ``X``, with ``key`` the position of the earlier ``X``):

- **attention**: ``pattern[head, q, key]``, how much the head looks from the query to the key;
- **direct effect**: the head's output at ``q`` through W_O (and through the block's attention-output norm
  where the architecture has one, Gemma 2/3 and OLMo 2), then the final norm with its scale frozen at
  its value in this forward pass, then W_U, dotted with the gradient of ``log P(x)`` with respect to the
  logits, ``e_x - p``. With frozen norm scales the heads' contributions add up exactly to their layer's;
- **ablation effect**: ``P(x) - P(x | head zero-ablated)``, in probability space (positive: the head
  supports ``x``). All heads are ablated in one batched pass, each row its own gate.

The three rankings rarely agree; :meth:`Triad.overlap` counts how far.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail
from headkit.readouts import NextToken
from headkit.sweep import RowSizer, gates, sweep_all

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Int

__all__ = ["triad", "Triad", "induction_sequence"]


METRICS = ("attention", "direct", "ablation")


class Triad:
    """Per-head attention, direct effect and ablation effect for one prediction (what :func:`triad` returns).

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> ids, q, key = hk.triad.induction_sequence(length=6, vocab=range(4, 100), seed=0)
        >>> hk.triad.triad(model, ids, query=q, key=key).table.columns.tolist()
        ['attention', 'direct', 'ablation']
    """

    def __init__(self, table: pd.DataFrame, p_target: float, target: int, query: int, key: int) -> None:
        self.table, self.p_target, self.target, self.query, self.key = table, p_target, target, query, key

    def top(self, metric: str, k: int = 10) -> pd.DataFrame:
        """The ``k`` heads highest on one metric (``attention``, ``direct`` or ``ablation``), with the others."""
        if metric not in METRICS:
            raise fail(f"Triad.top got metric {metric!r}", f"one of {list(METRICS)}", "pass e.g. 'ablation'")
        others = [m for m in METRICS if m != metric]
        return self.table.sort_values(metric, ascending=False).head(k)[[metric, *others]]

    def overlap(self, k: int = 10) -> pd.DataFrame:
        """How many heads the top-``k`` sets of each pair of metrics (and of all three) share."""
        import pandas as pd

        tops = {m: set(self.top(m, k).index) for m in METRICS}
        rows = [{"comparison": f"{a} & {b}", "shared": len(tops[a] & tops[b])} for a, b in combinations(METRICS, 2)]
        rows.append({"comparison": "all three", "shared": len(set.intersection(*tops.values()))})
        return pd.DataFrame(rows).set_index("comparison")

    def summary(self, k: int = 10) -> str:
        """The top ``k`` heads by each metric and how many the top-``k`` sets share, as text.

        Example:
            >>> import headkit as hk
            >>> model, tok = hk.models.tiny("llama")
            >>> ids, q, key = hk.triad.induction_sequence(length=6, vocab=range(4, 100), seed=0)
            >>> text = hk.triad.triad(model, ids, query=q, key=key).summary(3)
            >>> [line for line in text.splitlines() if line.startswith(("top", "overlap"))]
            ['top 3 by attention:', 'top 3 by direct:', 'top 3 by ablation:', 'overlap of the top-3 sets:']
        """
        lines = []
        for metric in METRICS:
            lines += [f"\ntop {k} by {metric}:", self.top(metric, k).round(4).to_string()]
        lines += [f"\noverlap of the top-{k} sets:", self.overlap(k).to_string()]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``triad.csv`` (every head's three metrics) into ``folder``, created if missing; returns its path.

        Example:
            >>> import tempfile
            >>> import headkit as hk
            >>> model, tok = hk.models.tiny("llama")
            >>> ids, q, key = hk.triad.induction_sequence(length=6, vocab=range(4, 100), seed=0)
            >>> result = hk.triad.triad(model, ids, query=q, key=key)
            >>> with tempfile.TemporaryDirectory() as out:
            ...     [(p.name, len(p.read_text().splitlines())) for p in result.save(out)]
            [('triad.csv', 9)]
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "triad.csv"
        self.table.to_csv(path)
        return [path]

    def __repr__(self) -> str:
        return f"Triad(target={self.target}, query={self.query}, key={self.key}, P(target)={self.p_target:.3f})"


def induction_sequence(
    length: int = 10, vocab: Any = None, *, seed: int = 0, bos: int | None = None
) -> tuple[Int[torch.Tensor, "1 pos"], int, int]:
    """A random token sequence repeated once, ``[bos] t_0 .. t_{n-1} t_0 .. t_{n-2}``; the model should predict ``t_{n-1}``.

    Returns ``(input_ids [1, pos], query, key)``: the query is the last position (the second ``t_{n-2}``)
    and the key the position of the first ``t_{n-1}``, where an induction head attends. ``vocab`` is a
    range or list of token ids to draw from (distinct tokens, so the continuation is unambiguous).

    Example:
        >>> from headkit.analyses.triad import induction_sequence
        >>> ids, q, key = induction_sequence(4, range(10, 20), seed=1, bos=2)
        >>> ids[0, key] == ids[0, 1 + 3], q == ids.shape[1] - 1
        (tensor(True), True)
    """
    pool = torch.tensor(list(vocab if vocab is not None else range(1000, 21000)))
    if length < 2 or len(pool) < length:
        raise fail(
            f"induction_sequence got length={length} with {len(pool)} tokens to draw from",
            "length >= 2 and at least that many distinct tokens",
            "pass a longer vocab range or a shorter length",
        )
    g = torch.Generator().manual_seed(seed)
    tokens = pool[torch.randperm(len(pool), generator=g)[:length]]
    head = [bos] if bos is not None else []
    ids = torch.tensor([head + tokens.tolist() + tokens[:-1].tolist()])
    return ids, ids.shape[1] - 1, len(head) + length - 1


def triad(
    model: Any,
    input_ids: Int[torch.Tensor, "1 pos"],
    *,
    query: int | None = None,
    key: int,
    target: int | None = None,
    rows_per_pass: int | None = None,
) -> Triad:
    """Attention, direct effect and ablation effect of every head on predicting ``target`` at ``query``.

    ``input_ids`` is one sequence ``[1, pos]``; ``query`` defaults to its last position, ``target`` to the
    token at ``key`` (for induction: the earlier occurrence of the token to predict). ``model`` is any
    model headkit has an adapter for (transformers, a TransformerLens bridge or HookedTransformer, a local
    nnsight model) or its backend; the direct effect reads its weights through the backend's ``head_paths``. The
    zero-ablations run ``rows_per_pass`` heads per forward pass (None: tuned by throughput from 64).

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("gpt2")
        >>> ids, q, key = hk.triad.induction_sequence(6, range(4, 100))
        >>> t = hk.triad.triad(model, ids, key=key)
        >>> int(t.overlap(3).loc["all three", "shared"]) <= 3
        True
    """
    import pandas as pd

    from headkit.backend import get_backend
    from headkit.core.interventions import capture_attention

    backend = get_backend(model)
    shape = backend.shape
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise fail(
            f"triad got input_ids {describe(input_ids)}",
            "one sequence of token ids [1, pos]",
            "pass ids[None] for a 1-D sequence, or loop over sequences",
        )
    n = input_ids.shape[1]
    query = n - 1 if query is None else query
    for name, pos in (("query", query), ("key", key)):
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < n:
            raise fail(f"triad got {name}={pos!r}", f"a position in 0..{n - 1}", f"pass a valid {name} position")
    if key > query:
        raise fail(f"triad got key={key} after query={query}", "key <= query (attention is causal)", "swap them")
    target = int(input_ids[0, key]) if target is None else int(target)
    ids = input_ids

    # one forward pass: the attention pattern and every head's direct path at the query
    capture = capture_attention(torch.ones(shape.n_layers, shape.n_heads, dtype=torch.bool))
    paths = backend.head_paths(ids, query, capture)
    attention = torch.stack([paths.captures[capture].pattern(layer, head)[0, query, key] for layer, head in capture.heads])
    logits = paths.logits
    probs = logits.softmax(-1)
    p_target = float(probs[target])

    # direct effect: per-head outputs -> (block norm) -> final norm with frozen scale -> W_U . d log P(x) / d logits
    grad = -probs
    grad[target] += 1.0
    if paths.softcap:  # logits = cap * tanh(x / cap): d logits / dx = 1 - (logits / cap)^2
        grad = grad * (1 - (logits / paths.softcap) ** 2)
    u = grad @ paths.unembed.to(grad.device)  # [d_model]
    direct = (paths.final(paths.head_out) @ u.to(paths.head_out.device)).cpu()  # [layer, head]

    # ablation effect: every head zeroed in its own batch row
    n_heads_total = shape.n_layers * shape.n_heads
    one_off = torch.ones(n_heads_total, n_heads_total, device=backend.device).fill_diagonal_(0.0)
    readout = NextToken(torch.tensor([target]), "prob", position=query)
    ablated = sweep_all(backend, ids, None, readout, gates(one_off.reshape(-1, shape.n_layers, shape.n_heads)),
                        rows_per_pass=RowSizer(rows_per_pass, n_heads_total, "triad", start=64)).float().cpu()
    index = pd.MultiIndex.from_product([range(shape.n_layers), range(shape.n_heads)], names=["layer", "head"])
    table = pd.DataFrame(
        {
            "attention": attention.float().cpu().numpy(),
            "direct": direct.flatten().numpy(),
            "ablation": (p_target - ablated).numpy(),
        },
        index=index,
    )
    return Triad(table, p_target, target, query, key)
