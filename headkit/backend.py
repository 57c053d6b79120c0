"""The backend protocol every adapter implements, so each analysis is written once.

A backend wraps one model in one framework. It knows the model's head geometry and tokenizer, runs a
forward pass with interventions applied, and applies interventions for the length of a ``with`` block
(removing everything it attached when the block ends, also on error). :func:`get_backend` picks the
adapter from the model's type, looking only at frameworks that are already imported (as einops does).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from headkit.core.errors import describe, fail
from headkit.core.interventions import Intervention, check_interventions
from headkit.core.sites import ModelShape, Site

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

__all__ = ["Backend", "get_backend", "plan"]

_SITE_ORDER: dict[Site, int] = {"z": 0, "scores": 1, "pattern": 2}


@runtime_checkable
class Backend(Protocol):
    """What analyses need from a model: head geometry, tokenizer, and forward passes with interventions.

    Example:
        >>> import headkit as hk
        >>> # backend = hk.get_backend(model)            # a transformers model or TransformerLens bridge
        >>> # logits = backend.logits(ids, hk.zero_ablate("L5H1"))
    """

    shape: ModelShape
    tokenizer: Any
    vocab_size: int
    """Logits per position (ids must lie below it)."""

    def applied(self, *interventions: Intervention) -> AbstractContextManager[None]:
        """Apply interventions to every forward pass inside the ``with`` block."""
        ...

    def logits(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Float[torch.Tensor, "batch pos vocab"] | Float[torch.Tensor, "n vocab"]:
        """One forward pass with interventions applied; returns the logits.

        ``[batch, pos, vocab]``; ``[batch, 1, vocab]`` with ``last_only``; ``[n, vocab]`` with ``positions``
        (only the True cells, in row-major order; the unembedding runs on those hidden states only).
        """
        ...

    def generate(
        self, input_ids: Int[torch.Tensor, "batch pos"], *interventions: Intervention, max_new_tokens: int = 20, **kwargs: Any
    ) -> Int[torch.Tensor, "batch total"]:
        """The framework's own generation (KV cache on) with interventions applied at every step; token ids."""
        ...


def real_token_positions(attention_mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
    """Position ids counting real tokens only, so a left-padded row sees the positions it has alone.

    This is what ``generate()`` and TransformerLens do; the transformers and nnsight backends pass it.

    Example:
        >>> import torch
        >>> from headkit.backend import real_token_positions
        >>> real_token_positions(torch.tensor([[0, 0, 1, 1, 1]])).tolist()
        [[0, 0, 0, 1, 2]]
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def check_inputs(
    input_ids: object, attention_mask: object, vocab_size: int | None, owner: str
) -> None:
    """HeadkitError unless ``input_ids`` are token ids ``[batch, pos]`` in the vocabulary and the mask fits them.

    Every backend calls this before a forward pass, so a wrong dtype, an id beyond the vocabulary or a mask
    of another shape is named here instead of surfacing as a raw torch error (or as logits that match
    neither input).

    Example:
        >>> import torch
        >>> from headkit.backend import check_inputs
        >>> check_inputs(torch.tensor([[1, 5, 6]]), None, 100, "example")   # fine: returns None
        >>> try:
        ...     check_inputs(torch.tensor([[1, 500]]), None, 100, "example")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        example got token id 500 in input_ids i64[1, 2]
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise fail(f"{owner} got input_ids {describe(input_ids)}", "token ids [batch, pos] with batch, pos >= 1",
                   "tokenize into a tensor, e.g. tokenizer(texts, return_tensors='pt').input_ids")
    check_token_ids(input_ids, vocab_size, owner)
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise fail(f"{owner} got attention_mask {describe(attention_mask)} for input_ids {describe(input_ids)}",
                   f"a 0/1 tensor of the same shape {list(input_ids.shape)}",
                   "pass the tokenizer's attention_mask for these same ids")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise fail(f"{owner} got attention_mask {describe(attention_mask)} with values other than 0 and 1",
                   "1 for real tokens, 0 for padding", "pass the tokenizer's attention_mask")


def check_token_ids(
    ids: torch.Tensor, vocab_size: int | None, owner: str, name: str = "input_ids", item: str = "token"
) -> None:
    """HeadkitError unless a tensor holds integer ids inside the vocabulary (and has data: not on meta).

    Used for the inputs of every backend and for the targets of the analyses.

    Example:
        >>> import torch
        >>> from headkit.backend import check_token_ids
        >>> try:
        ...     check_token_ids(torch.tensor([3, -1]), 100, "evaluate", "targets", "target")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        evaluate got target id -1 in targets i64[2]
    """
    if ids.device.type == "meta":
        raise fail(f"{owner} got {name} on the meta device", "token ids with data (cpu or cuda)",
                   "build the ids on a real device (torch.tensor(...) or .to('cpu'))")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise fail(f"{owner} got {name} {describe(ids)} of dtype {ids.dtype}", "integer token ids",
                   f"convert with {name}.long() (and check they are ids, not embeddings or probabilities)")
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bad = low if low < 0 else high
        raise fail(f"{owner} got {item} id {bad} in {name} {describe(ids)}",
                   f"ids in 0..{vocab_size - 1 if vocab_size else 'vocab - 1'} (this model's vocabulary)",
                   "tokenize with this model's own tokenizer")


def check_last_only(last_only: bool, attention_mask: torch.Tensor | None) -> None:
    """``last_only`` reads the last column, which is every row's last real token only under left padding."""
    if last_only and attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise fail(
            "logits(last_only=True) got an attention mask whose last column has padding",
            "left-padded inputs (every row ends in a real token)",
            'pad on the left (tokenizer.padding_side = "left"), or drop last_only and read each row\'s '
            "last real token with headkit.metrics.last_token_logits",
        )


def check_positions(
    positions: Bool[torch.Tensor, "batch pos"] | None, input_ids: torch.Tensor, last_only: bool
) -> None:
    """``positions`` must be a bool ``[batch, pos]`` mask like ``input_ids``, and excludes ``last_only``."""
    if positions is None:
        return
    if last_only:
        raise fail(
            "logits got both last_only=True and positions",
            "one way to choose the positions to unembed",
            "pass positions with the last column set, or last_only=True alone",
        )
    if not isinstance(positions, torch.Tensor) or positions.dtype != torch.bool or positions.shape != input_ids.shape:
        raise fail(
            f"logits got positions {describe(positions)} for input_ids {describe(input_ids)}",
            f"a bool tensor of the input's shape {list(input_ids.shape)}, True where logits are wanted",
            "build it like the input, e.g. `positions = attention_mask.bool()` or a target mask",
        )


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


def plan(
    interventions: Sequence[object], shape: ModelShape, owner: str
) -> dict[tuple[Site, int], list[Intervention]]:
    """Validate interventions against a model and group them by (site, layer), in forward order.

    At each site the edits keep the order they were given in, and reads (captures) come after every edit,
    so a capture sees the activation as the model uses it.

    Example:
        >>> import headkit as hk
        >>> from headkit.core.sites import ModelShape
        >>> p = plan([hk.zero_ablate("L1H0")], ModelShape(2, 4, 16, 4), "example")
        >>> list(p)
        [('z', 1)]
    """
    check_interventions(interventions, owner)
    ivs: list[Intervention] = list(interventions)  # type: ignore[arg-type]
    for iv in ivs:
        iv.validate(shape)
    groups: dict[tuple[Site, int], list[Intervention]] = {}
    for iv in sorted(ivs, key=lambda iv: iv.reads_only):  # stable: edits in given order, then reads
        for site in iv.sites:
            for layer in iv.layers(shape.n_layers):
                groups.setdefault((site, layer), []).append(iv)
    return dict(sorted(groups.items(), key=lambda item: (item[0][1], _SITE_ORDER[item[0][0]])))


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
