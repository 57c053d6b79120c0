"""The base every backend adapter builds on: what the three adapters would otherwise each write again.

An adapter subclass says how to run one forward pass (``run``) and where its torch module is
(``torch_module``); the base gives the rest of the backend protocol (:mod:`headkit.backend`): input checks,
the pad id for generation, device and dtype, frozen weights, and ``logits`` and ``captures`` (a pass
without logits) on top of ``run``. It lives in the kernel because the nnsight adapter, which travels to
NDIF by value, builds on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from headkit.core.inputs import check_inputs, check_last_only, check_positions

if TYPE_CHECKING:
    from jaxtyping import Bool, Float, Int

    from headkit.core.captures import Captures, Run
    from headkit.core.interventions import Intervention

__all__ = ["AdapterBase", "HeadPaths", "pad_id"]


def pad_id(config: Any) -> int:
    """The id generation pads with: the model's pad token, else its (first) end-of-sequence token, else 0.

    One policy for every adapter (a list of end-of-sequence ids, as Llama 3 and Gemma 3 have, gives its first).

    Example:
        >>> from types import SimpleNamespace
        >>> from headkit.core.adapter import pad_id
        >>> pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=[7, 9])), pad_id(SimpleNamespace(pad_token_id=3))
        (7, 3)
    """
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = getattr(config, "eos_token_id", None)
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    return pad if isinstance(pad, int) and not isinstance(pad, bool) else 0


class _Frozen:
    """The context manager of :meth:`AdapterBase.frozen` (a plain class: code shipped by source keeps no decorators)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.params = module, list[torch.nn.Parameter]()

    def __enter__(self) -> None:
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


class HeadPaths:
    """What one forward pass shows of every head's direct path to the logits, at one position of one sequence.

    ``head_out [layer, head, d_model]``: each head's term of ``W_O z`` (bias excluded) there, passed through
    the block's attention-output norm with its scale frozen where the architecture has one (Gemma 2/3,
    OLMo 2); ``final``: the final norm with its scale frozen at that position (a linear map on
    ``[..., d_model]``); ``unembed [vocab, d_model]``; ``logits [vocab]`` at the position; ``softcap``: the
    final logit soft-capping (Gemma) or None; ``captures``: what the pass's captures read. With frozen scales
    the heads' direct effects add up exactly. The backends' ``head_paths`` build it.

    Example:
        >>> import torch, headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> paths = hk.get_backend(model).head_paths(torch.tensor([[1, 5, 6, 7]]), 3)
        >>> paths.head_out.shape, paths.logits.shape, paths.final(paths.head_out).shape
        (torch.Size([2, 4, 64]), torch.Size([100]), torch.Size([2, 4, 64]))
    """

    __slots__ = ("head_out", "final", "unembed", "logits", "softcap", "captures")

    def __init__(self, head_out: torch.Tensor, final: Any, unembed: torch.Tensor, logits: torch.Tensor,
                 softcap: float | None, captures: Captures) -> None:
        self.head_out, self.final, self.unembed, self.logits = head_out, final, unembed, logits
        self.softcap, self.captures = softcap, captures


class AdapterBase:
    """Shared parts of the backends. Subclasses set ``vocab_size`` and define ``torch_module`` and ``logits``.

    Example:
        >>> import torch, headkit as hk
        >>> model, tok = hk.models.tiny("gpt2")
        >>> backend = hk.get_backend(model)
        >>> backend.device, backend.dtype, backend.remote
        (device(type='cpu'), torch.float32, False)
        >>> with backend.frozen():
        ...     any(p.requires_grad for p in model.parameters())
        False
        >>> all(p.requires_grad for p in model.parameters())
        True
    """

    remote: Any = False
    """Where forward passes run: False here; the nnsight adapter may run them on NDIF."""
    vocab_size: int

    @property
    def torch_module(self) -> torch.nn.Module:
        """The torch module whose parameters the model computes with."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where inputs are moved)."""
        param = next(self.torch_module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's first parameter."""
        param = next(self.torch_module.parameters(), None)
        return param.dtype if param is not None else torch.float32

    @property
    def model_type(self) -> str | None:
        """The transformers ``config.model_type`` of the model (``"gemma3_text"``, ``"llama"`` ...), if known."""
        return getattr(getattr(self.torch_module, "config", None), "model_type", None)

    def frozen(self) -> _Frozen:
        """No weight gradients inside the block (fitting gates then costs about a forward pass per backward);
        the flags are restored after, also on error."""
        return _Frozen(self.torch_module)

    def run(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Run:
        """One forward pass with interventions applied: its logits and what its captures read."""
        raise NotImplementedError

    def logits(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Float[torch.Tensor, "batch pos vocab"] | Float[torch.Tensor, "n vocab"]:
        """One forward pass with interventions applied; its logits (``run(...).logits``).

        ``[batch, pos, vocab]``; ``[batch, 1, vocab]`` with ``last_only``; ``[n, vocab]`` with ``positions``
        (the True cells only, row-major: the unembedding runs on those hidden states alone).
        """
        return self.run(input_ids, *interventions, attention_mask=attention_mask, last_only=last_only,
                        positions=positions).logits

    def captures(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    ) -> Captures:
        """A forward pass for its readers only: what the captures read; the unembedding runs on no position."""
        none = torch.zeros(input_ids.shape, dtype=torch.bool) if isinstance(input_ids, torch.Tensor) else None
        return self.run(input_ids, *interventions, attention_mask=attention_mask, positions=none).captures

    def check(
        self,
        input_ids: object,
        attention_mask: object,
        owner: str,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> None:
        """Every input check of a forward pass, in one place (ids, mask, last_only, positions)."""
        check_inputs(input_ids, attention_mask, self.vocab_size, owner)
        check_last_only(last_only, attention_mask)  # type: ignore[arg-type]
        check_positions(positions, input_ids, last_only)  # type: ignore[arg-type]
