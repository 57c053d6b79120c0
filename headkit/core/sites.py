"""Sites: the three canonical tensors that head interventions act on, and their layouts.

| site      | tensor                                              | layout                      |
|-----------|-----------------------------------------------------|-----------------------------|
| `z`       | each head's output before the output projection W_O | `[batch, pos, head, d_head]` |
| `scores`  | attention logits before softmax, after causal mask  | `[batch, head, query, key]` |
| `pattern` | attention probabilities                             | `[batch, head, query, key]` |

Every adapter hands interventions these exact layouts, whatever the framework stores. Zero-ablation,
mean-ablation and gating act on `z` (exact, since W_O is linear per head); the pre-softmax mask acts on
`scores`; capture reads `pattern`. Heads are query heads.

The TransformerLens hook names are listed here too, because every intervention is itself callable as a
TransformerLens hook and reads its site and layer from ``hook.name``.
"""

from __future__ import annotations

from typing import Literal

from headkit.core.errors import fail

__all__ = ["Site", "LAYOUTS", "ModelShape", "TL_HOOKS", "tl_hook_name", "parse_hook_name"]

# This module and the rest of headkit.core run inside nnsight traces, possibly on a remote NDIF server
# that receives them by value: they import only torch and the standard modules NDIF allows, use no
# dataclasses (their generated methods have no source to ship; interventions generate equality, hashing
# and reprs from declared fields with plain methods instead) and no jaxtyping at run time.

Site = Literal["z", "scores", "pattern"]

LAYOUTS: dict[str, str] = {
    "z": "[batch, pos, head, d_head]",
    "scores": "[batch, head, query, key]",
    "pattern": "[batch, head, query, key]",
}

TL_HOOKS: dict[str, str] = {
    "z": "blocks.{layer}.attn.hook_z",
    "scores": "blocks.{layer}.attn.hook_attn_scores",
    "pattern": "blocks.{layer}.attn.hook_pattern",
}
"""TransformerLens 4.x hook names (the legacy spellings, valid with or without compatibility mode)."""

_TL_SUFFIXES: dict[str, str] = {
    "attn.hook_z": "z",
    "attn.o.hook_in": "z",  # TransformerBridge's canonical name for hook_z
    "attn.hook_attn_scores": "scores",
    "attn.hook_pattern": "pattern",
}


class ModelShape:
    """The head geometry of a model: what interventions are validated against.

    Example:
        >>> from headkit.core.sites import ModelShape
        >>> ModelShape(n_layers=18, n_heads=4, d_head=256, n_kv_heads=1)
        ModelShape(n_layers=18, n_heads=4, d_head=256, n_kv_heads=1)
    """

    __slots__ = ("n_layers", "n_heads", "d_head", "n_kv_heads")

    def __init__(self, n_layers: int, n_heads: int, d_head: int, n_kv_heads: int) -> None:
        self.n_layers, self.n_heads, self.d_head, self.n_kv_heads = n_layers, n_heads, d_head, n_kv_heads

    def _fields(self) -> tuple[int, int, int, int]:
        return (self.n_layers, self.n_heads, self.d_head, self.n_kv_heads)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelShape) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"ModelShape(n_layers={self.n_layers}, n_heads={self.n_heads}, d_head={self.d_head}, "
            f"n_kv_heads={self.n_kv_heads})"
        )


def tl_hook_name(site: Site, layer: int) -> str:
    """The TransformerLens hook name of a site in a layer.

    Example:
        >>> from headkit.core.sites import tl_hook_name
        >>> tl_hook_name("scores", 3)
        'blocks.3.attn.hook_attn_scores'
    """
    return TL_HOOKS[site].format(layer=layer)


def parse_hook_name(name: str | None, owner: str, sites: tuple[Site, ...]) -> tuple[Site, int]:
    """(site, layer) of a TransformerLens hook name, or a HeadkitError with a did-you-mean.

    Example:
        >>> from headkit.core.sites import parse_hook_name
        >>> parse_hook_name("blocks.2.attn.o.hook_in", "ZeroAblate", ("z",))
        ('z', 2)
    """
    parts = (name or "").split(".", 2)  # "blocks", layer, rest
    is_block = len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit()
    site = _TL_SUFFIXES.get(parts[2]) if is_block else None
    if site is not None and site in sites:
        return site, int(parts[1])  # type: ignore[return-value]
    import difflib  # only on this error path (code run inside traces imports nothing unusual)

    layer = parts[1] if is_block else "{layer}"
    valid = [TL_HOOKS[s].format(layer=layer) for s in sites]
    close = difflib.get_close_matches(name or "", valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise fail(
        f"{owner} was called at hook point {name!r}",
        f"one of {valid} (its sites: {', '.join(sites)})",
        f"{hint}attach it there, or let an adapter place it: headkit.adapters.transformer_lens.fwd_hooks(model, ...)",
    )
