"""headkit on TransformerLens 4.x ``TransformerBridge`` models.

    import headkit as hk
    from headkit.adapters import transformer_lens as hk_tl

    logits = model.run_with_hooks(tokens, fwd_hooks=hk_tl.fwd_hooks(model, hk.zero_ablate("L5H1")))
    with hk_tl.applied(model, hk.gate(G), hk.mask_attention("L9H9", keys=[(10, 20)])):
        logits = model(tokens)                     # model.generate(...) too

Sites map to ``blocks.{l}.attn.hook_z``, ``hook_attn_scores`` and ``hook_pattern``; the adapter uses each
hook point's live name, so it works with and without ``enable_compatibility_mode``.

**Pre-softmax masks need a bridge that computes attention itself.** The Llama/Qwen/Gemma/Mistral
(``PositionEmbeddingsAttentionBridge``), GPT-2 and GPT-NeoX (``JointQKV...``) bridges do; others (OPT,
GPT-J, GPT-Neo, ...) hand attention to transformers and fire ``hook_attn_scores`` after the fact, where
TransformerLens discards edits. headkit refuses a mask there instead of silently doing nothing.

**Exact ablation and the value-bias trap.** Zeroing ``hook_z`` equals removing the head (zeroing its W_O
rows) in the default bridge and after ``enable_compatibility_mode(no_processing=True)``. With the default
weight processing of ``enable_compatibility_mode()`` (``fold_value_biases=True``) each head's value bias
b_V is folded into the shared output bias b_O, so zeroing ``z`` leaves ``W_O b_V`` in the output: the
head is not fully removed on models with value biases (GPT-2, Pythia, Qwen2). For exact ablation use the
default mode, ``enable_compatibility_mode(no_processing=True)`` or ``enable_compatibility_mode(
fold_value_biases=False)``; headkit warns when it ablates on a bridge whose weights were processed.

**A query whose every allowed key is masked** gets an all-zero pattern row (so the head outputs zero
there): ``hook_attn_scores`` leaves such rows unmasked and ``hook_pattern`` zeroes them. Both hook points
are returned by :func:`fwd_hooks`; pass both when wiring interventions by hand.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from headkit.backend import check_last_only, check_positions, plan, unembedding_only_at
from headkit.errors import StaysLocal, fail
from headkit.interventions import Intervention, MaskAttention, MeanAblate, ZeroAblate
from headkit.sites import ModelShape, Site, tl_hook_name

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

__all__ = ["fwd_hooks", "applied", "model_shape", "is_bridge", "TLBackend"]

_stays_local = StaysLocal(__name__)  # pickling this module for a remote trace fails with the fix


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge``.

    Example:
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> hk_tl.is_bridge(object())
        False
    """
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def model_shape(model: Any) -> ModelShape:
    """The head geometry of a TransformerBridge.

    Example:
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> # hk_tl.model_shape(bridge) -> ModelShape(n_layers=18, n_heads=4, d_head=256, n_kv_heads=1)
    """
    _require_bridge(model, "model_shape")
    cfg = model.cfg
    return ModelShape(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
    )


class _SiteHook:
    """One TransformerLens hook function running a site's interventions in order."""

    def __init__(self, site: Site, layer: int, interventions: list[Intervention]) -> None:
        self.site, self.layer, self.interventions = site, layer, interventions
        self.seen = 0  # tokens in the layer's KV cache before this pass; applied() keeps it current

    def __call__(self, activation: torch.Tensor, /, hook: Any) -> torch.Tensor:
        for iv in self.interventions:
            if isinstance(iv, MaskAttention):  # a sliding-window cache holds only the latest keys
                k_start = max(0, self.seen + activation.shape[-2] - activation.shape[-1])
                activation = iv.edit(self.site, self.layer, activation, hook.name, k_start)
            else:
                activation = iv.edit(self.site, self.layer, activation, hook.name)
        return activation

    def count_cached(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the layer's attention: note how many tokens its KV cache already holds."""
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        self.seen = cache.get_seq_length(self.layer) if cache is not None and hasattr(cache, "get_seq_length") else 0

    def __repr__(self) -> str:  # TransformerLens names the torch hook after this
        return f"headkit[{', '.join(map(repr, self.interventions))}]"


def fwd_hooks(model: Any, *interventions: Intervention) -> list[tuple[str, Any]]:
    """TransformerLens ``fwd_hooks`` for ``run_with_hooks`` / ``model.hooks``: ``[(hook_name, fn), ...]``.

    Validates every intervention against the model first. Names are the bridge's live hook names.

    Example:
        >>> import headkit as hk
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> # logits = bridge.run_with_hooks(tokens, fwd_hooks=hk_tl.fwd_hooks(bridge, hk.zero_ablate("L1H0")))
    """
    _require_bridge(model, "fwd_hooks")
    shape = model_shape(model)
    groups = plan(interventions, shape, "transformer_lens.fwd_hooks")
    _refuse_delegated_masks(model, groups)
    _warn_folded_value_biases(model, interventions)
    hook_dict = model.hook_dict
    return [(_live_name(hook_dict, site, layer), _SiteHook(site, layer, ivs)) for (site, layer), ivs in groups.items()]


@contextmanager
def applied(model: Any, *interventions: Intervention) -> Iterator[None]:
    """Apply interventions to every forward pass of a TransformerBridge inside the ``with`` block.

    Works with ``model(...)``, ``run_with_cache`` and ``generate``. Everything it attached is removed on
    exit, also after an exception; hooks you attached yourself are left alone.

    Example:
        >>> import headkit as hk
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> # with hk_tl.applied(bridge, hk.zero_ablate("L1H0")):
        >>> #     logits = bridge(tokens)
    """
    hooks = fwd_hooks(model, *interventions)
    hook_dict = model.hook_dict
    attached = []
    counters: list[Any] = []  # pre-hooks telling mask hooks how many keys a sliding-window cache dropped
    try:
        for name, fn in hooks:
            point = hook_dict[name]
            attached.append((point, point.add_hook(fn, dir="fwd")))
            if fn.site != "z" and any(isinstance(iv, MaskAttention) for iv in fn.interventions):
                handle = model.blocks[fn.layer].attn.register_forward_pre_hook(fn.count_cached, with_kwargs=True)
                counters.append(handle)
        yield
    finally:
        for counter in counters:
            counter.remove()
        for point, handle in reversed(attached):
            handle.hook.remove()
            point.fwd_hooks.remove(handle)


class TLBackend:
    """The headkit backend for a TransformerBridge (see :class:`headkit.backend.Backend`).

    Example:
        >>> from headkit.adapters.transformer_lens import TLBackend
        >>> # TLBackend(bridge).logits(tokens, hk.zero_ablate("L1H0"))
    """

    def __init__(self, model: Any) -> None:
        _require_bridge(model, "TLBackend")
        self.model = model
        self.tokenizer = model.tokenizer
        self.shape = model_shape(model)

    def applied(self, *interventions: Intervention) -> Any:
        """Apply interventions inside a ``with`` block (see :func:`applied`)."""
        return applied(self.model, *interventions)

    def logits(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Float[torch.Tensor, "batch pos vocab"] | Float[torch.Tensor, "n vocab"]:
        """One forward pass with interventions applied; returns the logits.

        ``[batch, 1, vocab]`` if last_only; ``[n, vocab]`` for the True cells of ``positions`` (row-major),
        the unembedding then running on those hidden states only.
        """
        check_last_only(last_only, attention_mask)
        check_positions(positions, input_ids, last_only)
        device = next(self.model.parameters()).device
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
        with applied(self.model, *interventions), unembedding_only_at(self.model.unembed, positions):
            logits = self.model(input_ids.to(device), return_type="logits", **kwargs)
        if positions is not None:
            return logits[0]
        return logits[:, -1:] if last_only else logits

    def generate(
        self, input_ids: Int[torch.Tensor, "batch pos"], *interventions: Intervention, max_new_tokens: int = 20, **kwargs: Any
    ) -> Int[torch.Tensor, "batch total"]:
        """The bridge's ``generate`` with interventions applied at every step; returns the token ids.

        ``kwargs`` go to ``generate`` (``do_sample``, ``temperature``, ``top_p`` ...); greedy by default and
        never stopping early at the end-of-sequence token (as the other backends).
        """
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("stop_at_eos", False)
        kwargs.setdefault("verbose", False)
        device = next(self.model.parameters()).device
        with applied(self.model, *interventions):
            return self.model.generate(input_ids.to(device), max_new_tokens=max_new_tokens, **kwargs)

    def __repr__(self) -> str:
        return f"TLBackend({self.shape})"


# ------------------------------------------------------------------------------------------------- checks
def _require_bridge(model: Any, owner: str) -> None:
    if not is_bridge(model):
        raise fail(
            f"transformer_lens.{owner} got a {type(model).__name__}",
            "a TransformerLens 4.x TransformerBridge (HookedTransformer was removed in TransformerLens 4)",
            "boot one with TransformerBridge.boot_transformers(...), or use headkit.adapters.huggingface "
            "for a plain transformers model",
        )


def _live_name(hook_dict: dict[str, Any], site: Site, layer: int) -> str:
    name = tl_hook_name(site, layer)
    point = hook_dict.get(name)
    if point is None:
        close = difflib.get_close_matches(name, list(hook_dict), n=3, cutoff=0.6)
        raise fail(
            f"this TransformerBridge has no hook point {name!r}",
            f"the standard attention hook points (closest here: {close})",
            "use a bridge whose attention exposes hook_z, hook_attn_scores and hook_pattern",
        )
    return point.name or name


def _refuse_delegated_masks(model: Any, groups: dict[tuple[Site, int], list[Intervention]]) -> None:
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    for (site, layer), ivs in groups.items():
        if site != "scores" or not any(isinstance(iv, MaskAttention) for iv in ivs):
            continue
        attn = model.blocks[layer].attn
        if not isinstance(attn, (PositionEmbeddingsAttentionBridge, JointQKVAttentionBridge)):
            raise fail(
                f"mask_attention got layer {layer} of a bridge whose attention ({type(attn).__name__}) is "
                f"computed by transformers, where TransformerLens discards edits to hook_attn_scores",
                "a bridge that computes attention itself (Llama, Qwen2, Gemma, Mistral, GPT-2, GPT-NeoX, ...)",
                "mask through headkit.adapters.huggingface on the plain transformers model instead",
            )


def _warn_folded_value_biases(model: Any, interventions: tuple[Intervention, ...]) -> None:
    if getattr(model, "_weights_processed", False) and any(
        isinstance(iv, (ZeroAblate, MeanAblate)) for iv in interventions
    ):
        warnings.warn(
            "headkit: this bridge's weights were processed (enable_compatibility_mode). If value biases were "
            "folded into b_O (fold_value_biases=True, the default), ablating hook_z leaves each head's value "
            "bias in the output. For exact ablation use enable_compatibility_mode(no_processing=True) or "
            "fold_value_biases=False.",
            UserWarning,
            stacklevel=3,
        )
