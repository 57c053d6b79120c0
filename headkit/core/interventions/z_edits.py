"""Edits of each head's output ``z`` (before W_O): zero-ablate, mean-ablate, gate; and the z reader behind
:func:`headkit.compute_means`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch

from headkit.core.errors import describe, fail
from headkit.core.heads import Heads, coerce
from headkit.core.positions import require_data

if TYPE_CHECKING:  # jaxtyping is for readers and type checkers; nothing here needs it at run time
    from jaxtyping import Bool, Float

    from headkit.core.heads import HeadsLike
    from headkit.core.sites import ModelShape, Site

    Spans = Sequence[tuple[int, int]]
    PositionSpec = Union[Spans, Bool[torch.Tensor, " pos"], Bool[torch.Tensor, "batch pos"]]

from headkit.core.interventions.base import Intervention

__all__ = ["ZeroAblate", "MeanAblate", "Gate", "SumZ", "zero_ablate", "mean_ablate", "gate"]


class ZeroAblate(Intervention):
    """Zero the chosen heads' outputs (``z``) before the output projection. Build with :func:`zero_ablate`."""

    sites = ("z",)
    heads: Heads
    inplace: bool
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
    heads: Heads
    means: torch.Tensor
    inplace: bool
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
    values: torch.Tensor
    inplace: bool
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


class SumZ(Intervention):
    """Reads every layer's ``z`` and records its weighted sum over the batch (behind :func:`compute_means`).

    ``weights [batch, pos]`` are 1 for real tokens and 0 for padding; each layer records ``[head, d_head]``
    (or ``[pos, head, d_head]`` with ``per_position``) in float64, in the run's Captures.
    """

    sites = ("z",)
    reads_only = True
    weights: torch.Tensor
    per_position: bool

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
