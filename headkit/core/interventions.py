"""The five head interventions: zero-ablate, mean-ablate, gate, pre-softmax mask, attention capture.

Each factory returns a small immutable value with declared fields: validated when built, equal (and
hashing equal) to any other built from equal fields, printing like the call that made it, and callable as
a TransformerLens hook ``fn(activation, /, *, hook) -> activation`` (it reads its site and layer from
``hook.name``). Adapters place the same values on any framework. Activations arrive in the canonical
layouts of :mod:`headkit.core.sites`; nothing is edited in place unless asked. A capture holds no state:
what it reads is a result of the run, in :class:`headkit.core.captures.Captures`.

    >>> import headkit as hk
    >>> hk.zero_ablate("L0H0 L1H2") == hk.zero_ablate([(1, 2), (0, 0)])
    True
    >>> len({hk.zero_ablate("L0H0"), hk.zero_ablate("L0H0"), hk.capture_attention("L0H0")})
    2

    zero_ablate(heads)                      z[:, :, h] = 0
    mean_ablate(heads, means)               z[:, :, h] = mean of z over a reference set
    gate(values)                            z[:, :, h] *= values[layer, h]   (or per row [batch, layer, h])
    mask_attention(heads, keys, queries)    scores[:, h, q, k] = -inf before softmax
    capture_attention(heads, pool=None)     read pattern[:, h] (optionally pooled to sentences) into the run's Captures
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch

from headkit.core.errors import describe, fail
from headkit.core.heads import Heads, coerce
from headkit.core.positions import (
    membership,
    position_mask,
    position_spec,
    require_data,
    spans,
)
from headkit.core.sites import LAYOUTS, parse_hook_name, tl_hook_name

if TYPE_CHECKING:  # jaxtyping is for readers and type checkers; nothing here needs it at run time
    from jaxtyping import Bool, Float

    from headkit.core.heads import HeadsLike
    from headkit.core.sites import ModelShape, Site

    Spans = Sequence[tuple[int, int]]
    PositionSpec = Union[Spans, Bool[torch.Tensor, " pos"], Bool[torch.Tensor, "batch pos"]]

__all__ = [
    "Intervention",
    "ZeroAblate",
    "MeanAblate",
    "Gate",
    "MaskAttention",
    "CaptureAttention",
    "zero_ablate",
    "mean_ablate",
    "gate",
    "mask_attention",
    "capture_attention",
    "SumZ",
]


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


class Intervention:
    """Base of the interventions: a declared value placed as a site edit (or read) per layer.

    **Declared values.** Each subclass declares ``fields``, the names its constructor takes and stores
    (validated there); ``defaults`` names the fields a repr leaves out at their default. Equality, hashing
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


# ------------------------------------------------------------------------------------------------- z edits
class ZeroAblate(Intervention):
    """Zero the chosen heads' outputs (``z``) before the output projection. Build with :func:`zero_ablate`."""

    sites = ("z",)
    fields = ("heads", "inplace")
    defaults = {"inplace": False}

    def __init__(self, heads: HeadsLike, inplace: bool = False) -> None:
        self._set(heads=coerce(heads, "zero_ablate"), inplace=bool(inplace))

    def edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        idx = self.heads.in_layer(layer)
        self._check(site, activation, where, idx)
        if not idx:
            return activation
        if self.inplace:
            activation[:, :, list(idx)] = 0
            return activation
        return activation.index_fill(2, torch.tensor(idx, device=activation.device), 0)


def zero_ablate(heads: HeadsLike, *, inplace: bool = False) -> ZeroAblate:
    """Zero-ablate heads: their output ``z`` (before W_O) becomes 0, exactly as if W_O's rows for them were 0.

    ``inplace=True`` writes into the activation instead of returning a new tensor (saves one allocation;
    do not use it when gradients must flow through that activation).

    Example:
        >>> import headkit as hk
        >>> ablate = hk.zero_ablate("L1H0 L1H2")
        >>> ablate
        ZeroAblate(heads='L1H0 L1H2')
        >>> import torch
        >>> z = torch.ones(1, 2, 4, 3)                          # [batch, pos, head, d_head] of layer 1
        >>> hook = type("HookPoint", (), {"name": "blocks.1.attn.hook_z"})()
        >>> ablate(z, hook=hook)[0, 0, :, 0].tolist()          # as a TransformerLens hook: heads 0 and 2 zeroed
        [0.0, 1.0, 0.0, 1.0]
    """
    return ZeroAblate(heads, inplace=inplace)


class MeanAblate(Intervention):
    """Replace the chosen heads' ``z`` by reference means. Build with :func:`mean_ablate`."""

    sites = ("z",)
    fields = ("heads", "means", "inplace")
    defaults = {"inplace": False}

    def __init__(
        self,
        heads: HeadsLike,
        means: Float[torch.Tensor, "layer head d_head"] | Float[torch.Tensor, "layer pos head d_head"],
        inplace: bool = False,
    ) -> None:
        self._set(heads=coerce(heads, "mean_ablate"), inplace=bool(inplace))
        if not isinstance(means, torch.Tensor) or not means.is_floating_point() or means.ndim not in (3, 4):
            raise fail(
                f"mean_ablate got means {describe(means)}",
                "a float tensor [n_layers, n_heads, d_head] (position-pooled) or [n_layers, pos, n_heads, d_head]",
                "compute them with headkit.compute_means(model, reference_ids)",
            )
        require_data(means, "mean_ablate means")
        if not torch.isfinite(means).all():
            raise fail(
                f"mean_ablate got means {describe(means)} containing NaN or inf",
                "finite means",
                "recompute the means over a reference set without padding-only positions "
                "(pass attention_mask to compute_means)",
            )
        self._set(means=means.detach())

    @property
    def per_position(self) -> bool:
        """Whether the means are per position ``[layer, pos, head, d_head]``."""
        return self.means.ndim == 4

    def validate(self, shape: ModelShape) -> None:
        Intervention.validate(self, shape)  # explicit: code shipped to NDIF by source has no __class__ cell
        m = self.means
        head_dims = (m.shape[0], m.shape[-2], m.shape[-1])
        if head_dims != (shape.n_layers, shape.n_heads, shape.d_head):
            layout = "[n_layers, pos, n_heads, d_head]" if self.per_position else "[n_layers, n_heads, d_head]"
            want = (
                f"[{shape.n_layers}, pos, {shape.n_heads}, {shape.d_head}]"
                if self.per_position
                else f"[{shape.n_layers}, {shape.n_heads}, {shape.d_head}]"
            )
            raise fail(
                f"{self!r} has means of shape {list(m.shape)} for a model with {shape.n_layers} layers, "
                f"{shape.n_heads} query heads of size {shape.d_head}",
                f"means {layout} = {want}",
                "compute the means on this model with headkit.compute_means(model, reference_ids)",
            )

    def edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        idx = self.heads.in_layer(layer)
        self._check(site, activation, where, idx)
        if not idx:
            return activation
        means = self.means[layer].to(device=activation.device, dtype=activation.dtype)
        if self.per_position:
            if means.shape[0] != activation.shape[1]:
                raise fail(
                    f"{self!r} at {where!r} got {activation.shape[1]} positions, but its per-position means "
                    f"cover {means.shape[0]}",
                    "inputs as long as the reference set (per-position means)",
                    "pad or truncate the inputs to that length, or use position-pooled means "
                    "(compute_means(..., per_position=False)), which also work during cached generation",
                )
            sel = means[:, list(idx)]  # [pos, k, d]
        else:
            sel = means[list(idx)][None]  # [1, k, d]
        sel = sel.expand(activation.shape[0], activation.shape[1], len(idx), activation.shape[3])
        index = torch.tensor(idx, device=activation.device)
        if self.inplace:
            return activation.index_copy_(2, index, sel)
        return activation.index_copy(2, index, sel)


def mean_ablate(
    heads: HeadsLike,
    means: Float[torch.Tensor, "layer head d_head"] | Float[torch.Tensor, "layer pos head d_head"],
    *,
    inplace: bool = False,
) -> MeanAblate:
    """Mean-ablate heads: replace their output ``z`` by its mean over a reference set.

    ``means`` is ``[n_layers, n_heads, d_head]`` (averaged over positions) or ``[n_layers, pos, n_heads,
    d_head]`` (one mean per position; inputs must then have that many positions). Get it from
    :func:`compute_means`. Only the chosen heads' means are used.

    Example:
        >>> import torch, headkit as hk
        >>> means = torch.zeros(2, 4, 16)          # normally: hk.compute_means(model, reference_ids)
        >>> hk.mean_ablate("L1H3", means)
        MeanAblate(heads='L1H3', means=f32[2, 4, 16])
    """
    return MeanAblate(heads, means, inplace=inplace)


class Gate(Intervention):
    """Scale each head's ``z`` by a value, per layer and head or per batch row. Build with :func:`gate`."""

    sites = ("z",)
    fields = ("values", "inplace")
    defaults = {"inplace": False}

    def __init__(
        self, values: Float[torch.Tensor, "layer head"] | Float[torch.Tensor, "batch layer head"], inplace: bool = False
    ) -> None:
        v = values
        if not isinstance(v, torch.Tensor) or v.ndim not in (2, 3):
            raise fail(
                f"gate got values {describe(v)}",
                "a float tensor [n_layers, n_heads], or [batch, n_layers, n_heads] for one gate per batch row",
                "build it with e.g. torch.ones(n_layers, n_heads)",
            )
        if not v.is_floating_point():
            raise fail(
                f"gate got values {describe(v)} of a non-float dtype",
                "a floating-point tensor (any float dtype; gradients flow to it)",
                "convert with `values.float()`",
            )
        require_data(v, "gate values")
        if not bool(torch.isfinite(v.detach()).all()):
            raise fail(
                f"gate got values {describe(v)} containing NaN or inf",
                "finite gate values (1 keeps a head, 0 ablates it)",
                "check where the values came from (a diverged fit?); torch.nan_to_num or torch.clamp them",
            )
        self._set(values=values, inplace=bool(inplace))

    @property
    def heads(self) -> Heads:
        """Every head the gate covers (it multiplies all of them)."""
        return Heads.all(self.values.shape[-2], self.values.shape[-1])

    @property
    def per_row(self) -> bool:
        """Whether each batch row has its own gate (values ``[batch, layer, head]``)."""
        return self.values.ndim == 3

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return tuple(range(n_layers))

    def acts_on(self, layer: int) -> bool:
        return True  # every layer; edit() names a layer beyond the values

    def validate(self, shape: ModelShape) -> None:
        if tuple(self.values.shape[-2:]) != (shape.n_layers, shape.n_heads):
            lead = "[batch, " if self.per_row else "["
            raise fail(
                f"{self!r} has values of shape {list(self.values.shape)} for a model with "
                f"{shape.n_layers} layers and {shape.n_heads} query heads",
                f"values {lead}{shape.n_layers}, {shape.n_heads}]",
                f"build the gate as torch.ones({'batch, ' if self.per_row else ''}{shape.n_layers}, {shape.n_heads})",
            )

    def edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        self._check(site, activation, where, ())
        if self.values.shape[-1] != activation.shape[2] or layer >= self.values.shape[-2]:
            raise fail(
                f"{self!r} at {where!r} got activation {describe(activation)} in layer {layer}",
                f"{self.values.shape[-2]} layers of {self.values.shape[-1]} heads, as the gate's values",
                "build the gate with the model's [n_layers, n_heads]",
            )
        g = self.values[..., layer, :].to(device=activation.device, dtype=activation.dtype)
        if self.per_row:
            if g.shape[0] != activation.shape[0]:
                raise fail(
                    f"{self!r} at {where!r} got a batch of {activation.shape[0]} rows, "
                    f"but its per-row values have {g.shape[0]}",
                    "one gate row per batch row",
                    f"pass values of shape [{activation.shape[0]}, n_layers, n_heads], or [n_layers, n_heads] "
                    "to gate every row the same",
                )
            g = g[:, None, :, None]
        else:
            g = g[None, None, :, None]
        return activation.mul_(g) if self.inplace else activation * g


def gate(
    values: Float[torch.Tensor, "layer head"] | Float[torch.Tensor, "batch layer head"], *, inplace: bool = False
) -> Gate:
    """Gate heads: multiply each head's output ``z`` by ``values[layer, head]`` (differentiable).

    ``values`` is ``[n_layers, n_heads]``, or ``[batch, n_layers, n_heads]`` to give every batch row its own
    gate (the fused Monte Carlo engine and many-seed gate fitting rely on this). 1 is the identity, 0 equals
    zero-ablation, 0.5 halves the head's contribution. Gradients flow to ``values``.

    Example:
        >>> import torch, headkit as hk
        >>> g = torch.nn.Parameter(torch.ones(2, 4))
        >>> hk.gate(g)
        Gate(values=f32[2, 4])
    """
    return Gate(values, inplace=inplace)


# ------------------------------------------------------------------------------------------------- attention
class MaskAttention(Intervention):
    """Set chosen keys to -inf before softmax in chosen heads. Build with :func:`mask_attention`."""

    sites = ("scores", "pattern")
    fields = ("heads", "keys", "queries")
    defaults = {"queries": None}

    def __init__(self, heads: HeadsLike, keys: PositionSpec, queries: PositionSpec | None = None) -> None:
        self._set(
            heads=coerce(heads, "mask_attention"),
            keys=position_spec(keys, "keys"),
            queries=None if queries is None else position_spec(queries, "queries"),
        )

    def blocked(
        self,
        layer: int,
        n_heads: int,
        batch: int,
        q_len: int,
        k_len: int,
        device: torch.device,
        where: str,
        k_start: int = 0,
    ) -> Bool[torch.Tensor, "batch head query key"]:
        """The requested (head, query, key) cells to block in ``layer``, before the causal mask is considered.

        The key axis holds absolute positions ``k_start ... k_start + k_len - 1`` (``k_start > 0`` when a
        sliding-window cache keeps only the latest keys); query rows are the last ``q_len`` of them (cached
        decoding has q_len < k_len). The batch axis is 1 when the same cells are blocked in every row.
        """
        head_sel = torch.zeros(n_heads, dtype=torch.bool, device=device)
        head_sel[list(self.heads.in_layer(layer))] = True
        total = k_start + k_len
        keys = position_mask(self.keys, "keys", total, q_len, batch, device, self, where)[:, k_start:]  # [b, k]
        if self.queries is None:
            queries = torch.ones(1, q_len, dtype=torch.bool, device=device)
        else:
            queries = position_mask(self.queries, "queries", total, q_len, batch, device, self, where)[:, total - q_len :]
        return head_sel[None, :, None, None] & queries[:, None, :, None] & keys[:, None, None, :]

    def mask_scores(
        self, layer: int, scores: Float[torch.Tensor, "batch head query key"], where: str, k_start: int = 0
    ) -> tuple[Float[torch.Tensor, "batch head query key"], Bool[torch.Tensor, "batch head query"]]:
        """Write -inf into the blocked, causally allowed cells; return the new scores and the dead rows.

        A cell is allowed when its score is above ``finfo.min / 2`` (causal, sliding-window and padding masks
        hold ``finfo.min`` or -inf). A *dead* row is a query whose every allowed key is blocked: it is left
        untouched here (so no NaN and no attention to future tokens can arise) and the head's output for
        that row is zeroed after softmax.
        """
        self._check("scores", scores, where, self.heads.in_layer(layer))
        b, h, q, k = scores.shape
        blocked = self.blocked(layer, h, b, q, k, scores.device, where, k_start)
        allowed = scores > torch.finfo(scores.dtype).min / 2
        hit = blocked & allowed
        dead = allowed.any(-1) & ~(allowed & ~hit).any(-1)
        return scores.masked_fill(hit & ~dead[..., None], float("-inf")), dead

    def edit(self, site: Site, layer: int, activation: torch.Tensor, where: str, k_start: int = 0) -> torch.Tensor:
        if not self.heads.in_layer(layer):
            return activation
        if site == "scores":
            return self.mask_scores(layer, activation, where, k_start)[0]
        return self._zero_dead_rows(layer, activation, where, k_start)

    def _zero_dead_rows(
        self, layer: int, pattern: torch.Tensor, where: str, k_start: int = 0, nan_rows: bool = False
    ) -> torch.Tensor:
        """Zero the pattern rows whose attention went only to blocked keys (and, with ``nan_rows``, all-NaN rows).

        After mask_scores the first are exactly the dead rows (a live row puts all its mass on unblocked
        keys), so no state passes between hooks. An all-NaN row in the mask's heads and queries is one a plain
        scores hook blocked entirely on a bridge whose causal cells hold ``finfo.min`` (see :meth:`hook_edit`).
        """
        self._check("pattern", pattern, where, self.heads.in_layer(layer))
        b, h, q, k = pattern.shape
        blocked = self.blocked(layer, h, b, q, k, pattern.device, where, k_start)
        attended = pattern > 0
        dead = attended.any(-1) & ~(attended & ~blocked).any(-1)
        if nan_rows:
            dead = dead | (pattern.isnan().all(-1) & blocked.any(-1))
        return pattern.masked_fill(dead[..., None], 0)

    def hook_edit(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        """As a plain ``hook_attn_scores`` hook, a query left with no key gets -inf on every key.

        That is what a hand-written -inf hook does: TransformerLens 2.x/3.x ``HookedTransformer`` and
        bridges in compatibility mode turn such a row into zero attention; a default-mode bridge (whose
        causal mask holds ``finfo.min``) gives NaN there unless the mask is also attached at
        ``hook_pattern``, where :meth:`edit` zeroes the row. (Through an adapter the row is left unmasked
        and zeroed after softmax instead, so no NaN arises, also in gradients.)
        """
        if not self.heads.in_layer(layer):
            return activation
        if site == "scores":
            scores, dead = self.mask_scores(layer, activation, where)
            return scores.masked_fill(dead[..., None], float("-inf"))
        return self._zero_dead_rows(layer, activation, where, nan_rows=True)


def apply_masks(
    masks: Sequence[MaskAttention],
    layer: int,
    scores: Float[torch.Tensor, "batch head query key"],
    where: str,
    k_start: int = 0,
) -> tuple[Float[torch.Tensor, "batch head query key"], Bool[torch.Tensor, "batch head query"]]:
    """Apply several masks to one layer's scores in turn; return the scores and the union of their dead rows.

    Each mask sees the cells the earlier ones removed as disallowed, so a row becomes dead when the masks
    together leave it no key. ``k_start`` is the absolute position of the first key (see ``blocked``). Adapters that see scores (or an additive mask) and the outputs in one place
    use this; the head's output for a dead row is then zeroed.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.core.interventions import apply_masks
        >>> scores = torch.zeros(1, 1, 2, 2).masked_fill(torch.ones(2, 2, dtype=torch.bool).triu(1), -1e38)
        >>> masks = [hk.mask_attention("L0H0", keys=[(0, 1)]), hk.mask_attention("L0H0", keys=[(1, 2)])]
        >>> apply_masks(masks, 0, scores, "example")[1].tolist()
        [[[True, True]]]
    """
    dead = torch.zeros(scores.shape[:-1], dtype=torch.bool, device=scores.device)
    for iv in masks:
        scores, rows = iv.mask_scores(layer, scores, where, k_start)
        dead = dead | rows
    return scores, dead


def mask_attention(heads: HeadsLike, keys: PositionSpec, queries: PositionSpec | None = None) -> MaskAttention:
    """Mask attention before softmax: chosen heads give exactly zero weight to chosen key tokens.

    ``keys`` (and optional ``queries``, default all) are token positions: a list of half-open ranges
    ``[(start, end), ...]``, a bool tensor ``[pos]``, or a bool tensor ``[batch, pos]`` for a different mask
    in every batch row. The scores of those cells become ``-inf`` before softmax, so the other keys are
    renormalised exactly. A query row whose every allowed key is masked gets zero attention, so the head
    contributes nothing at that position (never NaN, never attention to future tokens).

    Example:
        >>> import headkit as hk
        >>> hk.mask_attention("L2H1 L3H0", keys=[(4, 9)])
        MaskAttention(heads='L2H1 L3H0', keys=[(4, 9)])
    """
    return MaskAttention(heads, keys, queries)


class CaptureAttention(Intervention):
    """Read the chosen heads' attention patterns (optionally pooled). Build with :func:`capture_attention`.

    A value like the other interventions: what it reads goes into the Captures of the run it is applied
    in (``got[cap].pattern(layer, head)``), never into the capture itself.
    """

    sites = ("pattern",)
    reads_only = True
    fields = ("heads", "pool")
    defaults = {"pool": None}

    def __init__(self, heads: HeadsLike, pool: Spans | None = None) -> None:
        self._set(heads=coerce(heads, "capture_attention"), pool=None if pool is None else spans(pool, "pool"))

    def show(self, name: str, value: Any) -> str:
        if name == "pool":
            return f"{len(value)} spans"
        return show_value(value)

    def read(
        self, site: Site, layer: int, activation: torch.Tensor, where: str
    ) -> Float[torch.Tensor, "batch heads query key"] | None:
        """The chosen heads of one layer's pattern, detached: ``[batch, n_chosen, query, key]`` (or pooled)."""
        idx = self.heads.in_layer(layer)
        self._check(site, activation, where, idx)
        if not idx:
            return None
        if self.pool is not None:
            q, k = activation.shape[-2:]
            if q != k:
                raise fail(
                    f"{self!r} at {where!r} got {q} query rows for {k} keys (a cached decoding step)",
                    "a full forward pass when pooling to sentences",
                    "capture during a plain forward, or drop pool= to keep token-level rows",
                )
            return self.pool_rows(layer, activation, 0, where)
        return activation.detach()[:, list(idx)]  # [batch, k, query, key]

    def pool_rows(
        self, layer: int, rows: Float[torch.Tensor, "batch head rows key"], start: int, where: str
    ) -> Float[torch.Tensor, "batch heads sentence sentence"] | None:
        """The pooled contribution of query rows ``start ...`` of one layer's pattern (all heads given).

        Sentence pooling is linear in the query rows, so an adapter may hand the pattern over in chunks of
        rows and add the parts up (``captures.put`` the chunk at ``start = 0``, ``captures.add`` the others),
        never holding a whole layer's pattern.
        """
        idx = self.heads.in_layer(layer)
        if not idx:
            return None
        chunk = rows.detach()[:, list(idx)].float()  # [batch, k, rows, key]
        k_len = chunk.shape[-1]
        member = membership(self.pool, k_len, chunk.device, self, where)  # [sentences, pos]
        return torch.einsum("sq,bhqk,tk->bhst", member[:, start : start + chunk.shape[-2]], chunk, member)


def capture_attention(heads: HeadsLike, pool: Spans | None = None) -> CaptureAttention:
    """Capture the attention patterns of chosen heads only (detached), as the forward pass runs.

    ``pool`` is a list of half-open token spans ``[(start, end), ...]`` (e.g. sentences). With it, each
    head's ``[query, key]`` pattern is reduced on the fly to the ``[sentence, sentence]`` matrix of block
    means ``A[i, j] = mean(pattern[span_i, span_j])`` (causal zeros included), so long texts never
    materialise full patterns. The capture is a value: what it reads comes back in the run's Captures,
    ``got[cap].pattern(layer, head)`` or ``got[cap].patterns``, where ``got`` is what an adapter's
    ``applied(model, cap)`` yields, ``hk_nn.apply`` returns or ``backend.run(...).captures`` holds.

    Example:
        >>> import headkit as hk
        >>> cap = hk.capture_attention("L0H1 L1H0", pool=[(0, 5), (5, 12)])
        >>> cap
        CaptureAttention(heads='L0H1 L1H0', pool=2 spans)
        >>> cap == hk.capture_attention("L1H0 L0H1", pool=[(0, 5), (5, 12)])  # a value: equal fields, equal
        True
        >>> import torch
        >>> model, tok = hk.models.tiny("gpt2")
        >>> logits, got = hk.get_backend(model).run(torch.arange(1, 13)[None], cap)
        >>> got[cap].pattern(1, 0).shape                       # [batch, sentence, sentence]
        torch.Size([1, 2, 2])
    """
    return CaptureAttention(heads, pool)


# ------------------------------------------------------------------------------------------------- means
class SumZ(Intervention):
    """Reads every layer's ``z`` and records its weighted sum over the batch (behind :func:`compute_means`).

    ``weights [batch, pos]`` are 1 for real tokens and 0 for padding; each layer records ``[head, d_head]``
    (or ``[pos, head, d_head]`` with ``per_position``) in float64, in the run's Captures.
    """

    sites = ("z",)
    reads_only = True
    fields = ("weights", "per_position")

    def __init__(self, weights: torch.Tensor, per_position: bool) -> None:
        self._set(weights=weights, per_position=bool(per_position))

    def layers(self, n_layers: int) -> tuple[int, ...]:
        return tuple(range(n_layers))

    def acts_on(self, layer: int) -> bool:
        return True

    def validate(self, shape: ModelShape) -> None:
        pass

    def read(self, site: Site, layer: int, activation: torch.Tensor, where: str) -> torch.Tensor:
        z = activation.detach().double()
        w = self.weights.to(device=z.device, dtype=z.dtype)
        return torch.einsum("bp,bphd->phd" if self.per_position else "bp,bphd->hd", w, z)


def check_interventions(interventions: Sequence[object], owner: str) -> None:
    """HeadkitError unless every item is an intervention (adapters call this first)."""
    for i, iv in enumerate(interventions):
        if not isinstance(iv, Intervention):
            raise fail(
                f"{owner} got {describe(iv) if isinstance(iv, torch.Tensor) else repr(iv)[:80]} as intervention {i}",
                "headkit interventions (zero_ablate, mean_ablate, gate, mask_attention, capture_attention)",
                "build them with the headkit factories, e.g. hk.zero_ablate('L5H1')",
            )
