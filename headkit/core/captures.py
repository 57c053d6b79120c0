"""What readers recorded in a run: ``Captures`` (per reader) of ``Captured`` (per layer), and ``Run``.

A capture (``capture_attention``, or the ``SumZ`` reader behind ``compute_means``) is a value and keeps
nothing. Each run gets a fresh :class:`Captures`, into which the adapter records, per reader and layer,
what the reader reads; the caller gets it back:

    with hk_hf.applied(model, cap) as got:        # transformers, TransformerLens: applied() yields it
        model(input_ids)
    got[cap].pattern(1, 2)                        # [batch, query, key]
    got = hk_nn.apply(model, cap)                 # nnsight, inside a trace (also remote): apply returns it
    run = backend.run(input_ids, cap)             # every backend: run.logits, run.captures[cap]
    hooks = hk_tl.fwd_hooks(model, cap)           # plain TransformerLens hooks carry it: hooks.captures

Readers are keys by value (equal captures record the same thing), so a capture rebuilt from its fields
finds its result. A Captures pickles as plain data (tensors, ints, strings) and is rebuilt where it is
unpickled, which is how one comes back from an NDIF server that does not have headkit installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail
from headkit.core.interventions import CaptureAttention, Intervention

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = ["Captured", "Captures", "Run"]


class Captured:
    """What one reader recorded in one run: ``layers``, a dict ``{layer: tensor}``.

    For a :class:`~headkit.core.interventions.CaptureAttention`, ``layers[l]`` is ``[batch, n, query, key]``
    for its ``n`` heads in layer ``l`` (in head order), or ``[batch, n, sentence, sentence]`` when pooled;
    :meth:`pattern` and :attr:`patterns` read it by head. For ``SumZ`` it is each layer's summed ``z``.
    """

    __slots__ = ("reader", "layers")

    def __init__(self, reader: Intervention, layers: dict[int, torch.Tensor]) -> None:
        self.reader = reader
        self.layers = layers

    def pattern(self, layer: int, head: int) -> Float[torch.Tensor, "batch query key"]:
        """One head's pattern: ``[batch, query, key]``, or ``[batch, sentence, sentence]`` pooled."""
        cap = self.reader
        if not isinstance(cap, CaptureAttention):
            raise fail(
                f"pattern was asked of what {cap!r} recorded",
                "the result of a capture_attention",
                "read this reader's per-layer tensors from .layers",
            )
        if (layer, head) not in cap.heads:
            raise fail(
                f"{cap!r}.pattern got head L{layer}H{head}",
                f"one of the captured heads {cap.heads.short()!r}",
                "add the head to capture_attention(...)",
            )
        if layer not in self.layers:
            raise fail(
                f"{cap!r} has nothing captured for layer {layer}",
                "a forward pass run with this capture applied",
                "run the model inside the block that yielded these captures (applied(model, cap)), or pass "
                "the capture to backend.run(...)",
            )
        return self.layers[layer][:, cap.heads.in_layer(layer).index(head)]

    @property
    def patterns(self) -> Float[torch.Tensor, "batch heads query key"]:
        """Every captured head stacked in ``heads`` order: ``[batch, n_captured, query, key]`` (or pooled)."""
        heads = self.reader.heads  # type: ignore[attr-defined]
        return torch.stack([self.pattern(layer, head) for layer, head in heads], dim=1)

    def __repr__(self) -> str:
        layers = ", ".join(f"{layer}: {describe(t)}" for layer, t in sorted(self.layers.items()))
        return f"Captured({self.reader!r}, layers={{{layers}}})"


class Captures:
    """What every reader of a run recorded: ``got[reader]`` is a :class:`Captured`.

    Adapters record with :meth:`put` (a layer's record, replacing that of an earlier forward pass) and
    :meth:`add` (one more part of a layer's record, for row-chunked pooling). Reading: ``got[cap]``,
    ``cap in got``, ``len(got)``, iteration over the readers, ``got.pattern(cap, layer, head)``.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.core.captures import Captures
        >>> cap = hk.capture_attention("L0H1")
        >>> got = Captures()
        >>> got.put(cap, 0, torch.ones(1, 1, 2, 2))
        >>> got[hk.capture_attention("L0H1")].pattern(0, 1).shape   # found by value
        torch.Size([1, 2, 2])
        >>> got
        Captures({CaptureAttention(heads='L0H1'): {0: f32[1, 1, 2, 2]}})
    """

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[Intervention, dict[int, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------ recording
    def put(self, reader: Intervention, layer: int, value: torch.Tensor | None) -> None:
        """Record ``value`` as what ``reader`` read in ``layer`` (None records nothing)."""
        if value is not None:
            self._records.setdefault(reader, {})[layer] = value

    def add(self, reader: Intervention, layer: int, value: torch.Tensor | None) -> None:
        """Add ``value`` to what ``reader`` recorded in ``layer`` (a further chunk of a pooled pattern)."""
        if value is None:
            return
        layers = self._records.setdefault(reader, {})
        layers[layer] = layers[layer] + value if layer in layers else value

    # ------------------------------------------------------------------------------------ reading
    def __getitem__(self, reader: Intervention) -> Captured:
        if not isinstance(reader, Intervention) or not reader.reads_only:
            raise fail(
                f"Captures got {describe(reader) if isinstance(reader, torch.Tensor) else repr(reader)[:80]} as key",
                "a capture (capture_attention(...)) that was applied in this run",
                "index with the capture itself: got[cap]",
            )
        layers = self._records.get(reader)
        if layers is None:
            applied = ", ".join(map(repr, self._records)) or "none"
            raise fail(
                f"Captures has nothing recorded for {reader!r} (recorded: {applied})",
                "a capture applied in this run, with a forward pass run inside the block",
                "pass the capture to applied(model, ...), hk_nn.apply(model, ...) or backend.run(...) and run "
                "the model before reading",
            )
        return Captured(reader, dict(layers))  # a snapshot: later forward passes of a block do not change it

    def pattern(self, capture: CaptureAttention, layer: int, head: int) -> Float[torch.Tensor, "batch query key"]:
        """``self[capture].pattern(layer, head)``."""
        return self[capture].pattern(layer, head)

    def __contains__(self, reader: object) -> bool:
        return reader in self._records

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        items = ", ".join(
            f"{reader!r}: {{{', '.join(f'{layer}: {describe(t)}' for layer, t in sorted(layers.items()))}}}"
            for reader, layers in self._records.items()
        )
        return f"Captures({{{items}}})"

    # ------------------------------------------------------------------------------------ plain data
    def plain(self) -> list[tuple[str, tuple[Any, ...], dict[int, torch.Tensor]]]:
        """The records as plain data: ``[(reader type name, reader fields as plain data, {layer: tensor})]``."""
        return [(type(r).__name__, r.plain_fields(), dict(layers)) for r, layers in self._records.items()]

    @classmethod
    def from_plain(cls, data: list[tuple[str, tuple[Any, ...], dict[int, torch.Tensor]]]) -> Captures:
        """Rebuild a Captures from :meth:`plain` (each reader rebuilt from its fields, so it equals the original)."""
        import importlib  # by name, not a module global: this module also travels to servers without headkit

        readers = importlib.import_module("headkit.core.interventions")
        got = cls()
        for name, fields, layers in data:
            reader_type = getattr(readers, name, None)
            if not (isinstance(reader_type, type) and issubclass(reader_type, Intervention) and reader_type.reads_only):
                raise fail(f"Captures.from_plain got reader type {name!r}", "a headkit reader type",
                           "rebuild from what Captures.plain() returned")
            for layer, value in layers.items():
                got.put(reader_type(*fields), layer, value)
        return got

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as plain data plus the *name* of the function that rebuilds it: an NDIF server, which has
        # no headkit module to refer to, can send it back, and it is rebuilt where headkit is installed.
        return (_ByName("headkit.core.captures:Captures.from_plain"), (self.plain(),))


class _ByName:
    """A callable that pickles as ``pkgutil.resolve_name(name)``: the function is looked up by name on unpickling."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:
        import pkgutil

        return pkgutil.resolve_name(self.name)(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        import pkgutil

        return (pkgutil.resolve_name, (self.name,))


class Run:
    """One forward pass's result from :meth:`headkit.backend.Backend.run`: ``logits`` and ``captures``.

    Unpacks as ``logits, got = backend.run(ids, cap)``.
    """

    __slots__ = ("logits", "captures")

    def __init__(self, logits: torch.Tensor, captures: Captures) -> None:
        self.logits = logits
        self.captures = captures

    def __iter__(self) -> Iterator[Any]:
        return iter((self.logits, self.captures))

    def __repr__(self) -> str:
        return f"Run(logits={describe(self.logits)}, captures={self.captures!r})"
