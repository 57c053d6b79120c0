"""Interventions on attention: the pre-softmax key mask (scores, and its dead rows in the pattern) and the
attention capture (pattern, optionally pooled to sentences)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch

from headkit.core.errors import fail
from headkit.core.heads import Heads, coerce
from headkit.core.positions import membership, position_mask, position_spec, spans

if TYPE_CHECKING:  # jaxtyping is for readers and type checkers; nothing here needs it at run time
    from jaxtyping import Bool, Float

    from headkit.core.heads import HeadsLike
    from headkit.core.sites import Site

    Spans = Sequence[tuple[int, int]]
    PositionSpec = Union[Spans, Bool[torch.Tensor, " pos"], Bool[torch.Tensor, "batch pos"]]

from headkit.core.interventions.base import Intervention, show_value

__all__ = ["MaskAttention", "CaptureAttention", "apply_masks", "mask_attention", "capture_attention"]


class MaskAttention(Intervention):
    """Set chosen keys to -inf before softmax in chosen heads. Build with :func:`mask_attention`."""

    sites = ("scores", "pattern")
    heads: Heads
    keys: PositionSpec
    queries: PositionSpec | None
    defaults = {"queries": None}

    def __init__(self, heads: HeadsLike, keys: PositionSpec, queries: PositionSpec | None = None) -> None:
        self._set(
            heads=coerce(heads, "mask_attention"),
            keys=position_spec(keys, "keys"),
            queries=None if queries is None else position_spec(queries, "queries"),
        )

    def blocked(
        self,
        layer: int,
        n_heads: int,
        batch: int,
        q_len: int,
        k_len: int,
        device: torch.device,
        where: str,
        k_start: int = 0,
    ) -> Bool[torch.Tensor, "batch head query key"]:
        """The requested (head, query, key) cells to block in ``layer``, before the causal mask is considered.

        The key axis holds absolute positions ``k_start ... k_start + k_len - 1`` (``k_start > 0`` when a
        sliding-window cache keeps only the latest keys); query rows are the last ``q_len`` of them (cached
        decoding has q_len < k_len). The batch axis is 1 when the same cells are blocked in every row.
        """
        head_sel = torch.zeros(n_heads, dtype=torch.bool, device=device)
        head_sel[list(self.heads.in_layer(layer))] = True
        total = k_start + k_len
        keys = position_mask(self.keys, "keys", total, q_len, batch, device, self, where)[:, k_start:]  # [b, k]
        if self.queries is None:
            queries = torch.ones(1, q_len, dtype=torch.bool, device=device)
        else:
            queries = position_mask(self.queries, "queries", total, q_len, batch, device, self, where)[:, total - q_len :]
        return head_sel[None, :, None, None] & queries[:, None, :, None] & keys[:, None, None, :]

    def mask_scores(
        self, layer: int, scores: Float[torch.Tensor, "batch head query key"], where: str, k_start: int = 0
    ) -> tuple[Float[torch.Tensor, "batch head query key"], Bool[torch.Tensor, "batch head query"]]:
        """Write -inf into the blocked, causally allowed cells; return the new scores and the dead rows.

        A cell is allowed when its score is above ``finfo.min / 2`` (causal, sliding-window and padding masks
        hold ``finfo.min`` or -inf). A *dead* row is a query whose every allowed key is blocked: it is left
        untouched here (so no NaN and no attention to future tokens can arise) and the head's output for
        that row is zeroed after softmax.
        """
        self._check("scores", scores, where, self.heads.in_layer(layer))
        b, h, q, k = scores.shape
        blocked = self.blocked(layer, h, b, q, k, scores.device, where, k_start)
        allowed = scores > torch.finfo(scores.dtype).min / 2
        hit = blocked & allowed
        dead = allowed.any(-1) & ~(allowed & ~hit).any(-1)
        return scores.masked_fill(hit & ~dead[..., None], float("-inf")), dead

    def edit(self, site: Site, layer: int, activation: torch.Tensor, where: str, k_start: int = 0) -> torch.Tensor:
        if not self.heads.in_layer(layer):
            return activation
        if site == "scores":
            return self.mask_scores(layer, activation, where, k_start)[0]
        return self._zero_dead_rows(layer, activation, where, k_start)

    def _zero_dead_rows(
        self, layer: int, pattern: torch.Tensor, where: str, k_start: int = 0, nan_rows: bool = False
    ) -> torch.Tensor:
        """Zero the pattern rows whose attention went only to blocked keys (and, with ``nan_rows``, all-NaN rows).

        After mask_scores the first are exactly the dead rows (a live row puts all its mass on unblocked
        keys), so no state passes between hooks. An all-NaN row in the mask's heads and queries is one a plain
        scores hook blocked entirely on a bridge whose causal cells hold ``finfo.min`` (see :meth:`hook_edit`).
        """
        self._check("pattern", pattern, where, self.heads.in_layer(layer))
        b, h, q, k = pattern.shape
        blocked = self.blocked(layer, h, b, q, k, pattern.device, where, k_start)
        attended = pattern > 0
        dead = attended.any(-1) & ~(attended & ~blocked).any(-1)
        if nan_rows:
            dead = dead | (pattern.isnan().all(-1) & blocked.any(-1))
        return pattern.masked_fill(dead[..., None], 0)

    def hook_edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        """As a plain ``hook_attn_scores`` hook, a query left with no key gets -inf on every key.

        That is what a hand-written -inf hook does: TransformerLens 2.x/3.x ``HookedTransformer`` and
        bridges in compatibility mode turn such a row into zero attention; a default-mode bridge (whose
        causal mask holds ``finfo.min``) gives NaN there unless the mask is also attached at
        ``hook_pattern``, where :meth:`edit` zeroes the row. (Through an adapter the row is left unmasked
        and zeroed after softmax instead, so no NaN arises, also in gradients.)
        """
        if not self.heads.in_layer(layer):
            return activation
        if site == "scores":
            scores, dead = self.mask_scores(layer, activation, where)
            return scores.masked_fill(dead[..., None], float("-inf"))
        return self._zero_dead_rows(layer, activation, where, nan_rows=True)


def apply_masks(
    masks: Sequence[MaskAttention],
    layer: int,
    scores: Float[torch.Tensor, "batch head query key"],
    where: str,
    k_start: int = 0,
) -> tuple[Float[torch.Tensor, "batch head query key"], Bool[torch.Tensor, "batch head query"]]:
    """Apply several masks to one layer's scores in turn; return the scores and the union of their dead rows.

    Each mask sees the cells the earlier ones removed as disallowed, so a row becomes dead when the masks
    together leave it no key. ``k_start`` is the absolute position of the first key (see ``blocked``). Adapters that see scores (or an additive mask) and the outputs in one place
    use this; the head's output for a dead row is then zeroed.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.core.interventions import apply_masks
        >>> scores = torch.zeros(1, 1, 2, 2).masked_fill(torch.ones(2, 2, dtype=torch.bool).triu(1), -1e38)
        >>> masks = [hk.mask_attention("L0H0", keys=[(0, 1)]), hk.mask_attention("L0H0", keys=[(1, 2)])]
        >>> apply_masks(masks, 0, scores, "example")[1].tolist()
        [[[True, True]]]
    """
    dead = torch.zeros(scores.shape[:-1], dtype=torch.bool, device=scores.device)
    for iv in masks:
        scores, rows = iv.mask_scores(layer, scores, where, k_start)
        dead = dead | rows
    return scores, dead


def mask_attention(heads: HeadsLike, keys: PositionSpec, queries: PositionSpec | None = None) -> MaskAttention:
    """Mask attention before softmax: chosen heads give exactly zero weight to chosen key tokens.

    ``keys`` (and optional ``queries``, default all) are token positions: a list of half-open ranges
    ``[(start, end), ...]``, a bool tensor ``[pos]``, or a bool tensor ``[batch, pos]`` for a different mask
    in every batch row. The scores of those cells become ``-inf`` before softmax, so the other keys are
    renormalised exactly. A query row whose every allowed key is masked gets zero attention, so the head
    contributes nothing at that position (never NaN, never attention to future tokens).

    Example:
        >>> import headkit as hk
        >>> hk.mask_attention("L2H1 L3H0", keys=[(4, 9)])
        MaskAttention(heads='L2H1 L3H0', keys=[(4, 9)])
    """
    return MaskAttention(heads, keys, queries)


class CaptureAttention(Intervention):
    """Read the chosen heads' attention patterns (optionally pooled). Build with :func:`capture_attention`.

    A value like the other interventions: what it reads goes into the Captures of the run it is applied
    in (``got[cap].pattern(layer, head)``), never into the capture itself.
    """

    sites = ("pattern",)
    reads_only = True
    heads: Heads
    pool: Spans | None
    defaults = {"pool": None}

    def __init__(self, heads: HeadsLike, pool: Spans | None = None) -> None:
        self._set(heads=coerce(heads, "capture_attention"), pool=None if pool is None else spans(pool, "pool"))

    def show(self, name: str, value: Any) -> str:
        if name == "pool":
            return f"{len(value)} spans"
        return show_value(value)

    def read(
        self, site: Site, layer: int, activation: torch.Tensor, where: str
    ) -> Float[torch.Tensor, "batch heads query key"] | None:
        """The chosen heads of one layer's pattern, detached: ``[batch, n_chosen, query, key]`` (or pooled)."""
        idx = self.heads.in_layer(layer)
        self._check(site, activation, where, idx)
        if not idx:
            return None
        if self.pool is not None:
            q, k = activation.shape[-2:]
            if q != k:
                raise fail(
                    f"{self!r} at {where!r} got {q} query rows for {k} keys (a cached decoding step)",
                    "a full forward pass when pooling to sentences",
                    "capture during a plain forward, or drop pool= to keep token-level rows",
                )
            return self.pool_rows(layer, activation, 0, where)
        return activation.detach()[:, list(idx)]  # [batch, k, query, key]

    def pool_rows(
        self, layer: int, rows: Float[torch.Tensor, "batch head rows key"], start: int, where: str
    ) -> Float[torch.Tensor, "batch heads sentence sentence"] | None:
        """The pooled contribution of query rows ``start ...`` of one layer's pattern (all heads given).

        Sentence pooling is linear in the query rows, so an adapter may hand the pattern over in chunks of
        rows and add the parts up (``captures.put`` the chunk at ``start = 0``, ``captures.add`` the others),
        never holding a whole layer's pattern.
        """
        idx = self.heads.in_layer(layer)
        if not idx:
            return None
        chunk = rows.detach()[:, list(idx)].float()  # [batch, k, rows, key]
        k_len = chunk.shape[-1]
        assert self.pool is not None  # only pooled captures hand their rows over in chunks
        member = membership(self.pool, k_len, chunk.device, self, where)  # [sentences, pos]
        return torch.einsum("sq,bhqk,tk->bhst", member[:, start : start + chunk.shape[-2]], chunk, member)


def capture_attention(heads: HeadsLike, pool: Spans | None = None) -> CaptureAttention:
    """Capture the attention patterns of chosen heads only (detached), as the forward pass runs.

    ``pool`` is a list of half-open token spans ``[(start, end), ...]`` (e.g. sentences). With it, each
    head's ``[query, key]`` pattern is reduced on the fly to the ``[sentence, sentence]`` matrix of block
    means ``A[i, j] = mean(pattern[span_i, span_j])`` (causal zeros included), so long texts never
    materialise full patterns. The capture is a value: what it reads comes back in the run's Captures,
    ``got[cap].pattern(layer, head)`` or ``got[cap].patterns``, where ``got`` is what an adapter's
    ``applied(model, cap)`` yields, ``hk_nn.apply`` returns or ``backend.run(...).captures`` holds.

    Example:
        >>> import headkit as hk
        >>> cap = hk.capture_attention("L0H1 L1H0", pool=[(0, 5), (5, 12)])
        >>> cap
        CaptureAttention(heads='L0H1 L1H0', pool=2 spans)
        >>> cap == hk.capture_attention("L1H0 L0H1", pool=[(0, 5), (5, 12)])  # a value: equal fields, equal
        True
        >>> import torch
        >>> model, tok = hk.models.tiny("gpt2")
        >>> logits, got = hk.get_backend(model).run(torch.arange(1, 13)[None], cap)
        >>> got[cap].pattern(1, 0).shape                       # [batch, sentence, sentence]
        torch.Size([1, 2, 2])
    """
    return CaptureAttention(heads, pool)
