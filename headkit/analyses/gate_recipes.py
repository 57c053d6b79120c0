"""How causal head gating optimises: the paper's recipe and the contrastive one, as checked config objects.

    Recipe              G (steps, lr), then G+ and G- together (reg_steps, reg_lr); batch, lam, clips
    ContrastiveRecipe   one stage retaining one variant and forgetting another (max_diff clamps the gap)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from headkit.core.errors import fail

__all__ = ["Recipe", "ContrastiveRecipe"]


@dataclass(frozen=True)
class Recipe:
    """How :func:`fit` optimises: the paper's recipe by default (appendix 6.2), checked when built.

    ``steps`` Adam steps for ``G`` (lr ``lr[0] -> lr[1]``, linear), then ``reg_steps`` for ``G+`` and ``G-``
    together (``reg_lr``), ``batch_size`` examples per step and seed, regulariser ``lam * mean(clamp(logit,
    -clip, clip))``, gradient norm clipped at ``grad_norm`` per fit.

    Example:
        >>> from headkit.analyses.gate_recipes import Recipe
        >>> Recipe(steps=20).steps, Recipe().lam
        (20, 0.1)
        >>> try:
        ...     Recipe(batch_size=0)
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        fit got batch_size=0
    """

    steps: int = 500
    reg_steps: int = 500
    batch_size: int = 64
    lam: float = 0.1
    lr: tuple[float, float] = (0.1, 0.01)
    reg_lr: tuple[float, float] = (0.5, 0.1)
    clip: float = 4.0
    grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_recipe("fit", self)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not self.lam > 0:
            raise fail(
                f"fit got lam={self.lam!r}",
                "the regulariser's magnitude, a positive number: G+ is fitted with +lam (gates pushed to 1) and "
                "G- with -lam (pushed to 0)",
                "pass lam=0.1 (the paper's value); the sign of each stage is set for you",
            )


@dataclass(frozen=True)
class ContrastiveRecipe:
    """How :func:`fit_contrastive` optimises (one stage): the authors' recipe by default, checked when built.

    Example:
        >>> from headkit.analyses.gate_recipes import ContrastiveRecipe
        >>> ContrastiveRecipe().max_diff, ContrastiveRecipe(lam=0.0).lam
        (5.0, 0.0)
    """

    steps: int = 500
    batch_size: int = 64
    lam: float = 0.1
    lr: tuple[float, float] = (0.1, 0.01)
    clip: float = 4.0
    max_diff: float = 5.0
    grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_recipe("fit_contrastive", self)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise fail(
                f"fit_contrastive got lam={self.lam!r}",
                "lam >= 0: the regulariser pushes gates towards 1, so only heads the forgetting needs turn off "
                "(the sign of the authors' code and equation 2)",
                "pass lam=0.1",
            )
        if isinstance(self.max_diff, bool) or not isinstance(self.max_diff, (int, float)) or not self.max_diff > 0:
            raise fail(f"fit_contrastive got max_diff={self.max_diff!r}", "a positive clamp in nats", "pass max_diff=5.0")


def _check_recipe(owner: str, recipe: Any) -> None:
    for name in ("steps", "reg_steps"):
        v = getattr(recipe, name, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise fail(f"{owner} got {name}={v!r}", "a whole number of optimiser steps, >= 0", f"pass {name}=500")
    b = recipe.batch_size
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
        raise fail(f"{owner} got batch_size={b!r}", "a positive number of examples per step", "pass batch_size=64")
    for name in ("lr", "reg_lr"):
        v = getattr(recipe, name, recipe.lr)
        if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)):
            raise fail(f"{owner} got {name}={v!r}", "(start, end) learning rates, both positive", "pass e.g. (0.1, 0.01)")
    for name in ("clip", "grad_norm"):
        v = getattr(recipe, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
            raise fail(f"{owner} got {name}={v!r}", "a positive finite number", f"pass the paper's {name} (4.0 / 1.0)")
