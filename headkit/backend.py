"""The backend protocol every adapter implements, so each analysis is written once.

A backend wraps one model in one framework. It knows the model's head geometry and tokenizer, runs a
forward pass with interventions applied (``run`` returns its logits and what its captures read, the same
way in every adapter, remote nnsight included), and applies interventions for the length of a ``with``
block (removing everything it attached when the block ends, also on error). :func:`get_backend` picks the
adapter from the model's type, looking only at frameworks that are already imported (as einops does).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from headkit.core.errors import fail
from headkit.core.interventions import Intervention
from headkit.core.sites import ModelShape

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

    from headkit.core.captures import Captures, Run

__all__ = ["Backend", "get_backend", "unembedding_only_at"]

@runtime_checkable
class Backend(Protocol):
    """What analyses need from a model: head geometry, tokenizer, and forward passes with interventions.

    Example:
        >>> import headkit as hk
        >>> # backend = hk.get_backend(model)            # a transformers model or TransformerLens bridge
        >>> # logits = backend.logits(ids, hk.zero_ablate("L5H1"))
        >>> # logits, got = backend.run(ids, cap)       # got[cap].pattern(layer, head)
    """

    shape: ModelShape
    tokenizer: Any
    vocab_size: int
    """Logits per position (ids must lie below it)."""

    def applied(self, *interventions: Intervention) -> AbstractContextManager[Captures]:
        """Apply interventions to every forward pass inside the ``with`` block; it yields their Captures."""
        ...

    def run(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Run:
        """One forward pass with interventions applied: ``Run(logits, captures)``, logits as :meth:`logits`.

        ``captures[cap]`` is what each capture among the interventions read (a fresh Captures per call).
        """
        ...

    def logits(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Float[torch.Tensor, "batch pos vocab"] | Float[torch.Tensor, "n vocab"]:
        """One forward pass with interventions applied; returns the logits (``run(...).logits``).

        ``[batch, pos, vocab]``; ``[batch, 1, vocab]`` with ``last_only``; ``[n, vocab]`` with ``positions``
        (only the True cells, in row-major order; the unembedding runs on those hidden states only).
        """
        ...

    def generate(
        self, input_ids: Int[torch.Tensor, "batch pos"], *interventions: Intervention, max_new_tokens: int = 20, **kwargs: Any
    ) -> Int[torch.Tensor, "batch total"]:
        """The framework's own generation (KV cache on) with interventions applied at every step; token ids."""
        ...


@contextmanager
def unembedding_only_at(unembed: torch.nn.Module, positions: Bool[torch.Tensor, "batch pos"] | None) -> Iterator[None]:
    """Feed the unembedding only the hidden states at ``positions`` (as ``[1, n, d_model]``), for the block.

    The model's logits then come out ``[1, n, vocab]``: a full-vocabulary projection at every position is
    most of the memory of a forward pass on large vocabularies (Gemma 3: 262k) and is skipped.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.backend import unembedding_only_at
        >>> model, tok = hk.models.tiny("gpt2")
        >>> with unembedding_only_at(model.get_output_embeddings(), torch.tensor([[False, True, True]])):
        ...     model(torch.tensor([[1, 5, 6]])).logits.shape
        torch.Size([1, 2, 100])
    """
    if positions is None:
        yield
        return

    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        return (hidden[positions.to(hidden.device)][None], *args[1:])

    handle = unembed.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def get_backend(model: Any, tokenizer: Any = None) -> Backend:
    """The headkit backend for a model: transformers, a TransformerLens bridge or HookedTransformer, nnsight.

    Only frameworks that are already imported are considered, so headkit never imports one you do not use.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> hk.get_backend(model, tok).shape
        ModelShape(n_layers=2, n_heads=4, d_head=16, n_kv_heads=2)
    """
    if isinstance(model, Backend):
        return model
    if "nnsight" in sys.modules:
        from nnsight.intervention.envoy import Envoy

        if isinstance(model, Envoy) and hasattr(model, "trace"):
            from headkit.adapters import nnsight as nn

            return nn.NNsightBackend(model)
    if "transformer_lens" in sys.modules:
        from headkit.adapters import transformer_lens as tl

        if tl.is_tl_model(model):  # recognised by class name: imports nothing from TransformerLens
            return tl.TLBackend(model, tokenizer)
    if "transformers" in sys.modules:
        import transformers

        if isinstance(model, transformers.PreTrainedModel):
            from headkit.adapters import huggingface as hf

            return hf.HFBackend(model, tokenizer)
    raise fail(
        f"get_backend got a {type(model).__module__}.{type(model).__name__}",
        "a transformers PreTrainedModel (GPT-2, GPT-NeoX, Llama, Qwen2, Gemma 3), a TransformerLens "
        "TransformerBridge or HookedTransformer, an nnsight model, or a headkit backend",
        "load the model with transformers or TransformerLens, or wrap it in an adapter's backend",
    )
