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
  no attention intervention are not touched at all. That machinery is :mod:`headkit.adapters.huggingface_attention`.

Everything attached is removed when the ``with`` block ends, also when it ends in an exception.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from headkit.adapters.huggingface_attention import _keep_cache, _LayerRun, _point_at_headkit, _register
from headkit.backend import unembedding_only_at
from headkit.core.adapter import AdapterBase, HeadPaths, pad_id
from headkit.core.architectures import check_maskable, frozen_norm, head_outputs, model_modules
from headkit.core.captures import Captures, Run
from headkit.core.errors import fail
from headkit.core.inputs import check_inputs, real_token_positions
from headkit.core.interventions import Intervention, MaskAttention
from headkit.core.plan import plan
from headkit.core.sites import ModelShape

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

__all__ = ["backend_for", "applied", "model_shape", "HFBackend", "head_paths"]


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


def _vocab_size(model: Any) -> int:
    """Logits per position of a transformers causal LM (its unembedding's rows, else the config's vocabulary)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


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
        >>> got[cap].pattern(1, 3).shape, torch.allclose(got[cap].pattern(1, 3).sum(-1), torch.ones(1, 4))  # rows sum to 1
        (torch.Size([1, 4, 4]), True)
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
