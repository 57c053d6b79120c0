"""How the transformers adapter reaches the ``scores`` and ``pattern`` sites: its attention function.

For the layers that need an attention mask or capture, :func:`headkit.adapters.huggingface.applied` points the
attention module (through a private copy of its config) at the function registered here with transformers'
``AttentionInterface`` under the name ``"headkit"``:

    _LayerRun           what that function does in one layer: turns the layer's mask into an additive
                        ``[batch, head, q, k]`` mask, writes -inf for the masked cells and calls the model's own
                        eager or sdpa attention (captures force eager); pooled captures read long texts in
                        chunks of query rows (``_POOL_CHUNK_ELEMENTS``)
    _point_at_headkit   routes one attention module through headkit, with one block's run added; returns the undo
    _Attached           one module's routing state while any block is active (``_ATTACHED``: every routed module)
    _keep_cache         a model pre-hook keeping each forward pass's KV cache, for masks on sliding-window layers

Layers with no attention intervention are never touched. Imports nothing from transformers until used.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from headkit.core.architectures import additive_mask, cached_tokens, find_cache
from headkit.core.captures import Captures
from headkit.core.interventions import CaptureAttention, Intervention, MaskAttention, apply_masks

_ATTENTION_NAME = "headkit"  # registered with transformers' AttentionInterface on first use


@dataclass
class _LayerRun:
    """What the registered attention function does in one layer."""

    layer: int
    where: str
    base: str  # the implementation the model was loaded with: "eager" or "sdpa"
    eager: Callable
    masks: list[MaskAttention] = field(default_factory=list)
    readers: list[tuple[Intervention, Captures]] = field(default_factory=list)  # pattern-site captures, each with
    # the Captures of the block that applied it (blocks sharing a layer record into their own)
    cache: dict[str, Any] = field(default_factory=dict)  # {"kv": the forward's KV cache}, set by a model pre-hook

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, n_heads, q_len, _ = query.shape
        k_len = key.shape[-2]
        rows = _POOL_CHUNK_ELEMENTS // max(1, batch * n_heads * k_len)
        if self.readers and not self.masks and q_len == k_len > rows and all(_pools(iv) for iv, _ in self.readers):
            return self._pooled(module, query, key, value, attention_mask, max(rows, 1), **kwargs)
        use_eager = self.base == "eager" or bool(self.readers)
        mask = attention_mask
        if self.masks or (use_eager and self.base != "eager"):
            mask = additive_mask(attention_mask, q_len, k_len, query.dtype, query.device)
        dead = None
        if self.masks:
            k_start = self._first_key(q_len, k_len)
            mask, dead = apply_masks(
                self.masks, self.layer, mask.expand(batch, n_heads, q_len, k_len), self.where, k_start
            )
        attend = self.eager if use_eager else _sdpa()
        out, weights = attend(module, query, key, value, mask, **kwargs)  # out: [batch, q, head, d_head]
        if dead is not None and dead.any():
            out = out.masked_fill(dead.transpose(1, 2)[..., None], 0)
            if weights is not None:
                weights = weights.masked_fill(dead[..., None], 0)
        if weights is not None:
            for iv, got in self.readers:
                got.put(iv, self.layer, iv.read("pattern", self.layer, weights, self.where))
        return out, weights

    def _first_key(self, q_len: int, k_len: int) -> int:
        """Absolute position of the first key: > 0 when a sliding-window cache dropped older keys.

        Only cached decoding (q_len < k_len) can see a shortened key axis; the cache has been updated with
        this call's keys already, so it holds ``total`` tokens and the key axis covers the last ``k_len``.
        """
        kv = self.cache.get("kv")
        if q_len == k_len or kv is None:
            return 0
        return max(0, cached_tokens(kv, self.layer) - k_len)

    def _pooled(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rows: int,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """Eager attention in chunks of query rows, each chunk's weights pooled and dropped at once.

        Attention rows are independent, so the output equals one eager call; only ``rows`` query rows
        of one layer's pattern, and of its mask, exist at a time (the pooled captures are the only readers).
        """
        q_len, k_len = query.shape[-2], key.shape[-2]
        outs = []
        for start in range(0, q_len, rows):
            part = slice(start, start + rows)
            n = len(range(q_len)[part])
            if attention_mask is None:  # causal: the chunk's rows are the last n of its first start + n keys
                mask = additive_mask(None, n, start + n, query.dtype, query.device)
                mask = torch.nn.functional.pad(mask, (0, k_len - start - n), value=torch.finfo(query.dtype).min)
            else:
                mask = additive_mask(attention_mask[:, :, part], n, k_len, query.dtype, query.device)
            out, weights = self.eager(module, query[:, :, part], key, value, mask, **kwargs)
            for iv, got in self.readers:
                part = iv.pool_rows(self.layer, weights, start, self.where)  # type: ignore[attr-defined]
                (got.put if start == 0 else got.add)(iv, self.layer, part)
            outs.append(out)
            del weights
        return torch.cat(outs, dim=1), None


_POOL_CHUNK_ELEMENTS = 1 << 22
"""Pattern cells (batch x heads x rows x keys) per chunk when pooled captures read a layer: 16 MiB in fp32."""


def _pools(iv: Intervention) -> bool:
    return isinstance(iv, CaptureAttention) and iv.pool is not None


def _keep_cache(holder: dict[str, Any]) -> Callable:
    """A forward pre-hook on the model keeping the KV cache of each forward pass (generate passes it).

    The cache is found by what it is, not by the keyword it came under (``past_key_values`` before
    transformers 5.24, ``cache`` since).
    """

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        holder["kv"] = find_cache(args, kwargs)

    return hook



def _sdpa() -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def _attention_function(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple:
    """The function registered with transformers as attention implementation "headkit"."""
    return module.config.headkit_run(module, *args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface

    if _ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(_ATTENTION_NAME, _attention_function)


class _Attached:
    """The headkit state of one attention module: its own config, and every active block's run, in entry order.

    The module's config is swapped for a copy selecting the headkit attention function while any block is
    active; each block removes only its own run, and the last one out restores the original config, so
    blocks may be exited in any order (generators, manual ``__exit__``, exceptions).
    """

    def __init__(self, attn: torch.nn.Module) -> None:
        self.original = attn.config
        self.runs: list[_LayerRun] = []

    def __call__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple:
        runs = self.runs
        run = runs[0] if len(runs) == 1 else _LayerRun(
            runs[0].layer, runs[0].where, runs[0].base, runs[0].eager,
            [m for r in runs for m in r.masks], [reader for r in runs for reader in r.readers],
            next((r.cache for r in runs if r.cache.get("kv") is not None), runs[0].cache),
        )
        return run(module, *args, **kwargs)


_ATTACHED: weakref.WeakKeyDictionary[torch.nn.Module, _Attached] = weakref.WeakKeyDictionary()


def _point_at_headkit(attn: torch.nn.Module, run: _LayerRun) -> Callable[[], None]:
    """Route one attention module's attention through headkit with ``run`` added; return the undo."""
    state = _ATTACHED.get(attn)
    if state is None:
        state = _ATTACHED[attn] = _Attached(attn)
        view = copy.copy(state.original)
        view._attn_implementation_internal = _ATTENTION_NAME
        view.headkit_run = state
        attn.config = view
    state.runs.append(run)

    def undo() -> None:
        if any(r is run for r in state.runs):
            state.runs[:] = [r for r in state.runs if r is not run]
        if not state.runs and _ATTACHED.get(attn) is state:
            attn.config = state.original
            del _ATTACHED[attn]

    return undo
