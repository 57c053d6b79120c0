"""The backend protocol every adapter implements, so each analysis is written once.

A backend wraps one model in one framework. It knows the model's head geometry and tokenizer, runs a
forward pass with interventions applied (``run`` returns its logits and what its captures read, the same
way in every adapter, remote nnsight included), and applies interventions for the length of a ``with``
block (removing everything it attached when the block ends, also on error). :func:`get_backend` picks the
adapter from the model's type, looking only at frameworks that are already imported (as einops does).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from headkit.core.adapter import HeadPaths
from headkit.core.errors import fail
from headkit.core.interventions import Intervention
from headkit.core.sites import ModelShape

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

    from headkit.core.captures import Captures, Run

__all__ = ["Backend", "get_backend", "register_adapter", "ADAPTERS", "unembedding_only_at"]

@runtime_checkable
class Backend(Protocol):
    """What analyses need from a model: head geometry, tokenizer, and forward passes with interventions.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.backend import Backend
        >>> model, tok = hk.models.tiny("gpt2")
        >>> backend = hk.get_backend(model, tok)   # likewise for a TransformerLens or nnsight model
        >>> isinstance(backend, Backend), backend.vocab_size, backend.shape.n_heads
        (True, 100, 4)
        >>> ids = tok("Tom eats apples", return_tensors="pt").input_ids
        >>> backend.logits(ids, hk.zero_ablate("L1H0")).shape, backend.logits(ids, last_only=True).shape
        (torch.Size([1, 4, 100]), torch.Size([1, 1, 100]))
        >>> backend.logits(ids, positions=torch.tensor([[False, True, False, True]])).shape   # the True cells only
        torch.Size([2, 100])
        >>> with backend.applied(hk.zero_ablate("L1H0")):
        ...     inside = model(ids).logits
        >>> torch.equal(inside, backend.logits(ids, hk.zero_ablate("L1H0")))
        True
        >>> cap = hk.capture_attention("L1H2")
        >>> logits, got = backend.run(ids, hk.zero_ablate("L0H1"), cap)   # logits and what the capture read
        >>> got[cap].pattern(1, 2).shape
        torch.Size([1, 4, 4])
    """

    shape: ModelShape
    tokenizer: Any
    vocab_size: int
    """Logits per position (ids must lie below it)."""
    remote: Any
    """Where passes run: False here (nnsight: True / "local" / a backend object for NDIF or a simulation)."""
    device: torch.device
    dtype: torch.dtype
    model_type: str | None
    """The transformers ``config.model_type`` where known (e.g. to warn about architecture quirks)."""

    def frozen(self) -> AbstractContextManager[None]:
        """No weight gradients inside the block (restored after): gates are fitted with frozen weights."""
        ...

    def captures(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    ) -> Captures:
        """A forward pass without logits, for what its reader interventions (captures) collect."""
        ...

    def head_paths(self, input_ids: Int[torch.Tensor, "1 pos"], position: int, *interventions: Intervention) -> HeadPaths:
        """Every head's direct path to the logits at one position (:class:`headkit.core.adapter.HeadPaths`)."""
        ...

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


ADAPTERS: list[tuple[str, str]] = [
    ("nnsight", "headkit.adapters.nnsight"),
    ("transformer_lens", "headkit.adapters.transformer_lens"),
    ("transformers", "headkit.adapters.huggingface"),
]
"""The registered adapters, in the order :func:`get_backend` asks them: (framework module, adapter module).

An adapter module defines ``backend_for(model, tokenizer) -> Backend | None``. It is imported only once its
framework is (so headkit never imports a framework you do not use); nnsight comes first because its models
wrap transformers ones. Add your own with :func:`register_adapter`."""


def register_adapter(framework: str, adapter: str) -> None:
    """Register an adapter module for models of a framework; it is asked before the built-in ones.

    ``adapter`` names a module defining ``backend_for(model, tokenizer) -> Backend | None`` (None: not
    one of its models); it is imported the first time a model is looked up while ``framework`` is imported.

    Example:
        >>> from headkit.backend import ADAPTERS, register_adapter
        >>> register_adapter("my_framework", "my_package.headkit_adapter")
        >>> ADAPTERS[0]
        ('my_framework', 'my_package.headkit_adapter')
        >>> del ADAPTERS[0]
    """
    entry = (framework, adapter)
    if entry in ADAPTERS:
        ADAPTERS.remove(entry)
    ADAPTERS.insert(0, entry)


def get_backend(model: Any, tokenizer: Any = None) -> Backend:
    """The headkit backend for a model: transformers, a TransformerLens bridge or HookedTransformer, nnsight.

    Each registered adapter whose framework is already imported is asked in turn (see :data:`ADAPTERS`), so
    headkit never imports a framework you do not use. A backend is returned as it is.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> hk.get_backend(model, tok).shape
        ModelShape(n_layers=2, n_heads=4, d_head=16, n_kv_heads=2)
    """
    if isinstance(model, Backend):
        return model
    for framework, name in ADAPTERS:
        if framework in sys.modules:
            backend = importlib.import_module(name).backend_for(model, tokenizer)
            if backend is not None:
                return backend
    raise fail(
        f"get_backend got a {type(model).__module__}.{type(model).__name__}",
        "a transformers PreTrainedModel (GPT-2, GPT-NeoX, Llama, Qwen2, Gemma 3), a TransformerLens "
        "TransformerBridge or HookedTransformer, an nnsight model, or a headkit backend",
        "load the model with transformers or TransformerLens, or wrap it in an adapter's backend",
    )
