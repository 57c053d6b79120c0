"""What kind of TransformerLens model this is, and what each kind and version gets wrong.

Recognises a ``TransformerBridge`` (3.x/4.x) or a ``HookedTransformer`` (2.x/3.x) by class name, imports
nothing from TransformerLens, and holds the checks the adapter (:mod:`headkit.adapters.transformer_lens`)
makes before it attaches anything: live hook names, attention that TransformerLens does not compute
itself, folded value biases, positions lost by 2.x generation, and the frozen final norm of a
HookedTransformer for direct effects.
"""

from __future__ import annotations

import difflib
import warnings
import weakref
from typing import Any

import torch

from headkit.core.errors import fail
from headkit.core.interventions import Gate, Intervention, MaskAttention, MeanAblate, ZeroAblate
from headkit.core.sites import ModelShape, Site, tl_hook_name

__all__ = ["is_bridge", "is_hooked_transformer", "is_tl_model", "model_shape", "value_biases_folded"]


def has_class(model: Any, name: str, module_prefix: str) -> bool:
    """Whether the model's class is (or derives from) TransformerLens's class ``name``, imported or not."""
    return any(
        cls.__name__ == name and (cls.__module__ or "").startswith(module_prefix) for cls in type(model).__mro__
    )


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (3.x or 4.x).

    Example:
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> hk_tl.is_bridge(bridge), hk_tl.is_bridge(model)
        (True, False)
    """
    return has_class(model, "TransformerBridge", "transformer_lens.model_bridge")


def is_hooked_transformer(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens 2.x/3.x ``HookedTransformer``.

    Example:
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> hk_tl.is_hooked_transformer(bridge), hk_tl.is_hooked_transformer(model)
        (False, False)
    """
    return has_class(model, "HookedTransformer", "transformer_lens")


def is_tl_model(model: Any) -> bool:
    """Whether this adapter can run ``model``: a ``TransformerBridge`` or a ``HookedTransformer``.

    Example:
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> hk_tl.is_tl_model(bridge), hk_tl.is_tl_model(model)   # the bridge, not the transformers model inside
        (True, False)
    """
    return is_bridge(model) or is_hooked_transformer(model)


def model_shape(model: Any) -> ModelShape:
    """The head geometry of a TransformerBridge or HookedTransformer (from its ``cfg``).

    Example:
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("llama")   # 4 query heads sharing 2 key/value heads
        >>> bridge = TransformerBridge.boot_transformers("tiny/llama", hf_model=model, tokenizer=tok, device="cpu")
        >>> hk_tl.model_shape(bridge)
        ModelShape(n_layers=2, n_heads=4, d_head=16, n_kv_heads=2)
    """
    require_tl_model(model, "model_shape")
    cfg = model.cfg
    return ModelShape(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
    )


def refuse_positionless_generation(model: Any, tokenizer: Any) -> None:
    """HeadkitError where TransformerLens 2.x's ``HookedTransformer.generate`` is known to be wrong.

    Its generate builds a padding mask from a tensor of zeros, so when the tokenizer pads with id 0 every
    token counts as padding and a model with learned positions (``standard`` / ``shortformer``) sees every
    token at position 0 (2.16.1 and 2.18.0; fixed in 3.x, which has ``transformer_lens.model_bridge``).
    """
    import importlib.util

    learned = getattr(model.cfg, "positional_embedding_type", None) in ("standard", "shortformer")
    if not (is_hooked_transformer(model) and learned and getattr(tokenizer, "pad_token_id", None) == 0):
        return
    if importlib.util.find_spec("transformer_lens.model_bridge") is not None:
        return
    raise fail(
        "TLBackend.generate got a HookedTransformer with learned positions and a tokenizer that pads with id 0, "
        "on TransformerLens 2.x, whose generate then counts every token as padding and puts it at position 0",
        "a tokenizer whose pad id is not 0, or TransformerLens 3.x",
        "set tokenizer.pad_token = tokenizer.eos_token (or another token) before generating, or upgrade "
        "TransformerLens to 3.x",
    )


def require_tl_model(model: Any, owner: str) -> None:
    if not is_tl_model(model):
        raise fail(
            f"transformer_lens.{owner} got a {type(model).__name__}",
            "a TransformerLens model: a TransformerBridge (TransformerLens 3.x/4.x) or a HookedTransformer "
            "(2.x/3.x)",
            "boot one with TransformerBridge.boot_transformers(...) or HookedTransformer.from_pretrained(...), "
            "or use headkit.adapters.huggingface for a plain transformers model",
        )


def live_name(hook_dict: dict[str, Any], site: Site, layer: int) -> str:
    name = tl_hook_name(site, layer)
    point = hook_dict.get(name)
    if point is None:
        close = difflib.get_close_matches(name, list(hook_dict), n=3, cutoff=0.6)
        raise fail(
            f"this TransformerLens model has no hook point {name!r}",
            f"the standard attention hook points (closest here: {close})",
            "use a model whose attention exposes hook_z, hook_attn_scores and hook_pattern",
        )
    return point.name or name


_SELF_COMPUTED_ATTENTION = ("PositionEmbeddingsAttentionBridge", "JointQKVAttentionBridge")
"""Bridge attention classes (and their subclasses) that compute attention themselves, so scores edits count."""


def computes_attention(attn: Any) -> bool:
    return any(cls.__name__ in _SELF_COMPUTED_ATTENTION for cls in type(attn).__mro__)


def refuse_delegated_masks(model: Any, groups: dict[tuple[Site, int], list[Intervention]]) -> None:
    if not is_bridge(model):  # a HookedTransformer computes every attention itself
        return
    for (site, layer), ivs in groups.items():
        if site != "scores" or not any(isinstance(iv, MaskAttention) for iv in ivs):
            continue
        attn = model.blocks[layer].attn
        if not computes_attention(attn):
            raise fail(
                f"mask_attention got layer {layer} of a bridge whose attention ({type(attn).__name__}) is "
                f"computed by transformers, where TransformerLens discards edits to hook_attn_scores",
                "a bridge that computes attention itself (Llama, Qwen2, Gemma, Mistral, GPT-2, GPT-NeoX, ...)",
                "mask through headkit.adapters.huggingface on the plain transformers model instead",
            )


_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()  # models already warned about folded value biases


def value_biases_folded(model: Any) -> bool:
    """Whether a TransformerLens model may have its value biases folded into the output biases.

    A bridge says so itself (its weights were processed, as ``enable_compatibility_mode()`` does). A
    HookedTransformer keeps no record, so this reads the weights: every value bias exactly 0 while some
    output bias is not, which is what ``fold_value_biases=True`` leaves (a model without biases, or one
    loaded without processing, has both zero or a non-zero b_V).

    Example:
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> hk_tl.value_biases_folded(bridge)   # a bridge boots with its weights unprocessed
        False
        >>> bridge.enable_compatibility_mode(disable_warnings=True)   # processes them, folding b_V into b_O
        >>> hk_tl.value_biases_folded(bridge)
        True
    """
    if is_bridge(model):
        return bool(getattr(model, "_weights_processed", False))
    values, outputs = [], []
    for name, param in model.named_parameters():
        if name.endswith(("attn.b_V", "attn._b_V")):
            values.append(param)
        elif name.endswith("attn.b_O"):
            outputs.append(param)
    if not values or not outputs:
        return False
    with torch.no_grad():  # two device syncs, whatever the depth
        return not torch.cat([v.flatten() for v in values]).any() and bool(torch.cat([o.flatten() for o in outputs]).any())


def warn_folded_value_biases(model: Any, interventions: tuple[Intervention, ...]) -> None:
    if model in _WARNED or not any(isinstance(iv, (ZeroAblate, MeanAblate, Gate)) for iv in interventions):
        return
    if not value_biases_folded(model):
        return
    _WARNED.add(model)
    how = (
        "enable_compatibility_mode(no_processing=True) or fold_value_biases=False"
        if is_bridge(model)
        else "HookedTransformer.from_pretrained_no_processing(...) or from_pretrained(..., fold_value_biases=False)"
    )
    name = getattr(model.cfg, "model_name", None) or type(model).__name__
    warnings.warn(  # model-specific text, so Python's once-per-location filter does not hide a second model
        f"headkit: {name} (model at {id(model):#x})'s value biases look folded into b_O (fold_value_biases=True, "
        "TransformerLens's default weight processing), so ablating or gating hook_z leaves each head's "
        f"W_O b_V in the output: the head is not fully removed. For exact ablation load it with {how}. "
        "(Warned once per model.)",
        UserWarning,
        stacklevel=caller_level(),
    )


def caller_level() -> int:
    """The stacklevel of the first frame outside headkit and contextlib (where the warning belongs)."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module == "headkit" or module.startswith(("headkit.", "contextlib"))):
            return level
        frame, level = frame.f_back, level + 1
    return level


def unwrapped(module: Any) -> Any:
    """The transformers module inside a bridge component (the module itself if it is not wrapped)."""
    return getattr(module, "original_component", module)


def frozen_tl_norm(norm: Any, at: torch.Tensor) -> Any:
    """A HookedTransformer norm (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre) with its scale frozen at ``at``."""
    kind = type(norm).__name__
    eps = float(getattr(norm, "eps", 1e-5))
    at = at.float()
    gain = norm.w.detach().float() if hasattr(norm, "w") else 1.0
    if kind.startswith("LayerNorm"):
        scale = (at.var(unbiased=False) + eps).rsqrt()
        return lambda c: (c - c.mean(-1, keepdim=True)) * scale * gain
    if kind.startswith("RMSNorm"):
        scale = ((at**2).mean() + eps).rsqrt()
        return lambda c: c * scale * gain
    raise fail(f"head_paths found a final norm of type {kind}", "LayerNorm, LayerNormPre, RMSNorm or RMSNormPre",
               "report the model; meanwhile boot it as a TransformerBridge")
