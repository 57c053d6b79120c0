"""Heads: an immutable set of attention heads, as (layer, head) pairs or a bool tensor [layer, head].

Heads are always *query* heads. On grouped-query models (Llama, Qwen2, Gemma 3) several query heads
share one key/value head; headkit addresses each query head on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Union

import torch

from headkit.core.errors import HeadkitError, describe, fail

if TYPE_CHECKING:
    from jaxtyping import Bool

    HeadsLike = Union["Heads", str, Mapping[int, "int | Iterable[int]"], Iterable[tuple[int, int]], torch.Tensor]
    """Anything `Heads(...)` accepts: a Heads, "L5H1 L9H9", {5: [1]}, [(5, 1)], or a bool tensor [layer, head]."""

__all__ = ["Heads"]


class Heads:
    """An immutable, sorted set of attention heads.

    Build it from whichever form you have; all of these are the same set:

    Example:
        >>> import torch, headkit as hk
        >>> a = hk.Heads.parse("L5H1 L9H9")
        >>> b = hk.Heads([(9, 9), (5, 1)])
        >>> c = hk.Heads({5: [1], 9: [9]})
        >>> m = torch.zeros(12, 12, dtype=torch.bool); m[5, 1] = m[9, 9] = True
        >>> a == b == c == hk.Heads(m)
        True
        >>> a
        Heads('L5H1 L9H9')
        >>> a.mask(12, 12).sum().item()
        2
    """

    __slots__ = ("_pairs",)

    def __init__(self, heads: HeadsLike = ()) -> None:
        if isinstance(heads, Heads):
            pairs: Iterable[tuple[int, int]] = heads._pairs
        elif isinstance(heads, str):
            pairs = Heads.parse(heads)._pairs
        elif isinstance(heads, torch.Tensor):
            pairs = Heads.from_mask(heads)._pairs
        elif isinstance(heads, Mapping):
            pairs = _pairs_from_mapping(heads)
        elif isinstance(heads, Iterable):
            pairs = heads  # checked pair by pair below
        else:
            raise fail(
                f"Heads got a {type(heads).__name__}",
                'a Heads, a string like "L5H1 L9H9", a dict {layer: [heads]}, (layer, head) pairs, '
                "or a bool tensor [n_layers, n_heads]",
                "pass one of those forms",
            )
        self._pairs: tuple[tuple[int, int], ...] = tuple(sorted({_check_pair(p) for p in pairs}))

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def parse(cls, text: str) -> Heads:
        """Parse heads written as ``"L5H1 L9H9"`` (spaces or commas between, case-insensitive).

        Example:
            >>> import headkit as hk
            >>> hk.Heads.parse("L0H3, l2h0").pairs
            ((0, 3), (2, 0))
        """
        if not isinstance(text, str):
            raise fail(f"Heads.parse got a {type(text).__name__}", 'a string like "L5H1 L9H9"', "pass a string")
        pairs = []
        for token in text.replace(",", " ").split():
            layer, _, head = token.upper().removeprefix("L").partition("H")
            if not (token[:1] in "Ll" and layer.isdigit() and head.isdigit() and layer.isascii() and head.isascii()):
                raise fail(
                    f"Heads.parse could not read {token!r} in {text!r}",
                    'tokens like "L5H1" (layer 5, head 1) separated by spaces or commas',
                    'write it as "L<layer>H<head>", e.g. "L5H1"',
                )
            pairs.append((int(layer), int(head)))
        return cls(pairs)

    @classmethod
    def from_mask(cls, mask: Bool[torch.Tensor, "layer head"]) -> Heads:
        """The heads where a bool tensor ``[n_layers, n_heads]`` is True.

        Example:
            >>> import torch, headkit as hk
            >>> hk.Heads.from_mask(torch.tensor([[False, True], [False, False]]))
            Heads('L0H1')
        """
        if isinstance(mask, torch.Tensor) and mask.device.type == "meta":
            raise fail("Heads.from_mask got a tensor on the meta device", "a bool tensor with data",
                       "build the mask on the cpu (or move it there with .cpu())")
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.dtype != torch.bool:
            raise fail(
                f"Heads.from_mask got {describe(mask)}",
                "a bool tensor of shape [n_layers, n_heads]",
                "convert with `mask.bool()` and index layers first, heads second",
            )
        return cls([(int(layer), int(head)) for layer, head in mask.nonzero().tolist()])

    @classmethod
    def all(cls, n_layers: int, n_heads: int) -> Heads:
        """Every head of a model with ``n_layers`` layers of ``n_heads`` query heads.

        Example:
            >>> import headkit as hk
            >>> len(hk.Heads.all(2, 3))
            6
        """
        return cls([(layer, head) for layer in range(n_layers) for head in range(n_heads)])

    # ----------------------------------------------------------------------------------------- views
    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """The (layer, head) pairs, sorted by layer then head."""
        return self._pairs

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers that hold at least one of these heads, sorted."""
        return tuple(sorted({layer for layer, _ in self._pairs}))

    def in_layer(self, layer: int) -> tuple[int, ...]:
        """The head indices of these heads that sit in ``layer``.

        Example:
            >>> import headkit as hk
            >>> hk.Heads.parse("L1H0 L1H3 L2H1").in_layer(1)
            (0, 3)
        """
        return tuple(head for l, head in self._pairs if l == layer)

    def mask(self, n_layers: int, n_heads: int) -> Bool[torch.Tensor, "layer head"]:
        """These heads as a bool tensor ``[n_layers, n_heads]`` (validated against that shape).

        Example:
            >>> import headkit as hk
            >>> hk.Heads.parse("L1H0").mask(2, 2)
            tensor([[False, False],
                    [ True, False]])
        """
        self.validate(n_layers, n_heads)
        out = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        for layer, head in self._pairs:
            out[layer, head] = True
        return out

    def validate(self, n_layers: int, n_heads: int, *, n_kv_heads: int | None = None, owner: str = "Heads") -> None:
        """Raise HeadkitError unless every head exists in a model of this shape.

        Example:
            >>> import headkit as hk
            >>> hk.Heads.parse("L1H7").validate(2, 4)
            Traceback (most recent call last):
            ...
            headkit.core.errors.HeadkitError: Heads got head L1H7, but the model has 4 query heads per layer; expected head indices 0..3. Fix: drop L1H7 or use a head index below 4
        """
        for layer, head in self._pairs:
            if layer >= n_layers:
                raise fail(
                    f"{owner} got head L{layer}H{head}, but the model has {n_layers} layers",
                    f"layer indices 0..{n_layers - 1}",
                    f"drop L{layer}H{head} or use a layer index below {n_layers}",
                )
            if head >= n_heads:
                gqa = ""
                if n_kv_heads is not None and n_kv_heads != n_heads:
                    gqa = (
                        f" (and {n_kv_heads} key/value heads: headkit indexes query heads, "
                        f"not key/value heads)"
                    )
                raise fail(
                    f"{owner} got head L{layer}H{head}, but the model has {n_heads} query heads per layer{gqa}",
                    f"head indices 0..{n_heads - 1}",
                    f"drop L{layer}H{head} or use a head index below {n_heads}",
                )

    # ----------------------------------------------------------------------------------------- set protocol
    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Heads) and self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __or__(self, other: HeadsLike) -> Heads:
        return Heads(self._pairs + Heads(other)._pairs)

    def __sub__(self, other: HeadsLike) -> Heads:
        drop = set(Heads(other)._pairs)
        return Heads([p for p in self._pairs if p not in drop])

    def short(self, limit: int = 12) -> str:
        """The heads as text, abbreviated past ``limit`` heads (reprs stay short: they name hooks).

        Example:
            >>> import headkit as hk
            >>> hk.Heads.all(32, 40).short()
            'L0H0 L0H1 L0H2 L0H3 L0H4 L0H5 ... (1280 heads)'
        """
        if len(self._pairs) <= limit:
            return str(self)
        return " ".join(f"L{l}H{h}" for l, h in self._pairs[: limit // 2]) + f" ... ({len(self._pairs)} heads)"

    def __str__(self) -> str:
        return " ".join(f"L{layer}H{head}" for layer, head in self._pairs)

    def __repr__(self) -> str:
        return f"Heads({self.short()!r})"


def _check_pair(pair: object) -> tuple[int, int]:
    if (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        and all(x >= 0 for x in pair)
    ):
        return int(pair[0]), int(pair[1])
    raise fail(
        f"Heads got {pair!r}",
        "(layer, head) pairs of non-negative ints",
        'pass pairs like (5, 1), or a string like "L5H1"',
    )


def _pairs_from_mapping(mapping: Mapping) -> list[tuple[int, int]]:
    pairs = []
    for layer, heads in mapping.items():
        if isinstance(heads, (str, bytes)) or not isinstance(heads, (int, Iterable)):
            raise fail(
                f"Heads got {{{layer!r}: {heads!r}}}",
                "a dict {layer: head} or {layer: [heads]} of non-negative ints",
                "write it as e.g. {5: [1, 3]}",
            )
        for head in [heads] if isinstance(heads, int) else heads:
            pairs.append((layer, head))
    return pairs


def coerce(heads: HeadsLike, owner: str, *, allow_empty: bool = False) -> Heads:
    """Heads(heads), refusing an empty set (a silent no-op) unless allowed."""
    try:
        result = Heads(heads)
    except HeadkitError as e:
        raise HeadkitError(f"{owner}: {e}") from None
    if not result and not allow_empty:
        raise fail(f"{owner} got no heads", "at least one head", 'name the heads, e.g. "L5H1"')
    return result
