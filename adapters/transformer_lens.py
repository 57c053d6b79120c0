"""headkit on TransformerLens: the 3.x/4.x ``TransformerBridge`` and the 2.x/3.x ``HookedTransformer``.

    import headkit as hk
    from headkit.adapters import transformer_lens as hk_tl

    logits = model.run_with_hooks(tokens, fwd_hooks=hk_tl.fwd_hooks(model, hk.zero_ablate("L5H1")))
    with hk_tl.applied(model, hk.gate(G), hk.mask_attention("L9H9", keys=[(10, 20)])):
        logits = model(tokens)
    cap = hk.capture_attention("L9H9")
    with hk_tl.applied(model, cap) as got:            # what captures read comes back as the block's Captures
        model(tokens)
    got[cap].pattern(9, 9)                            # [batch, query, key]
    hooks = hk_tl.fwd_hooks(model, cap)               # plain hooks carry theirs: hooks.captures[cap]

A capture keeps nothing itself, so attached by hand as a bare hook (``fwd_hooks=[(name, cap)]``) it raises
a HeadkitError pointing here: :func:`fwd_hooks` routes it into the ``captures`` those hooks carry.

Sites map to ``blocks.{l}.attn.hook_z``, ``hook_attn_scores`` and ``hook_pattern``, which every
TransformerLens model since 2.0 has; the adapter uses each hook point's live name, so a bridge works with
and without ``enable_compatibility_mode``. Nothing here imports a particular TransformerLens version: a
model is recognised by its class names, and this module imports on TransformerLens 2, 3 and 4 alike.

**Pre-softmax masks need attention that TransformerLens computes itself.** ``HookedTransformer`` always
does; of the bridges, the Llama/Qwen/Gemma/Mistral (``PositionEmbeddingsAttentionBridge``), GPT-2 and
GPT-NeoX (``JointQKV...``) ones do. Others (OPT, GPT-J, GPT-Neo, ...) hand attention to transformers and
fire ``hook_attn_scores`` after the fact, where TransformerLens discards edits: headkit refuses a mask
there instead of silently doing nothing.

**Exact ablation and the value-bias trap.** Zeroing ``hook_z`` equals removing the head (zeroing its W_O
rows) unless each head's value bias b_V was folded into the shared output bias b_O: then ``W_O b_V`` stays
in the output on models with value biases (GPT-2, Pythia, Qwen2). ``HookedTransformer.from_pretrained``
folds by default (``fold_value_biases=True``), and so does a bridge's ``enable_compatibility_mode()``.
For exact ablation use ``HookedTransformer.from_pretrained_no_processing`` (or ``fold_value_biases=False``),
the default bridge, or ``enable_compatibility_mode(no_processing=True)``. headkit warns, once per model,
when an ablation or gate acts on such a model through this adapter (a plain hook cannot see its model).

**A query whose every allowed key is masked** gets an all-zero pattern row (so the head outputs zero
there): through this adapter ``hook_attn_scores`` leaves such rows unmasked and ``hook_pattern`` zeroes
them. :func:`fwd_hooks` returns both hook points; pass both when wiring a mask by hand.

**Cached generation on a bridge.** Since transformers 5.24 models hand the KV cache to attention as
``cache=``, while the TransformerLens 3.9 and 4.3 bridges read only ``past_key_values`` (or ``layer_past``),
so ``bridge.generate`` with its KV cache ignores earlier tokens there, with or without headkit.
:meth:`TLBackend.generate` passes the cache under both names and is exact; for your own
``bridge.generate`` calls use ``use_past_kv_cache=False`` on those versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from headkit.adapters.transformer_lens_models import (
    computes_attention,
    frozen_tl_norm,
    is_bridge,
    is_hooked_transformer,
    is_tl_model,
    live_name,
    model_shape,
    refuse_delegated_masks,
    refuse_positionless_generation,
    require_tl_model,
    unwrapped,
    value_biases_folded,
    warn_folded_value_biases,
)
from headkit.backend import unembedding_only_at
from headkit.core.adapter import AdapterBase, HeadPaths
from headkit.core.architectures import cached_tokens, find_cache, frozen_norm, head_outputs, model_modules
from headkit.core.captures import Captures, Run
from headkit.core.errors import fail
from headkit.core.inputs import check_inputs
from headkit.core.interventions import Intervention, MaskAttention
from headkit.core.plan import plan
from headkit.core.sites import Site

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

__all__ = [
    "fwd_hooks", "FwdHooks", "applied", "model_shape", "is_bridge", "is_hooked_transformer", "is_tl_model", "value_biases_folded",
    "TLBackend",
]



# ------------------------------------------------------------------------------------------------- hooks
class _SiteHook:
    """One TransformerLens hook function running a site's interventions in order; readers record into ``got``."""

    def __init__(self, site: Site, layer: int, interventions: list[Intervention], got: Captures) -> None:
        self.site, self.layer, self.interventions, self.got = site, layer, interventions, got
        self.seen = 0  # tokens in the layer's KV cache before this pass; applied() keeps it current

    def __call__(self, activation: torch.Tensor, /, hook: Any) -> torch.Tensor:
        for iv in self.interventions:
            if iv.reads_only:
                self.got.put(iv, self.layer, iv.read(self.site, self.layer, activation, hook.name))
            elif isinstance(iv, MaskAttention):  # a sliding-window cache holds only the latest keys
                k_start = max(0, self.seen + activation.shape[-2] - activation.shape[-1])
                activation = iv.edit(self.site, self.layer, activation, hook.name, k_start)
            else:
                activation = iv.edit(self.site, self.layer, activation, hook.name)
        return activation

    def count_cached(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the layer's attention: note how many tokens its KV cache already holds.

        A bridge's attention receives the transformers cache (under whichever keyword); a HookedTransformer's
        receives its own cache entry, which never drops keys, so nothing is found and the offset stays 0.
        """
        self.seen = cached_tokens(find_cache(args, kwargs), self.layer)

    def __repr__(self) -> str:  # TransformerLens names the torch hook after this
        return f"headkit[{', '.join(map(repr, self.interventions))}]"


class FwdHooks(list):
    """The ``[(hook_name, fn), ...]`` list :func:`fwd_hooks` returns, carrying the ``captures`` its hooks record.

    It is a plain list to TransformerLens. Every forward pass run with these hooks records what the
    captures among them read into ``captures`` (each layer's latest pass): ``hooks.captures[cap]``.

    Example:
        >>> import headkit as hk
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> cap = hk.capture_attention("L1H2")
        >>> hooks = hk_tl.fwd_hooks(bridge, cap)
        >>> _ = bridge.run_with_hooks(tok("Tom eats apples", return_tensors="pt").input_ids, fwd_hooks=hooks)
        >>> isinstance(hooks, list), hooks.captures[cap].pattern(1, 2).shape
        (True, torch.Size([1, 4, 4]))
    """

    def __init__(self, hooks: list[tuple[str, Any]], captures: Captures) -> None:
        list.__init__(self, hooks)
        self.captures = captures


def fwd_hooks(model: Any, *interventions: Intervention) -> FwdHooks:
    """TransformerLens ``fwd_hooks`` for ``run_with_hooks`` / ``model.hooks``: ``[(hook_name, fn), ...]``.

    Validates every intervention against the model first. Names are the model's live hook names. What
    captures read while these hooks run is in the returned list's ``captures``.

    Example:
        >>> import torch
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> hooks = hk_tl.fwd_hooks(bridge, hk.zero_ablate("L1H0"), hk.mask_attention("L0H1", keys=[(1, 2)]))
        >>> [name for name, fn in hooks]   # a mask acts on the scores and the pattern; a bridge names hook_z o.hook_in
        ['blocks.0.attn.hook_attn_scores', 'blocks.0.attn.hook_pattern', 'blocks.1.attn.o.hook_in']
        >>> tokens = tok("Tom eats apples", return_tensors="pt").input_ids
        >>> logits = bridge.run_with_hooks(tokens, fwd_hooks=hk_tl.fwd_hooks(bridge, hk.zero_ablate("L1H0")))
        >>> logits.shape, torch.allclose(logits, bridge(tokens))   # head L1H0 removed: the logits change
        (torch.Size([1, 4, 100]), False)
        >>> cap = hk.capture_attention("L0H1")
        >>> hooks = hk_tl.fwd_hooks(bridge, cap)
        >>> _ = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        >>> hooks.captures[cap].pattern(0, 1).shape          # what the capture read, [batch, query, key]
        torch.Size([1, 4, 4])
    """
    require_tl_model(model, "fwd_hooks")
    shape = model_shape(model)
    groups = plan(interventions, shape, "transformer_lens.fwd_hooks")
    refuse_delegated_masks(model, groups)
    warn_folded_value_biases(model, interventions)
    hook_dict = model.hook_dict
    got = Captures()
    return FwdHooks(
        [(live_name(hook_dict, site, layer), _SiteHook(site, layer, ivs, got)) for (site, layer), ivs in groups.items()],
        got,
    )


def _add_hook(point: Any, fn: Any) -> Any:
    """Add a forward hook to a HookPoint; return its LensHandle (``add_hook`` returns it only since TL 4)."""
    before = list(point.fwd_hooks)  # held, so no id is reused while we look
    returned = point.add_hook(fn, dir="fwd")
    added = [handle for handle in point.fwd_hooks if not any(handle is old for old in before)]
    if len(added) == 1:
        return added[0]
    if returned is not None:
        return returned
    raise fail(  # unreachable with TransformerLens 2-4; never leave a hook we cannot remove unreported
        f"headkit added a hook at {point.name!r} but found {len(added)} new handles there",
        "exactly one new LensHandle per add_hook call",
        "report this with your TransformerLens version; meanwhile call model.reset_hooks() after the block",
    )


def _remove_hook(point: Any, handle: Any) -> None:
    handle.hook.remove()
    point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


@contextmanager
def applied(model: Any, *interventions: Intervention) -> Iterator[Captures]:
    """Apply interventions to every forward pass of a TransformerLens model inside the ``with`` block.

    Works with ``model(...)``, ``run_with_cache`` and ``generate`` (see the module notes on a bridge's cached
    generation). Everything it attached is removed on exit, also after an exception; hooks you attached
    yourself are left alone. The block yields a fresh Captures: what its captures read.

    Example:
        >>> import torch
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> tokens = tok("Tom eats apples", return_tensors="pt").input_ids
        >>> with hk_tl.applied(bridge, hk.zero_ablate("L1H0")):
        ...     logits = bridge(tokens)
        >>> reference, _ = hk.models.tiny("gpt2")   # the same weights (same seed), ablated through transformers
        >>> torch.allclose(logits, hk.get_backend(reference).logits(tokens, hk.zero_ablate("L1H0")), atol=1e-5)
        True
        >>> sum(len(point.fwd_hooks) for point in bridge.hook_dict.values())   # every hook removed on exit
        0
        >>> cap = hk.capture_attention("L0H1")
        >>> with hk_tl.applied(bridge, cap) as got:
        ...     _ = bridge(tokens)
        >>> got[cap].pattern(0, 1).shape
        torch.Size([1, 4, 4])
    """
    hooks = fwd_hooks(model, *interventions)
    hook_dict = model.hook_dict
    attached: list[tuple[Any, Any]] = []
    counters: list[Any] = []  # pre-hooks telling mask hooks how many keys a sliding-window cache dropped
    try:
        for name, fn in hooks:
            point = hook_dict[name]
            attached.append((point, _add_hook(point, fn)))
            if fn.site != "z" and any(isinstance(iv, MaskAttention) for iv in fn.interventions):
                handle = model.blocks[fn.layer].attn.register_forward_pre_hook(fn.count_cached, with_kwargs=True)
                counters.append(handle)
        yield hooks.captures
    finally:
        for counter in counters:
            counter.remove()
        for point, handle in reversed(attached):
            _remove_hook(point, handle)


def _cache_under_legacy_name(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook on a bridge's attention: hand it the KV cache as ``past_key_values`` too.

    transformers >= 5.24 passes the cache as ``cache=``; the TransformerLens 3.9/4.3 bridges read only
    ``past_key_values`` / ``layer_past`` and would otherwise attend to the new token alone.
    """
    if kwargs.get("past_key_values") is not None or kwargs.get("layer_past") is not None:
        return None
    cache = find_cache((), kwargs)
    if cache is None:
        return None
    return args, {**kwargs, "past_key_values": cache}


class TLBackend(AdapterBase):
    """The headkit backend for a TransformerBridge or HookedTransformer (see :class:`headkit.backend.Backend`).

    ``tokenizer`` defaults to the model's own (a HookedTransformer built from a config has none).

    Example:
        >>> import headkit as hk
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> from headkit.adapters.transformer_lens import TLBackend
        >>> model, tok = hk.models.tiny("gpt2")
        >>> bridge = TransformerBridge.boot_transformers("tiny/gpt2", hf_model=model, tokenizer=tok, device="cpu")
        >>> backend = TLBackend(bridge)   # what hk.get_backend(bridge) returns
        >>> backend
        TLBackend(TransformerBridge, ModelShape(n_layers=2, n_heads=4, d_head=16, n_kv_heads=4))
        >>> tokens = tok("Tom eats apples", return_tensors="pt").input_ids
        >>> backend.logits(tokens, hk.zero_ablate("L1H0"), last_only=True).shape
        torch.Size([1, 1, 100])
        >>> backend.generate(tokens, hk.zero_ablate("L1H0"), max_new_tokens=3).shape   # 4 prompt tokens + 3
        torch.Size([1, 7])
    """

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        require_tl_model(model, "TLBackend")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.shape = model_shape(model)
        self.vocab_size = int(model.cfg.d_vocab_out if getattr(model.cfg, "d_vocab_out", -1) > 0 else model.cfg.d_vocab)

    @property
    def torch_module(self) -> torch.nn.Module:
        return self.model

    @property
    def model_type(self) -> str | None:
        """The wrapped transformers model's ``model_type`` (bridges), else None (a HookedTransformer has no config)."""
        return getattr(getattr(getattr(self.model, "original_model", None), "config", None), "model_type", None)

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

        ``[batch, 1, vocab]`` if last_only; ``[n, vocab]`` for the True cells of ``positions`` (row-major),
        the unembedding then running on those hidden states only. With an ``attention_mask`` TransformerLens
        counts positions over real tokens, as the other backends do.
        """
        self.check(input_ids, attention_mask, "TLBackend.logits", last_only, positions)
        device = self.device
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
        at = positions
        if last_only:  # the output layer runs on the last column only
            at = torch.zeros(input_ids.shape, dtype=torch.bool)
            at[:, -1] = True
        with applied(self.model, *interventions) as got, unembedding_only_at(self.model.unembed, at):
            logits = self.model(input_ids.to(device), return_type="logits", **kwargs)
        if positions is not None:
            return Run(logits[0], got)
        return Run(logits[0][:, None] if last_only else logits, got)

    def head_paths(self, input_ids: Int[torch.Tensor, "1 pos"], position: int, *interventions: Intervention) -> HeadPaths:
        """Every head's direct path to the logits at ``position`` (see :class:`headkit.core.adapter.HeadPaths`).

        Read at TransformerLens hook points during one forward pass (``hook_z``, the final norm's input and,
        on a bridge over Gemma, ``ln1_post``'s input). A bridge's weights are its transformers model's; a
        HookedTransformer's are its own (``W_O``, ``ln_final``, ``W_U``), processed or not.
        """
        model, shape = self.model, self.shape
        bridge = is_bridge(model)
        original = getattr(model, "original_model", None) if bridge else None
        found = model_modules(original, "head_paths") if original is not None else None
        if found is None and any(hasattr(block, "ln1_post") for block in model.blocks):
            raise fail(
                f"head_paths got a {type(model).__name__} whose blocks normalise their attention output (ln1_post)",
                "a HookedTransformer without post-attention norms, or a TransformerBridge",
                "boot the model as a TransformerBridge (TransformerBridge.boot_transformers)",
            )
        read: dict[str, torch.Tensor] = {}

        def keep(key: str) -> Any:
            def hook(activation: torch.Tensor, hook: Any) -> None:
                read[key] = activation[0, position].detach().clone()  # a view could change in place later

            return hook

        names = [(f"blocks.{layer}.attn.hook_z", f"z{layer}") for layer in range(shape.n_layers)]
        names.append(("ln_final.hook_in" if bridge else f"blocks.{shape.n_layers - 1}.hook_resid_post", "final"))
        if found is not None and found.arch.attn_out_norm:
            names += [(f"blocks.{layer}.ln1_post.hook_in", f"attn{layer}") for layer in range(shape.n_layers)]
        at = torch.zeros(input_ids.shape, dtype=torch.bool)
        at[0, position] = True
        hook_dict, attached = model.hook_dict, []
        try:
            for name, key in names:
                attached.append((hook_dict[name], _add_hook(hook_dict[name], keep(key))))
            with torch.no_grad():
                run = self.run(input_ids, *interventions, positions=at)
        finally:
            for point, handle in reversed(attached):
                _remove_hook(point, handle)
        outs = []
        for layer in range(shape.n_layers):
            z = read[f"z{layer}"]  # [head, d_head]
            if found is not None:  # a bridge swaps its own components into the transformers model: unwrap them
                contrib = head_outputs(unwrapped(found.out_proj(layer)), z.flatten(), shape.n_heads)
                block_norm = found.attn_out_norm(layer)
                if block_norm is not None:
                    contrib = frozen_norm(unwrapped(block_norm), read[f"attn{layer}"])(contrib)
                outs.append(contrib)
            else:
                outs.append(torch.einsum("hd,hdm->hm", z.float(), model.W_O[layer].detach().float()))
        if found is not None:
            final = frozen_norm(unwrapped(found.final_norm(original)), read["final"])
            unembed = original.get_output_embeddings().weight.detach().float()
            softcap = getattr(original.config, "final_logit_softcapping", None)
        else:
            final = frozen_tl_norm(model.ln_final, read["final"])
            unembed = model.W_U.detach().float().T
            cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
            softcap = cap if cap > 0 else None
        return HeadPaths(torch.stack(outs), final, unembed, run.logits[0].float(), softcap, run.captures)

    def generate(
        self, input_ids: Int[torch.Tensor, "batch pos"], *interventions: Intervention, max_new_tokens: int = 20, **kwargs: Any
    ) -> Int[torch.Tensor, "batch total"]:
        """The model's ``generate`` (KV cache on) with interventions applied at every step; returns the token ids.

        ``kwargs`` go to ``generate`` (``do_sample``, ``temperature``, ``top_p`` ...); greedy by default and
        never stopping early at the end-of-sequence token (as the other backends). On a bridge the KV cache
        is also passed under the name TransformerLens reads, so generation is exact on every supported
        transformers version (see the module notes). A model without a tokenizer (a HookedTransformer built
        from a config) borrows the backend's for the call.
        """
        check_inputs(input_ids, None, self.vocab_size, "TLBackend.generate")
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("stop_at_eos", False)
        kwargs.setdefault("verbose", False)
        model = self.model
        device = self.device
        lend_tokenizer = getattr(model, "tokenizer", None) is None  # HookedTransformer.generate asserts one
        if lend_tokenizer and self.tokenizer is None:
            raise fail(
                f"TLBackend.generate got a {type(model).__name__} without a tokenizer",
                "a tokenizer: TransformerLens's generate requires one even for token ids",
                "pass it: hk.get_backend(model, tokenizer), or call model.set_tokenizer(tokenizer)",
            )
        refuse_positionless_generation(model, self.tokenizer if lend_tokenizer else model.tokenizer)
        aliases = []
        try:
            if lend_tokenizer:
                model.tokenizer = self.tokenizer
            if is_bridge(model):  # only attention TransformerLens computes reads the cache itself
                for block in model.blocks:
                    if computes_attention(block.attn):
                        hook = block.attn.register_forward_pre_hook(_cache_under_legacy_name, with_kwargs=True)
                        aliases.append(hook)
            with applied(model, *interventions):
                return model.generate(input_ids.to(device), max_new_tokens=max_new_tokens, **kwargs)
        finally:
            for hook in aliases:
                hook.remove()
            if lend_tokenizer:
                model.tokenizer = None

    def __repr__(self) -> str:
        return f"TLBackend({type(self.model).__name__}, {self.shape})"


def backend_for(model: Any, tokenizer: Any = None) -> TLBackend | None:
    """The backend of a TransformerBridge or HookedTransformer (recognised by class name), else None.

    Example:
        >>> import headkit as hk
        >>> from headkit.adapters import transformer_lens as hk_tl
        >>> hk_tl.backend_for(hk.models.tiny("gpt2")[0]) is None
        True
    """
    return TLBackend(model, tokenizer) if is_tl_model(model) else None
