"""The base of every intervention: declared fields, value equality, hashing, a constructor-like repr, and
the TransformerLens hook contract (``fn(activation, /, *, hook)``, site and layer read from ``hook.name``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch

from headkit.core.errors import describe, fail
from headkit.core.heads import Heads
from headkit.core.sites import LAYOUTS, parse_hook_name, tl_hook_name

if TYPE_CHECKING:  # jaxtyping is for readers and type checkers; nothing here needs it at run time
    from jaxtyping import Bool

    from headkit.core.sites import ModelShape, Site

    Spans = Sequence[tuple[int, int]]
    PositionSpec = Union[Spans, Bool[torch.Tensor, " pos"], Bool[torch.Tensor, "batch pos"]]

__all__ = ["Intervention", "check_interventions", "same_value", "hash_key", "show_value", "plain_value"]


def same_value(a: Any, b: Any) -> bool:
    """Field equality: tensors by value (shape, dtype, device, elements; never by autograd state), else ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a is b:
            return True
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        return bool(torch.equal(a.detach(), b.detach()))
    return bool(a == b)


def hash_key(value: Any) -> Any:
    """What a field contributes to the hash: a tensor's shape, dtype and device (values never read), else itself."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    return value


def show_value(value: Any) -> str:
    """A field as the repr shows it: heads as their text, a tensor as ``f32[2, 4]``, spans as a list."""
    if isinstance(value, Heads):
        return repr(value.short())
    if isinstance(value, torch.Tensor):
        return describe(value)
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def plain_value(value: Any) -> Any:
    """A field as plain data (builtins and tensors): heads become their (layer, head) pairs."""
    return value.pairs if isinstance(value, Heads) else value


_CLASS_LEVEL = frozenset({"sites", "reads_only", "fields", "defaults"})
"""Annotated class attributes of :class:`Intervention` that are not fields of a subclass."""


class Intervention:
    """Base of the interventions: a declared value placed as a site edit (or read) per layer.

    **Declared values.** Each subclass declares its fields once, as annotations (``heads: Heads``): the
    names its constructor takes and stores (validated there), in order, become ``fields``; ``defaults``
    names the fields a repr leaves out at their default. Equality, hashing
    and the constructor-like repr are generated from ``fields`` by the plain methods below (no dataclass:
    generated code has no source, and nnsight ships this module to NDIF by source). Two interventions are
    equal when they are of the same type and every field is equal; tensor fields compare by value (same
    shape, dtype, device and elements, ``torch.equal``, autograd history ignored), and hash by shape,
    dtype and device only, so hashing never reads a tensor (no device sync) and stays stable while a gate's
    parameter trains in place. Instances are immutable; they hold no run state (what a capture reads is a
    :class:`headkit.core.captures.Captures` result).

    **Placement.** Subclasses declare ``sites`` and implement ``edit(site, layer, activation, where)`` on
    canonical layouts. ``reads_only`` ones (captures) implement ``read(site, layer, activation, where)``,
    returning what to record for that layer; they are placed after every edit at the same site and record
    into the Captures of the run.
    """

    sites: tuple[Site, ...] = ()
    reads_only: bool = False
    fields: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}

    def __init_subclass__(cls) -> None:  # no super(): code shipped by source has no __class__ cell
        declared = [name for name in vars(cls).get("__annotations__", {}) if name not in _CLASS_LEVEL]
        if declared:  # (a class rebuilt from a pickle gets its fields with the rest of its namespace)
            cls.fields = tuple(declared)

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one with its factory")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one with its factory")

    # ------------------------------------------------------------------------------------ the declared value
    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(same_value(getattr(self, name), getattr(other, name)) for name in self.fields)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(hash_key(getattr(self, name)) for name in self.fields)))

    def __repr__(self) -> str:
        shown = []
        for name in self.fields:
            value = getattr(self, name)
            if name in self.defaults and same_value(value, self.defaults[name]):
                continue
            shown.append(f"{name}={self.show(name, value)}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def show(self, name: str, value: Any) -> str:
        """How a field prints in the repr: heads as text, tensors as ``f32[2, 4]``, never their values."""
        return show_value(value)

    def plain_fields(self) -> tuple[Any, ...]:
        """The fields as plain data (heads as (layer, head) pairs): ``type(self)(*plain_fields())`` is equal."""
        return tuple(plain_value(getattr(self, name)) for name in self.fields)

    def layers(self, n_layers: int) -> tuple[int, ...]:
        """The layers this intervention acts on, in a model with ``n_layers`` layers."""
        return self.heads.layers  # type: ignore[attr-defined]

    def validate(self, shape: ModelShape) -> None:
        """Raise HeadkitError unless this intervention fits a model of this shape."""
        self.heads.validate(shape.n_layers, shape.n_heads, n_kv_heads=shape.n_kv_heads, owner=repr(self))  # type: ignore[attr-defined]

    def edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        """Return the edited activation of ``site`` in ``layer``; ``where`` names the hook point for errors."""
        raise NotImplementedError

    def read(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor | None:
        """What a reader (``reads_only``) records for ``layer`` from the activation (None: nothing there).

        The adapter keeps it in the run's Captures (``captures.put(self, layer, ...)``); the reader itself
        never changes.
        """
        raise NotImplementedError

    def __call__(self, activation: torch.Tensor, /, hook: Any) -> torch.Tensor:
        """Act as a TransformerLens hook: the site and layer come from ``hook.name``.

        TransformerLens passes ``hook`` by keyword (its wrappers sometimes positionally; both work).
        """
        site, layer = parse_hook_name(getattr(hook, "name", None), repr(self), self.sites)
        if not self.acts_on(layer):
            layers = list(self.heads.layers)  # type: ignore[attr-defined]
            raise fail(
                f"{self!r} was called at hook point {hook.name!r}, in layer {layer}",
                f"a hook point in one of its layers {layers} (elsewhere it would silently do nothing)",
                f"attach it at {tl_hook_name(site, layers[0])!r} (one entry per layer), or let an adapter place "
                "it: fwd_hooks=headkit.adapters.transformer_lens.fwd_hooks(model, ...)",
            )
        return self.hook_edit(site, layer, activation, hook.name)

    def acts_on(self, layer: int) -> bool:
        """Whether this intervention edits (or reads) anything in ``layer``."""
        return layer in self.heads.layers  # type: ignore[attr-defined]

    def hook_edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        """The edit made when called as a plain TransformerLens hook (the same as :meth:`edit` unless overridden).

        A reader has nowhere to keep what it reads (it holds no state), so it refuses and names the fix:
        ``hk_tl.fwd_hooks(model, capture)`` routes it into the Captures those hooks carry.
        """
        if self.reads_only:
            raise fail(
                f"{self!r} was called as a plain TransformerLens hook at {where!r}",
                "somewhere to record what it reads: a capture is a value and keeps nothing itself; what it "
                "reads goes into the Captures of a run",
                "let the adapter place it: hooks = headkit.adapters.transformer_lens.fwd_hooks(model, cap); "
                "model.run_with_hooks(tokens, fwd_hooks=hooks); hooks.captures[cap].pattern(layer, head) "
                "(or: with hk_tl.applied(model, cap) as got: model(tokens); got[cap])",
            )
        return self.edit(site, layer, activation, where)

    def _check(self, site: Site, act: torch.Tensor, where: str, heads: Sequence[int]) -> None:
        """Check an activation's layout at run time, naming the hook point."""
        head_axis = 2 if site == "z" else 1
        if not isinstance(act, torch.Tensor) or act.ndim != 4:
            raise fail(
                f"{self!r} at {where!r} got activation {describe(act)}",
                f"the {site} layout {LAYOUTS[site]}",
                "attach it to a head-resolved hook point (TransformerLens: hook_z, hook_attn_scores, hook_pattern)",
            )
        if heads and max(heads) >= act.shape[head_axis]:
            raise fail(
                f"{self!r} at {where!r} got activation {describe(act)} with {act.shape[head_axis]} heads, "
                f"but it names head {max(heads)}",
                f"head indices below {act.shape[head_axis]} (layout {LAYOUTS[site]})",
                "check the heads against the model (headkit counts query heads)",
            )


def check_interventions(interventions: Sequence[object], owner: str) -> None:
    """HeadkitError unless every item is an intervention (adapters call this first)."""
    for i, iv in enumerate(interventions):
        if not isinstance(iv, Intervention):
            raise fail(
                f"{owner} got {describe(iv) if isinstance(iv, torch.Tensor) else repr(iv)[:80]} as intervention {i}",
                "headkit interventions (zero_ablate, mean_ablate, gate, mask_attention, capture_attention)",
                "build them with the headkit factories, e.g. hk.zero_ablate('L5H1')",
            )
