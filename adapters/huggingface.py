"""headkit on plain transformers models: torch hooks, no TransformerLens, the lean path engines run on.

    import headkit as hk
    from headkit.adapters import huggingface as hk_hf

    with hk_hf.applied(model, hk.zero_ablate("L5H1"), hk.mask_attention("L9H9", keys=[(3, 8)])):
        logits = model(input_ids).logits          # generate() works too
    cap = hk.capture_attention("L9H9")
    with hk_hf.applied(model, cap) as got:        # the block yields what its captures record
        model(input_ids)
    got[cap].pattern(9, 9)                        # [batch, query, key]

How each site is reached (all architecture knowledge sits in ``headkit.core.architectures.ARCHITECTURES``):

- ``z``: a forward pre-hook on the output projection (``o_proj`` / ``c_proj`` / ``dense``) sees its input
  ``[batch, pos, n_heads * d_head]`` and hands interventions the view ``[batch, pos, head, d_head]``.
- ``scores`` and ``pattern``: for the layers that need them, the attention module is pointed (through a
  private copy of its config) at an attention function registered with transformers'
  ``AttentionInterface``. That function turns the layer's mask into an additive ``[batch, head, q, k]``
  mask, writes -inf for the masked cells, and calls the model's own eager or sdpa attention, so it works
  whichever of the two the model was loaded with; captures force eager for that layer only. Layers with
  no attention intervention are not touched at all.

Everything attached is removed when the ``with`` block ends, also when it ends in an exception.
"""

from __future__ import annotations

import copy
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from headkit.backend import unembedding_only_at
from headkit.core.adapter import AdapterBase, HeadPaths, pad_id
from headkit.core.architectures import (
    additive_mask,
    cached_tokens,
    check_maskable,
    find_cache,
    frozen_norm,
    head_outputs,
    model_modules,
)
from headkit.core.captures import Captures, Run
from headkit.core.errors import fail
from headkit.core.inputs import check_inputs, real_token_positions
from headkit.core.interventions import CaptureAttention, Intervention, MaskAttention, apply_masks
from headkit.core.plan import plan
from headkit.core.sites import ModelShape

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

__all__ = ["backend_for", "applied", "model_shape", "HFBackend", "head_paths"]


_ATTENTION_NAME = "headkit"  # registered with transformers' AttentionInterface on first use


def model_shape(model: Any) -> ModelShape:
    """The head geometry of a transformers model.

    Example:
        >>> import headkit as hk
        >>> from headkit.adapters import huggingface as hk_hf
        >>> model, _ = hk.models.tiny("gemma3")
        >>> hk_hf.model_shape(model)
        ModelShape(n_layers=4, n_heads=4, d_head=16, n_kv_heads=1)
    """
    return model_modules(model, "the transformers adapter").shape


# ------------------------------------------------------------------------------------------------- z site
def _z_hook(ivs: list[Intervention], layer: int, shape: ModelShape, where: str, got: Captures) -> Callable:
    heads = (shape.n_heads, shape.d_head)

    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0]  # [batch, pos, n_heads * d_head]
        z = x.unflatten(-1, heads)
        for iv in ivs:
            if iv.reads_only:
                got.put(iv, layer, iv.read("z", layer, z, where))
            else:
                z = iv.edit("z", layer, z, where)
        return (z.flatten(-2), *args[1:])

    return hook


# ------------------------------------------------------------------------------------------------- attention
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


def _vocab_size(model: Any) -> int:
    """Logits per position of a transformers causal LM (its unembedding's rows, else the config's vocabulary)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


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


# ------------------------------------------------------------------------------------------------- public
@contextmanager
def applied(model: Any, *interventions: Intervention) -> Iterator[Captures]:
    """Apply interventions to every forward pass of a transformers model inside the ``with`` block.

    Validates everything before attaching anything; removes everything on exit, also after an exception.
    ``model.generate`` inside the block runs with the interventions applied at every step. The block
    yields a fresh :class:`~headkit.core.captures.Captures`: what its captures read (each layer's record
    from the latest forward pass), ``got[cap].pattern(layer, head)``; the captures themselves never change.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.adapters import huggingface as hk_hf
        >>> model, tok = hk.models.tiny("llama")
        >>> ids = torch.tensor([[1, 5, 6, 7]])
        >>> plain = model(ids).logits
        >>> with hk_hf.applied(model, hk.zero_ablate("L1H0"), hk.mask_attention("L0H1", keys=[(1, 2)])):
        ...     logits = model(ids).logits
        >>> logits.shape, torch.allclose(logits, plain)   # the interventions change the logits inside the block
        (torch.Size([1, 4, 100]), False)
        >>> torch.equal(model(ids).logits, plain)         # and leave nothing attached after it
        True
        >>> cap = hk.capture_attention("L1H3")
        >>> with hk_hf.applied(model, cap) as got:
        ...     _ = model(ids)
        >>> got[cap].pattern(1, 3).shape, got[cap].pattern(1, 3).sum(-1)
        (torch.Size([1, 4, 4]), tensor([[1., 1., 1., 1.]]))
    """
    found = model_modules(model, "huggingface.applied")
    groups = plan(interventions, found.shape, "huggingface.applied")
    got = Captures()
    runs: dict[int, _LayerRun] = {}
    for (site, layer), ivs in groups.items():
        if site == "z":
            continue
        run = runs.get(layer)
        if run is None:
            attn = found.attention(layer)
            base = check_maskable(model.config._attn_implementation, "attention masks and captures")
            eager = getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None)
            if eager is None:
                raise fail(
                    f"attention masks and captures found no eager_attention_forward beside {type(attn).__name__}",
                    "a transformers 5.x modeling module that defines it",
                    "upgrade transformers (headkit targets 5.x), or use z-site interventions only",
                )
            run = runs[layer] = _LayerRun(layer, found.where(layer, "attention"), base, eager)
        if site == "scores":
            run.masks.extend(iv for iv in ivs if isinstance(iv, MaskAttention))
        else:  # pattern: the mask's own pattern step is done by the run's dead-row zeroing
            run.readers.extend((iv, got) for iv in ivs if not isinstance(iv, MaskAttention))
    undo: list[Callable[[], None]] = []
    holder: dict[str, Any] = {}  # the current forward pass's KV cache, for masks on sliding-window layers
    needs_cache = False
    try:
        for (site, layer), ivs in groups.items():
            if site == "z":
                hook = _z_hook(ivs, layer, found.shape, found.where(layer, "z"), got)
                undo.append(found.out_proj(layer).register_forward_pre_hook(hook).remove)
        if runs:
            _register()
        for layer, run in runs.items():
            attn = found.attention(layer)
            run.cache = holder
            needs_cache = needs_cache or bool(run.masks)
            undo.append(_point_at_headkit(attn, run))
        if needs_cache:
            undo.append(model.register_forward_pre_hook(_keep_cache(holder), with_kwargs=True).remove)
        yield got
    finally:
        for step in reversed(undo):
            step()


class HFBackend(AdapterBase):
    """The headkit backend for a transformers model (see :class:`headkit.backend.Backend`).

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.adapters.huggingface import HFBackend
        >>> model, tok = hk.models.tiny("gpt2")
        >>> backend = HFBackend(model, tok)
        >>> backend.logits(torch.tensor([[1, 5, 6]]), hk.zero_ablate("L0H1")).shape
        torch.Size([1, 3, 100])
        >>> cap = hk.capture_attention("L1H2")
        >>> logits, got = backend.run(torch.tensor([[1, 5, 6]]), cap)
        >>> got[cap].pattern(1, 2).shape
        torch.Size([1, 3, 3])
    """

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.shape = model_modules(model, "HFBackend").shape
        self.vocab_size = _vocab_size(model)

    @property
    def torch_module(self) -> torch.nn.Module:
        return self.model

    def applied(self, *interventions: Intervention) -> Any:
        """Apply interventions inside a ``with`` block, which yields the Captures (see :func:`applied`)."""
        return applied(self.model, *interventions)

    def run(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Run:
        """One forward pass with interventions applied; returns its logits and what its captures read.

        With an ``attention_mask``, positions count real tokens only (as in ``generate`` and
        TransformerLens), so a left-padded row sees the same positions as when it runs alone.
        ``last_only=True`` computes the logits of the last position only (``[batch, 1, vocab]``);
        ``positions`` (bool ``[batch, pos]``) those of the True cells only (``[n, vocab]``, row-major).
        """
        self.check(input_ids, attention_mask, "HFBackend.logits", last_only, positions)
        device = self.device
        kwargs: dict[str, Any] = {"use_cache": False}
        if last_only:
            kwargs["logits_to_keep"] = 1
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            kwargs.update(attention_mask=attention_mask, position_ids=real_token_positions(attention_mask))
        with applied(self.model, *interventions) as got, unembedding_only_at(self.model.get_output_embeddings(), positions):
            logits = self.model(input_ids=input_ids.to(device), **kwargs).logits
        return Run(logits if positions is None else logits[0], got)

    def head_paths(self, input_ids: Int[torch.Tensor, "1 pos"], position: int, *interventions: Intervention) -> HeadPaths:
        """Every head's direct path to the logits at ``position`` of one sequence (see :class:`HeadPaths`)."""
        return head_paths(self, self.model, input_ids, position, *interventions)

    def generate(
        self, input_ids: Int[torch.Tensor, "batch pos"], *interventions: Intervention, max_new_tokens: int = 20, **kwargs: Any
    ) -> Int[torch.Tensor, "batch total"]:
        """``model.generate`` with interventions applied at every step (KV cache on); returns the token ids.

        ``kwargs`` go to ``generate`` (``do_sample``, ``temperature``, ``top_p``, ``attention_mask`` ...);
        greedy by default.
        """
        check_inputs(input_ids, kwargs.get("attention_mask"), self.vocab_size, "HFBackend.generate")
        device = self.device
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", pad_id(self.model.config))
        with applied(self.model, *interventions):
            return self.model.generate(input_ids.to(device), max_new_tokens=max_new_tokens, **kwargs)

    def __repr__(self) -> str:
        return f"HFBackend({type(self.model).__name__}, {self.shape})"


def head_paths(
    backend: Any, model: Any, input_ids: Int[torch.Tensor, "1 pos"], position: int, *interventions: Intervention
) -> HeadPaths:
    """:class:`HeadPaths` of a transformers model, read by torch hooks during one forward pass of ``backend``.

    Each layer's z and attention output and the final norm's input are kept at ``position``; W_O, the norms
    and the unembedding are the model's own modules (as found by :mod:`headkit.core.architectures`).

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.adapters.huggingface import HFBackend, head_paths
        >>> model, tok = hk.models.tiny("gemma3")
        >>> paths = head_paths(HFBackend(model), model, torch.tensor([[1, 5, 6]]), 2)
        >>> paths.head_out.shape, paths.softcap is None
        (torch.Size([4, 4, 64]), True)
    """
    found = model_modules(model, "head_paths")
    shape = found.shape
    z: dict[int, torch.Tensor] = {}
    attn_out: dict[int, torch.Tensor] = {}
    final_in: list[torch.Tensor] = []

    def keep_input(store: dict, layer: int) -> Callable:
        return lambda module, args: store.__setitem__(layer, args[0][0, position].detach().clone())

    def keep_output(store: dict, layer: int) -> Callable:
        return lambda module, args, output: store.__setitem__(layer, output[0, position].detach().clone())

    at = torch.zeros(input_ids.shape, dtype=torch.bool)
    at[0, position] = True
    norm = found.final_norm(model)
    hooks = [norm.register_forward_pre_hook(lambda module, args: final_in.append(args[0][0, position].detach().clone()))]
    try:
        for layer in range(shape.n_layers):
            hooks.append(found.out_proj(layer).register_forward_pre_hook(keep_input(z, layer)))
            hooks.append(found.out_proj(layer).register_forward_hook(keep_output(attn_out, layer)))
        with torch.no_grad():
            run = backend.run(input_ids, *interventions, positions=at)
    finally:
        for hook in hooks:
            hook.remove()
    outs = []
    for layer in range(shape.n_layers):
        contrib = head_outputs(found.out_proj(layer), z[layer], shape.n_heads)  # [head, d_model]
        block_norm = found.attn_out_norm(layer)
        outs.append(frozen_norm(block_norm, attn_out[layer])(contrib) if block_norm is not None else contrib)
    unembed = model.get_output_embeddings().weight.detach().float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return HeadPaths(torch.stack(outs), frozen_norm(norm, final_in[0]), unembed, run.logits[0].float(), softcap,
                     run.captures)


def backend_for(model: Any, tokenizer: Any = None) -> HFBackend | None:
    """The backend of a transformers ``PreTrainedModel``, or None for any other object.

    Example:
        >>> import headkit as hk
        >>> from headkit.adapters import huggingface as hk_hf
        >>> model, tok = hk.models.tiny("gpt2")
        >>> type(hk_hf.backend_for(model, tok)).__name__, hk_hf.backend_for("not a model")
        ('HFBackend', None)
    """
    import transformers

    return HFBackend(model, tokenizer) if isinstance(model, transformers.PreTrainedModel) else None
