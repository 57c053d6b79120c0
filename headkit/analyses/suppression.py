"""Sentence suppression (Thought Anchors, Figure 6): how much each sentence's tokens steer later sentences.

For each sentence ``j``, attention to ``j``'s tokens is suppressed before softmax (exact ``-inf``) in every
head of every layer (or a chosen head set), for all queries, and the model's next-token distributions are
compared with the unsuppressed ones. ``matrix[i, j]`` is the mean over the token positions of sentence
``i`` of ``KL(baseline || suppressed)`` (optionally at a temperature, or of ``log(KL + 1e-9)`` as the
authors' figure does). Entries with ``i < j`` are NaN: a sentence cannot be steered by a later one. The
diagonal is computed (its queries lose their own sentence as context) and blanked in the heatmap.

Many sentences share one forward pass: the text is repeated once per sentence in the pass and every batch
row gets its own key mask (``mask_attention`` with a ``[batch, pos]`` key mask); logits are computed only
at the positions of sentences ``i >= j`` of each row. The result equals one forward pass per sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail
from headkit.core.heads import Heads, coerce
from headkit.readouts import KL
from headkit.shards import assemble, world
from headkit.sweep import Rows, RowSizer, key_masks, sweep

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float

    from headkit.core.heads import HeadsLike
    from headkit.sentences import Sentences

__all__ = ["kl_matrix", "Suppression"]


"""Logit cells (positions x vocabulary) per forward pass when rows_per_pass is automatic: 256 MiB in fp32."""


class Suppression:
    """The sentence-suppression KL matrix of one text (what :func:`kl_matrix` returns).

    ``matrix[i, j]``: mean KL over sentence ``i``'s tokens when attention to sentence ``j`` is suppressed
    (NaN for ``i < j``). ``token_kl[j]`` holds the per-token KL of every position for suppressed sentence ``j``.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> s = hk.sentences.locate(tok, "the cat eats . the dog eats . Tom reads books .")
        >>> hk.suppression.kl_matrix(model, s, progress=False).matrix.shape
        torch.Size([3, 3])
    """

    def __init__(
        self, matrix: torch.Tensor, token_kl: torch.Tensor, sentences: Sentences, heads: Heads, log: bool, temperature: float
    ) -> None:
        self.matrix: Float[torch.Tensor, "sentence sentence"] = matrix
        self.token_kl: Float[torch.Tensor, "sentence pos"] = token_kl
        self.sentences, self.heads, self.log, self.temperature = sentences, heads, log, temperature

    def centred(self) -> Float[torch.Tensor, "sentence sentence"]:
        """The matrix below the diagonal with each row's mean subtracted (controls for a sentence's depth)."""
        below = self.matrix.clone()
        below[torch.ones_like(below, dtype=torch.bool).triu()] = torch.nan
        return below - below.nanmean(1, keepdim=True)

    def table(self) -> pd.DataFrame:
        """Long format: one row per (affected sentence i, suppressed sentence j) with i > j, and the texts."""
        import pandas as pd

        s = len(self.sentences)
        rows = [
            {"affected": i, "suppressed": j, "kl": float(self.matrix[i, j]), "affected_text": self.sentences.texts[i],
             "suppressed_text": self.sentences.texts[j]}
            for i in range(s)
            for j in range(i)
        ]
        return pd.DataFrame(rows)

    def plot(self, path: str | None = None, *, centre: bool = True, title: str = "") -> Any:
        """Heatmap, upper triangle and diagonal blanked, rows centred by default (Thought Anchors, Figure 6)."""
        from headkit import plots

        return plots.suppression(self, path=path, centre=centre, title=title)

    def summary(self, k: int = 4) -> str:
        """The ``k`` sentences whose suppression moves later sentences most (mean KL over later sentences), as text.

        Example:
            >>> import headkit as hk
            >>> model, tok = hk.models.tiny("llama")
            >>> s = hk.sentences.locate(tok, "the cat eats . the dog eats . Tom reads books .")
            >>> text = hk.suppression.kl_matrix(model, s, progress=False).summary()
            >>> text.splitlines()[1], len(text.splitlines())
            ('sentences whose suppression moves later sentences most (mean over later sentences):', 4)
        """
        influence = self.table().groupby("suppressed")["kl"].mean()
        lines = ["\nsentences whose suppression moves later sentences most (mean over later sentences):"]
        lines += [f"  {j:>3}  {value:.4f}  {self.sentences.texts[j][:90]}" for j, value in influence.nlargest(k).items()]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``suppression.csv`` (the long table) and ``suppression.png`` (the heatmap) into ``folder``.

        The folder is created if missing; returns the paths written.

        Example:
            >>> import tempfile
            >>> import headkit as hk
            >>> model, tok = hk.models.tiny("llama")
            >>> s = hk.sentences.locate(tok, "the cat eats . the dog eats . Tom reads books .")
            >>> result = hk.suppression.kl_matrix(model, s, progress=False)
            >>> with tempfile.TemporaryDirectory() as out:
            ...     [p.name for p in result.save(out)]
            ['suppression.csv', 'suppression.png']
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "suppression.csv", out / "suppression.png"]
        self.table().to_csv(paths[0], index=False)
        self.plot(str(paths[1]))
        return paths

    def __repr__(self) -> str:
        kind = "mean log(KL + 1e-9)" if self.log else "mean KL"
        return f"Suppression({len(self.sentences)} sentences, {kind}, heads={self.heads.short()!r})"


def kl_matrix(
    model: Any,
    sentences: Sentences,
    *,
    heads: HeadsLike | None = None,
    temperature: float = 1.0,
    log: bool = False,
    rows_per_pass: int | None = None,
    progress: bool = True,
) -> Suppression:
    """Sentence-to-sentence suppression matrix: suppress attention to each sentence, measure KL at later ones.

    ``sentences`` comes from :func:`headkit.sentences.locate`. ``heads`` defaults to every head of every
    layer (as in Thought Anchors). ``temperature`` divides the logits of both distributions first (the
    authors used 0.6); ``log=True`` averages ``log(KL + 1e-9)`` over a sentence's tokens instead of KL.
    ``rows_per_pass`` suppressed sentences are evaluated per forward pass (None: as many as keep a pass's
    logits within 256 MiB); a pass halves on out-of-memory. In a torch.distributed process group each rank
    suppresses a contiguous part of the sentences (whole passes) and every rank returns the whole matrix,
    equal to a one-process run's bit for bit.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("gpt2")
        >>> s = hk.sentences.locate(tok, "the cat eats . the dog eats . Tom reads books .")
        >>> m = hk.suppression.kl_matrix(model, s, heads="L0H0 L1H2", progress=False).matrix
        >>> bool(m[0, 1].isnan()), bool((m[2, :2] >= 0).all())
        (True, True)
    """
    from headkit.backend import get_backend
    from headkit.sentences import Sentences

    backend = get_backend(model)
    shape = backend.shape
    if not isinstance(sentences, Sentences):
        raise fail(
            f"kl_matrix got sentences {describe(sentences)}",
            "a headkit.sentences.Sentences (a tokenised text and its sentence spans)",
            "build it with hk.sentences.locate(tokenizer, text)",
        )
    chosen = Heads.all(shape.n_layers, shape.n_heads) if heads is None else coerce(heads, "kl_matrix")
    chosen.validate(shape.n_layers, shape.n_heads, n_kv_heads=shape.n_kv_heads, owner="kl_matrix")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise fail(f"kl_matrix got temperature={temperature!r}", "a number > 0", "pass temperature=1.0 (or 0.6)")
    RowSizer(rows_per_pass, len(sentences), "kl_matrix")  # names a bad rows_per_pass before any work

    ids = sentences.input_ids
    member = sentences.membership()  # [S, T]
    n_sent, n_tok = member.shape
    covered = member.any(0)  # positions that belong to a sentence
    first = torch.tensor([a for a, _ in sentences.spans])

    with torch.no_grad():
        base = backend.logits(ids, positions=covered[None])  # [n_covered, vocab]: the unsuppressed reference
        base_logp = torch.log_softmax(base.float() / temperature, -1)
        del base
    later = lambda js: covered[None] & (torch.arange(n_tok)[None] >= first[js][:, None])  # noqa: E731  sentences i >= j
    readout = KL(base_logp, covered, later, float(temperature))
    token_kl = torch.full((n_sent, n_tok), torch.nan, dtype=torch.float64)
    size = _budgeted(rows_per_pass, n_sent, int(covered.sum()), base_logp.shape[-1])
    here = world()
    mine = here.part(n_sent, block=size)  # this rank's sentences (all of them in one process)
    rows = Rows(torch.arange(mine.start, mine.stop), torch.zeros(len(mine)))
    passes = sweep(backend, ids, None, readout, key_masks(chosen, member), rows, rows_per_pass=size,
                   progress=progress and n_sent > 1 and here.first, desc="suppressed sentences", unit="sentence")
    for suppressed, position, kl in passes:  # row j suppresses sentence j; KL at the tokens of sentences i >= j
        token_kl[suppressed, position] = kl.double().cpu()
    if here.size > 1:
        token_kl = assemble(here.gather((mine.start, token_kl[mine.start : mine.stop])), n_sent)
    values = (token_kl + 1e-9).log() if log else token_kl
    matrix = torch.full((n_sent, n_sent), torch.nan, dtype=torch.float64)
    for i in range(n_sent):
        matrix[i, : i + 1] = values[: i + 1, member[i]].mean(-1)
    return Suppression(matrix, token_kl, sentences, chosen, log, float(temperature))


_LOGIT_BUDGET = 1 << 26
"""Default size of a pass: as many suppressed sentences as keep its logits within 256 MiB (float32)."""


def _budgeted(given: int | None, n_sent: int, n_covered: int, vocab: int) -> int:
    """The given size, or as many sentences as keep a pass's logits within the budget (packing more does not
    pay on a CPU: the unembedding dominates; benchmarks/results/suppression_speed_cpu.md)."""
    return given if given is not None else max(1, min(n_sent, _LOGIT_BUDGET // max(1, n_covered * vocab)))
