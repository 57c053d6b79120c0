"""Receiver heads (Thought Anchors): vertical attention scores, their kurtosis, and receiver scores per sentence.

For one head and one text split into ``S`` sentences, ``A[i, j]`` is the mean attention from sentence ``i``'s
tokens to sentence ``j``'s (pooled while the forward pass runs; see :func:`capture_attention`'s ``pool``).

- **Vertical score** of sentence ``j``: the mean of ``A[i, j]`` over the sentences ``i >= j + p`` that come
  at least ``p = proximity_ignore`` sentences later (the future, the diagonal and the ``p - 1``
  sub-diagonals are ignored; the last ``p`` sentences get NaN). With ``control_depth`` each row of ``A`` is
  first replaced by its ranks among the row's valid cells divided by their count (ties averaged), so late
  rows, which spread attention over more sentences, weigh the same as early ones.
- **Kurtosis** of a head in a trace: Fisher (excess) kurtosis ``m4 / m2**2 - 3`` of its vertical scores over
  the valid sentences (population moments, ``bias=True``); NaN with fewer than 4 or constant scores.
- **Receiver heads**: the top-k heads by kurtosis averaged over traces (a head NaN in any trace is left
  out; layer 0 excluded by default). **Receiver score** of a sentence: the mean vertical score over them.

This is exactly the definition of the authors' code (``get_vertical_scores`` with the ``proximity_ignore=4,
control_depth`` their pipeline passes, ``scipy.stats.kurtosis(fisher=True, bias=True)``), vectorised over
every head at once; the tests compare it with that algorithm on random matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import HeadkitError, describe, fail
from headkit.core.heads import Heads, coerce

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float

    from headkit.core.heads import HeadsLike
    from headkit.sentences import Sentences

__all__ = ["vertical_scores", "kurtosis", "top_heads", "receiver_scores", "split_half", "scan", "Scan"]



def vertical_scores(
    matrix: Float[torch.Tensor, "*heads sentence sentence"], proximity_ignore: int = 4, control_depth: bool = True
) -> Float[torch.Tensor, "*heads sentence"]:
    """Vertical attention score of every sentence: mean attention it receives from sentences ``>= p`` later.

    ``matrix[..., i, j]`` is the sentence-pooled attention from sentence ``i`` to sentence ``j``; any
    leading axes (layers, heads) are kept. Cells above ``i - p`` are ignored, as are NaN and infinite
    cells; a sentence with no valid cell below it gets NaN. ``control_depth`` rank-normalises each row over
    its valid cells first (ranks 1..n, ties averaged, divided by n). Computed in float64.

    Example:
        >>> import torch
        >>> from headkit.analyses.receivers import vertical_scores
        >>> A = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0.7, 0.2, 0.1]], dtype=torch.float64)
        >>> vertical_scores(A, proximity_ignore=1, control_depth=False).tolist()
        [0.8, 0.2, nan]
    """
    if not isinstance(matrix, torch.Tensor) or matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise fail(
            f"vertical_scores got matrix {describe(matrix)}",
            "a float tensor [..., sentence, sentence] (sentence-pooled attention)",
            "pool attention with hk.capture_attention(heads, pool=sentences.spans)",
        )
    _check_proximity(proximity_ignore, "vertical_scores")
    m = matrix.double()
    s = m.shape[-1]
    rows = torch.arange(s, device=m.device)
    valid = (rows[:, None] - rows[None, :] >= proximity_ignore) & torch.isfinite(m)  # i - j >= p
    if control_depth:
        m = _row_ranks(m, valid)
    m = m.masked_fill(~valid, 0.0)
    count = valid.sum(-2)
    return torch.where(count > 0, m.sum(-2) / count.clamp(min=1), torch.nan)


def _check_proximity(proximity_ignore: object, owner: str) -> None:
    if isinstance(proximity_ignore, bool) or not isinstance(proximity_ignore, int) or proximity_ignore < 0:
        raise fail(
            f"{owner} got proximity_ignore={proximity_ignore!r}",
            "a whole number of sentences >= 0 (Thought Anchors uses 4)",
            "pass e.g. proximity_ignore=4",
        )


def _row_ranks(m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each row's valid cells replaced by rank / n_valid (ranks 1..n, ties averaged); others untouched."""
    filled = m.masked_fill(~valid, torch.inf)  # invalid cells sort last and are never counted below a value
    ordered = filled.sort(-1).values.contiguous()
    below = torch.searchsorted(ordered, filled.contiguous(), right=False)  # cells < x
    upto = torch.searchsorted(ordered, filled.contiguous(), right=True)  # cells <= x
    n = valid.sum(-1, keepdim=True)
    ranks = (below + 1 + upto).double() / 2
    return torch.where(valid, ranks / n.clamp(min=1), m)


def kurtosis(scores: Float[torch.Tensor, "*heads sentence"]) -> Float[torch.Tensor, "*heads"]:
    """Fisher (excess) kurtosis over the last axis, NaN ignored: ``m4 / m2**2 - 3`` with population moments.

    Equals ``scipy.stats.kurtosis(x, fisher=True, bias=True)`` of the non-NaN values; NaN when fewer than 4
    values are valid or they are constant (as in the Thought Anchors code).

    Example:
        >>> import torch
        >>> from headkit.analyses.receivers import kurtosis
        >>> round(kurtosis(torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 1])).item(), 4)
        3.1429
    """
    x = scores.double()
    valid = torch.isfinite(x)
    n = valid.sum(-1)
    x0 = x.masked_fill(~valid, 0.0)
    mean = x0.sum(-1) / n.clamp(min=1)
    d = (x - mean[..., None]).masked_fill(~valid, 0.0)
    m2 = (d**2).sum(-1) / n.clamp(min=1)
    m4 = (d**4).sum(-1) / n.clamp(min=1)
    constant = m2 <= (torch.finfo(torch.float64).resolution * mean) ** 2  # scipy's test for a zero variance
    k = m4 / m2.clamp(min=torch.finfo(torch.float64).tiny) ** 2 - 3.0
    return torch.where((n >= 4) & ~constant, k, torch.nan)


def top_heads(
    kurt: Float[torch.Tensor, "trace layer head"] | Float[torch.Tensor, "layer head"],
    k: int = 20,
    *,
    exclude_layer0: bool = True,
) -> list[tuple[int, int]]:
    """The ``k`` heads with the highest kurtosis averaged over traces (receiver heads), as (layer, head), best first.

    A head whose kurtosis is NaN in any trace is left out (plain mean, as the authors' code); layer 0 is
    left out by default (its vertical scores are dominated by token-level patterns).

    Example:
        >>> import torch
        >>> from headkit.analyses.receivers import top_heads
        >>> kurt = torch.tensor([[[9.0, 1.0], [2.0, 5.0], [3.0, 0.0]]])   # [trace, layer, head]
        >>> top_heads(kurt, k=2)
        [(1, 1), (2, 0)]
    """
    mean = _mean_kurtosis(kurt, exclude_layer0)
    flat = mean.flatten()
    ok = torch.isfinite(flat)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise fail(f"top_heads got k={k!r}", "a whole number of heads >= 1 (the paper uses 16-20)", "pass k=20")
    if int(ok.sum()) < k:
        raise fail(
            f"top_heads got k={k} but only {int(ok.sum())} heads have a kurtosis in every trace",
            f"k <= {int(ok.sum())}",
            "lower k, or use traces with more sentences (kurtosis needs >= 4 valid vertical scores)",
        )
    values = flat.masked_fill(~ok, -torch.inf)
    best = values.argsort(descending=True, stable=True)[:k]
    n_heads = mean.shape[-1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in best]


def _mean_kurtosis(kurt: torch.Tensor, exclude_layer0: bool) -> torch.Tensor:
    if not isinstance(kurt, torch.Tensor) or kurt.ndim not in (2, 3):
        raise fail(
            f"top_heads got kurtosis {describe(kurt)}",
            "a float tensor [trace, layer, head] or [layer, head]",
            "compute it with headkit.analyses.receivers.scan(...).kurtosis",
        )
    mean = kurt.double().mean(0) if kurt.ndim == 3 else kurt.double().clone()
    if exclude_layer0:
        mean[0] = torch.nan
    return mean


def receiver_scores(
    vertical: Float[torch.Tensor, "layer head sentence"], heads: HeadsLike
) -> Float[torch.Tensor, " sentence"]:
    """Receiver-head score of each sentence: its vertical score averaged over the given heads (NaN ignored).

    Example:
        >>> import torch
        >>> from headkit.analyses.receivers import receiver_scores
        >>> v = torch.arange(8.0).reshape(2, 2, 2)                  # [layer, head, sentence]
        >>> receiver_scores(v, "L0H1 L1H1").tolist()
        [4.0, 5.0]
    """
    chosen = coerce(heads, "receiver_scores")
    chosen.validate(vertical.shape[0], vertical.shape[1], owner="receiver_scores")
    rows = torch.stack([vertical[layer, head] for layer, head in chosen]).double()
    return rows.nanmean(0)


def split_half(kurt: Float[torch.Tensor, "trace layer head"], *, exclude_layer0: bool = True) -> float:
    """Split-half reliability of head kurtosis: Pearson r between the mean kurtosis of even and odd traces.

    Traces are split interleaved (``[0::2]`` vs ``[1::2]``), each head's kurtosis averaged within each half,
    and r taken over the heads finite in both (layer 0 left out by default). The paper reports r = 0.84.

    Example:
        >>> import torch
        >>> from headkit.analyses.receivers import split_half
        >>> base = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        >>> round(split_half(torch.stack([base, base + 0.1, base, base - 0.1])), 3)
        1.0
    """
    if not isinstance(kurt, torch.Tensor) or kurt.ndim != 3 or kurt.shape[0] < 2:
        raise fail(
            f"split_half got kurtosis {describe(kurt)}",
            "a float tensor [trace, layer, head] with at least 2 traces (better: 10 or more)",
            "scan more traces with headkit.analyses.receivers.scan",
        )
    a = _mean_kurtosis(kurt[0::2], exclude_layer0).flatten()
    b = _mean_kurtosis(kurt[1::2], exclude_layer0).flatten()
    ok = torch.isfinite(a) & torch.isfinite(b)
    if int(ok.sum()) < 3:
        raise fail(
            f"split_half found {int(ok.sum())} heads with a kurtosis in both halves",
            "at least 3 heads",
            "use traces with more sentences (kurtosis needs >= 4 valid vertical scores per trace)",
        )
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


class Scan:
    """Vertical scores and kurtosis of every head over several traces (what :func:`scan` returns).

    ``vertical[t]`` is ``[layer, head, sentence]`` for trace ``t``; ``kurtosis`` is ``[trace, layer, head]``.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> text = " ".join(f"the {w} eats apples ." for w in ["cat", "dog", "boy", "girl", "man", "chef", "team", "bird", "child"])
        >>> result = hk.receivers.scan(model, [hk.sentences.locate(tok, text)], proximity_ignore=2)
        >>> result.kurtosis.shape
        torch.Size([1, 2, 4])
    """

    def __init__(
        self, vertical: list[torch.Tensor], sentences: list[Sentences], proximity_ignore: int, control_depth: bool
    ) -> None:
        self.vertical, self.sentences = vertical, sentences
        self.proximity_ignore, self.control_depth = proximity_ignore, control_depth
        self.kurtosis: Float[torch.Tensor, "trace layer head"] = torch.stack([kurtosis(v) for v in vertical])

    def top_heads(self, k: int = 20, *, exclude_layer0: bool = True) -> list[tuple[int, int]]:
        """The receiver heads: top ``k`` by kurtosis averaged over the traces (see :func:`top_heads`)."""
        return top_heads(self.kurtosis, k, exclude_layer0=exclude_layer0)

    def scores(self, trace: int = 0, k: int = 20, *, heads: HeadsLike | None = None) -> pd.DataFrame:
        """Receiver score of each sentence of one trace (mean vertical score over the receiver heads)."""
        import pandas as pd

        chosen = self.top_heads(k) if heads is None else heads
        values = receiver_scores(self.vertical[trace], chosen)
        s = self.sentences[trace]
        return pd.DataFrame(
            {"score": values.numpy(), "start": [a for a, _ in s.spans], "end": [b for _, b in s.spans], "text": s.texts}
        ).rename_axis("sentence")

    def reliability(self, *, exclude_layer0: bool = True) -> float:
        """Split-half (even vs odd traces) reliability of head kurtosis (see :func:`split_half`)."""
        return split_half(self.kurtosis, exclude_layer0=exclude_layer0)

    def table(self) -> pd.DataFrame:
        """Mean kurtosis of every head over traces, with a (layer, head) index, highest first."""
        import pandas as pd

        mean = self.kurtosis.mean(0)
        n_layers, n_heads = mean.shape
        index = pd.MultiIndex.from_product([range(n_layers), range(n_heads)], names=["layer", "head"])
        return pd.DataFrame({"kurtosis": mean.flatten().numpy()}, index=index).sort_values("kurtosis", ascending=False)

    def plot(self, path: str | None = None, *, trace: int = 0, k: int = 20) -> Any:
        """Kurtosis by layer (one dot per head and trace mean) beside one trace's receiver scores per sentence."""
        from headkit import plots

        return plots.receivers(self, path=path, trace=trace, k=k)

    def summary(self, k: int = 20) -> str:
        """The top ``k`` receiver heads, the split-half reliability (two traces or more) and trace 0's top sentences.

        ``k`` is capped at the number of heads with a finite mean kurtosis (layer 0 excluded).

        Example:
            >>> import headkit as hk
            >>> model, tok = hk.models.tiny("llama")
            >>> text = " ".join(f"the {w} eats apples ." for w in ["cat", "dog", "boy", "girl", "man", "chef", "team", "bird", "child"])
            >>> result = hk.receivers.scan(model, [hk.sentences.locate(tok, text)], proximity_ignore=2)
            >>> lines = result.summary(3).splitlines()
            >>> lines[1], len(lines[2].split(", ")), lines[4]
            ('top 3 receiver heads (mean kurtosis of vertical scores over traces, layer 0 excluded):', 3, 'trace 0, sentences with the highest receiver scores:')
        """
        k = self._k(k)
        heads = self.top_heads(k)
        table = self.table()
        lines = [f"\ntop {k} receiver heads (mean kurtosis of vertical scores over traces, layer 0 excluded):",
                 "  " + ", ".join(f"L{l}H{h} {table.loc[(l, h), 'kurtosis']:.2f}" for l, h in heads)]
        if len(self.sentences) >= 2:
            try:
                lines.append(f"split-half reliability of head kurtosis (even vs odd traces): r = {self.reliability():.2f}")
            except HeadkitError as error:
                lines.append(f"split-half reliability: not computed ({error})")
        lines.append("\ntrace 0, sentences with the highest receiver scores:")
        for i, row in self.scores(0, heads=heads).nlargest(3, "score").iterrows():
            lines.append(f"  {i:>3}  {row['score']:.3f}  {row['text'][:90]}")
        return "\n".join(lines)

    def save(self, folder: str | Path, k: int = 20) -> list[Path]:
        """Write ``kurtosis.csv``, ``scores.csv`` (every trace's sentences, top ``k`` heads) and ``receivers.png``.

        The folder is created if missing; ``k`` is capped as in :meth:`summary`. Returns the paths written.

        Example:
            >>> import tempfile
            >>> import headkit as hk
            >>> model, tok = hk.models.tiny("llama")
            >>> text = " ".join(f"the {w} eats apples ." for w in ["cat", "dog", "boy", "girl", "man", "chef", "team", "bird", "child"])
            >>> result = hk.receivers.scan(model, [hk.sentences.locate(tok, text)], proximity_ignore=2)
            >>> with tempfile.TemporaryDirectory() as out:
            ...     [p.name for p in result.save(out, k=3)]
            ['kurtosis.csv', 'scores.csv', 'receivers.png']
        """
        import pandas as pd

        k = self._k(k)
        heads = self.top_heads(k)
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "kurtosis.csv", out / "scores.csv", out / "receivers.png"]
        self.table().to_csv(paths[0])
        per_trace = [self.scores(t, heads=heads) for t in range(len(self.sentences))]
        pd.concat([table.assign(trace=t) for t, table in enumerate(per_trace)]).to_csv(paths[1])
        self.plot(str(paths[2]), k=k)
        return paths

    def _k(self, k: int) -> int:
        """``k`` capped at the heads with a finite mean kurtosis, layer 0 excluded."""
        return min(k, int(torch.isfinite(self.kurtosis.mean(0)[1:]).sum()))

    def __repr__(self) -> str:
        t, n_layers, n_heads = self.kurtosis.shape
        return f"Scan({t} traces, {n_layers} layers x {n_heads} heads, proximity_ignore={self.proximity_ignore})"


def scan(
    model: Any,
    traces: Sequence[Sentences],
    *,
    proximity_ignore: int = 4,
    control_depth: bool = True,
    progress: bool = True,
) -> Scan:
    """Vertical scores and kurtosis of every head, one forward pass per trace, attention pooled as it runs.

    ``traces`` are :class:`headkit.sentences.Sentences` (from :func:`headkit.sentences.locate`). Each
    trace needs at least ``proximity_ignore + 4`` sentences, so that kurtosis has 4 valid vertical scores.
    ``model`` is a transformers model, a TransformerLens bridge, an nnsight model or a backend.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("gpt2")
        >>> text = " ".join(f"the {w} eats apples ." for w in ["cat", "dog", "boy", "girl", "man", "chef", "team", "bird"])
        >>> result = hk.receivers.scan(model, [hk.sentences.locate(tok, text)], proximity_ignore=1, progress=False)
        >>> result.vertical[0].shape
        torch.Size([2, 4, 8])
    """
    from headkit.backend import get_backend
    from headkit.core.interventions import capture_attention
    from headkit.sentences import Sentences

    backend = get_backend(model)
    if isinstance(traces, Sentences) or not traces or not all(isinstance(t, Sentences) for t in traces):
        raise fail(
            f"scan got traces {describe(traces) if not isinstance(traces, list) else f'a list of {len(traces)}'}",
            "a non-empty list of headkit.sentences.Sentences",
            "build each with hk.sentences.locate(tokenizer, text), and pass them in a list",
        )
    _check_proximity(proximity_ignore, "scan")
    for i, trace in enumerate(traces):
        if len(trace) - proximity_ignore < 4:
            raise fail(
                f"scan got trace {i} with {len(trace)} sentences and proximity_ignore={proximity_ignore}, "
                f"which leaves {max(len(trace) - proximity_ignore, 0)} sentences with a vertical score",
                "at least 4 (kurtosis is undefined below that)",
                f"use traces of at least {proximity_ignore + 4} sentences, or lower proximity_ignore",
            )
    shape = backend.shape
    every = Heads.all(shape.n_layers, shape.n_heads)
    out: list[torch.Tensor] = []
    from tqdm.auto import tqdm

    with torch.no_grad():
        for trace in tqdm(traces, desc="traces", disable=not progress or len(traces) < 2):
            capture = capture_attention(every, pool=trace.spans)
            got = backend.captures(trace.input_ids, capture)  # no logits: the capture is what this pass is for
            pooled = got[capture].patterns[0]  # [n_layers * n_heads, sentence, sentence]
            pooled = pooled.reshape(shape.n_layers, shape.n_heads, len(trace), len(trace))
            out.append(vertical_scores(pooled.cpu(), proximity_ignore, control_depth))
    return Scan(out, list(traces), proximity_ignore, control_depth)
