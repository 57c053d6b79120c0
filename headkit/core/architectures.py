"""Where each supported transformers architecture keeps its attention parts: the one table of model knowledge.

The transformers adapter hooks these modules; the nnsight adapter walks the same paths as envoys (an
envoy tree mirrors the module tree). Supporting another architecture means adding a row here. Like the
interventions, this module may run on a remote NDIF server, so it imports only torch and operator.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import fail
from headkit.core.sites import ModelShape

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = ["Arch", "ARCHITECTURES", "MASKABLE_IMPLEMENTATIONS", "ModelModules", "model_modules", "additive_mask", "find_cache", "cached_tokens",
           "frozen_norm", "head_outputs"]


class Arch:
    """Module paths of one architecture: blocks, each block's attention, its output projection W_O, the
    final norm, and the norm a block applies to its attention output before the residual sum (if any).

    Example:
        >>> from headkit.core.architectures import ARCHITECTURES
        >>> ARCHITECTURES["llama"]
        Arch(layers='model.layers', attention='self_attn', out_proj='o_proj', final_norm='model.norm')
    """

    __slots__ = ("layers", "attention", "out_proj", "final_norm", "attn_out_norm")

    def __init__(self, layers: str, attention: str, out_proj: str, final_norm: str, attn_out_norm: str | None = None) -> None:
        self.layers = layers  # from the *ForCausalLM model to the list of blocks
        self.attention = attention  # attribute of a block: the attention module
        self.out_proj = out_proj  # attribute of the attention module: W_O, whose input is z
        self.final_norm = final_norm  # from the *ForCausalLM model to the norm before the unembedding
        self.attn_out_norm = attn_out_norm  # attribute of a block: the norm of its attention output, or None

    def __repr__(self) -> str:
        extra = f", attn_out_norm={self.attn_out_norm!r}" if self.attn_out_norm else ""
        return (f"Arch(layers={self.layers!r}, attention={self.attention!r}, out_proj={self.out_proj!r}, "
                f"final_norm={self.final_norm!r}{extra})")


ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch("transformer.h", "attn", "c_proj", "transformer.ln_f"),
    "gpt_neox": Arch("gpt_neox.layers", "attention", "dense", "gpt_neox.final_layer_norm"),
    "llama": Arch("model.layers", "self_attn", "o_proj", "model.norm"),
    "qwen2": Arch("model.layers", "self_attn", "o_proj", "model.norm"),
    "gemma3_text": Arch("model.layers", "self_attn", "o_proj", "model.norm", "post_attention_layernorm"),
}
"""model_type -> module paths (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Gemma 3 text)."""

NORMALISED_ATTENTION_OUTPUT = frozenset({"gemma2", "gemma3", "gemma3_text", "olmo2"})
"""model_types whose blocks RMS-normalise the attention output before adding it to the residual stream.

There, scaling every head of a layer by the same factor is undone by the norm (measured on Gemma 3 270M:
all 72 gates at 0.018 change the copy task's mean target log-prob from -0.984 to -1.001), so a gate on
``z`` acts only relative to the other heads of its layer; zero-ablation is still exact.
"""

MASKABLE_IMPLEMENTATIONS = ("eager", "sdpa")
"""Attention implementations that honour a per-head 4-D additive mask (flash kernels do not)."""


class ModelModules:
    """One model's resolved modules: its head geometry, block list and architecture row.

    Example:
        >>> import headkit as hk
        >>> from headkit.core.architectures import model_modules
        >>> found = model_modules(hk.models.tiny("llama")[0])
        >>> type(found.out_proj(1)).__name__, found.where(1, "z")
        ('Linear', 'model.layers.1.self_attn.o_proj input (z)')
    """

    __slots__ = ("shape", "path", "blocks", "arch", "model_type")

    def __init__(self, shape: ModelShape, path: str, blocks: Any, arch: Arch, model_type: str) -> None:
        self.shape, self.path, self.blocks, self.arch, self.model_type = shape, path, blocks, arch, model_type

    def attention(self, layer: int) -> Any:
        """The attention module of a layer."""
        return getattr(self.blocks[layer], self.arch.attention)

    def out_proj(self, layer: int) -> Any:
        """The output projection W_O of a layer (its input is z)."""
        return getattr(self.attention(layer), self.arch.out_proj)

    def attn_out_norm(self, layer: int) -> Any:
        """The norm a layer applies to its attention output before the residual sum, or None."""
        return getattr(self.blocks[layer], self.arch.attn_out_norm) if self.arch.attn_out_norm else None

    def final_norm(self, model: Any) -> Any:
        """The norm before the unembedding."""
        return operator.attrgetter(self.arch.final_norm)(model)

    def where(self, layer: int, site: str) -> str:
        """A readable name of a site's location, for error messages."""
        attn = f"{self.path}.{layer}.{self.arch.attention}"
        return f"{attn}.{self.arch.out_proj} input (z)" if site == "z" else f"{attn} ({site})"


def model_modules(model: Any, owner: str = "headkit") -> ModelModules:
    """Find a transformers model's attention modules, or raise HeadkitError naming what is missing.

    Example:
        >>> import headkit as hk
        >>> from headkit.core.architectures import model_modules
        >>> model, _ = hk.models.tiny("gpt2")
        >>> found = model_modules(model)
        >>> found.path, found.shape
        ('transformer.h', ModelShape(n_layers=2, n_heads=4, d_head=16, n_kv_heads=4))
    """
    if any((cls.__module__ or "").startswith("transformer_lens") for cls in type(model).__mro__):
        raise fail(
            f"{owner} got a TransformerLens {type(model).__name__}",
            "a plain transformers model here (a bridge rewires its modules, a HookedTransformer has none of them)",
            "use headkit.adapters.transformer_lens (hk_tl.applied / hk_tl.fwd_hooks), or hk.get_backend(model)",
        )
    config: Any = getattr(model, "config", None)
    model_type: Any = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)  # type: ignore[arg-type]
    if arch is None or not isinstance(model, torch.nn.Module):
        raise fail(
            f"{owner} got a {type(model).__name__} (model_type {model_type!r})",
            f"a transformers model of type {sorted(ARCHITECTURES)}",
            "use a supported architecture, or the TransformerLens adapter for a TransformerBridge",
        )
    blocks: Any = None
    path = arch.layers
    for path in (arch.layers, arch.layers.split(".", 1)[1]):  # *ForCausalLM, or the bare base model
        try:
            blocks = operator.attrgetter(path)(model)
            break
        except AttributeError:
            continue
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    shape = ModelShape(
        n_layers=config.num_hidden_layers,
        n_heads=n_heads,
        d_head=d_head,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
    )
    ok = isinstance(blocks, torch.nn.ModuleList) and len(blocks) == shape.n_layers
    if ok:
        out = getattr(getattr(blocks[0], arch.attention, None), arch.out_proj, None)
        weight = getattr(out, "weight", None)
        in_features = None if weight is None else weight.shape[0 if type(out).__name__ == "Conv1D" else 1]
        ok = in_features == n_heads * d_head
    if not ok:
        raise fail(
            f"{owner} found no {arch.layers}[i].{arch.attention}.{arch.out_proj} taking {n_heads} x {d_head} "
            f"head outputs in this {type(model).__name__}",
            f"the standard {model_type} module layout",
            "pass the unmodified transformers model (a TransformerLens bridge rewires it: use "
            "headkit.adapters.transformer_lens for that)",
        )
    return ModelModules(shape, path, blocks, arch, model_type)


def check_maskable(impl: str | None, owner: str) -> str:
    """The attention implementation, if masks and captures can use it; else HeadkitError with the fix."""
    impl = impl or "eager"
    if impl not in MASKABLE_IMPLEMENTATIONS:
        raise fail(
            f"{owner} got a model using attention implementation {impl!r}",
            f"one of {list(MASKABLE_IMPLEMENTATIONS)} for attention masks and captures (kernels like flash "
            "attention ignore per-head masks and never return weights)",
            'call model.set_attn_implementation("sdpa") (or "eager") first, or load it with '
            'attn_implementation="sdpa"',
        )
    return impl


def additive_mask(
    mask: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype, device: torch.device
) -> Float[torch.Tensor, "batch 1 query key"]:
    """Any transformers attention mask as an additive float mask (0 = attend, finfo.min = blocked).

    sdpa passes None for a pure causal mask (it then uses ``is_causal``) and bool masks otherwise; eager
    passes additive float masks already. Query rows are the last ``q_len`` of ``k_len`` positions.

    Example:
        >>> import torch
        >>> from headkit.core.architectures import additive_mask
        >>> (additive_mask(None, 3, 3, torch.float32, torch.device("cpu")) == 0).int()[0, 0].tolist()
        [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    neg = torch.finfo(dtype).min
    if mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~causal, neg)[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~mask[..., :k_len], neg)
    return mask[..., :k_len].to(dtype)


def find_cache(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The KV cache among a module call's arguments, whatever keyword carries it (or None).

    transformers has passed it as ``past_key_values``, ``layer_past`` (GPT-NeoX) and, since 5.24, ``cache``;
    those keywords are tried first, then any other argument (callers may pass it positionally). A cache is
    recognised by what it does (``get_seq_length`` and ``update``), so this module needs no transformers
    import and runs on a remote server too.

    Example:
        >>> from transformers import DynamicCache
        >>> from headkit.core.architectures import find_cache
        >>> cache = DynamicCache()
        >>> find_cache((), {"cache": cache}) is cache, find_cache((), {"past_key_values": None})
        (True, None)
    """
    known = [kwargs.get(name) for name in ("cache", "past_key_values", "layer_past")]
    for value in (*known, *kwargs.values(), *args):
        if callable(getattr(value, "get_seq_length", None)) and callable(getattr(value, "update", None)):
            return value
    return None


def cached_tokens(cache: Any, layer: int) -> int:
    """How many tokens a KV cache has seen in a layer (0 without a cache).

    A sliding-window layer counts every token it was given, also those it no longer keeps, so the key axis
    of a cached decoding step starts at ``cached_tokens(...) + q_len - k_len`` (before this step's update).

    Example:
        >>> from headkit.core.architectures import cached_tokens
        >>> cached_tokens(None, 0)
        0
    """
    return 0 if cache is None else int(cache.get_seq_length(layer))


def frozen_norm(norm: torch.nn.Module, at: Float[torch.Tensor, " d_model"]) -> Any:
    """A norm as a linear map with its scale frozen at its input ``at`` (LayerNorm or RMSNorm; bias dropped).

    With frozen scales the norm is linear, so contributions to the residual stream pass through it one by
    one and add up. RMS-like norms ``x * rsqrt(mean(x^2) + eps) * g`` have their gain read off the norm of
    a vector of ones, which covers both weight conventions (``w`` and ``1 + w``).

    Example:
        >>> import torch
        >>> from headkit.core.architectures import frozen_norm
        >>> norm = torch.nn.LayerNorm(4)
        >>> at = torch.tensor([1.0, 2.0, 3.0, 6.0])
        >>> torch.allclose(frozen_norm(norm, at)(at), norm(at).detach(), atol=1e-6)
        True
    """
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    at = at.float()
    if isinstance(norm, torch.nn.LayerNorm):
        scale = (at.var(unbiased=False) + eps).rsqrt()
        gain = norm.weight.detach().float() if norm.weight is not None else 1.0
        return lambda c: (c - c.mean(-1, keepdim=True)) * scale * gain
    with torch.no_grad():
        ones = torch.ones(1, at.shape[-1], dtype=next(norm.parameters()).dtype, device=at.device)
        gain = norm(ones)[0].float() * (1 + eps) ** 0.5
    scale = ((at**2).mean() + eps).rsqrt()
    return lambda c: c * scale * gain


def head_outputs(out_proj: torch.nn.Module, z: Float[torch.Tensor, " heads_x_d_head"], n_heads: int) -> torch.Tensor:
    """Each head's term of ``W_O z`` at one position, ``[head, d_model]`` (bias excluded; Linear or Conv1D).

    Example:
        >>> import torch
        >>> from headkit.core.architectures import head_outputs
        >>> w_o = torch.nn.Linear(4, 3)
        >>> z = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> torch.allclose(head_outputs(w_o, z, 2).sum(0), w_o(z).detach() - w_o.bias.detach())
        True
    """
    d_head = z.shape[-1] // n_heads
    per_head = torch.zeros(n_heads, z.shape[-1], dtype=z.dtype, device=z.device)
    for h in range(n_heads):
        per_head[h, h * d_head : (h + 1) * d_head] = z[h * d_head : (h + 1) * d_head]
    with torch.no_grad():
        return (out_proj(per_head) - out_proj(torch.zeros_like(per_head[:1]))).float()
