"""Configuration objects: an analysis takes one checked config (a frozen dataclass) plus keyword changes.

``fit(model, data, steps=100)`` means ``fit(model, data, recipe=Recipe(steps=100))``: the changes replace
fields of the given (or default) config, which checks itself when built.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

from headkit.core.errors import fail

__all__ = ["configure"]

C = TypeVar("C")


def configure(kind: type[C], given: C | None, changes: dict[str, Any], owner: str) -> C:
    """``given`` (or ``kind()``) with ``changes`` applied, checked; an unknown name is a HeadkitError.

    Example:
        >>> from dataclasses import dataclass
        >>> from headkit.config import configure
        >>> @dataclass(frozen=True)
        ... class Config:
        ...     steps: int = 10
        >>> configure(Config, None, {"steps": 3}, "example")
        Config(steps=3)
        >>> try:
        ...     configure(Config, None, {"stpes": 3}, "example")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        example got unknown argument(s) ['stpes']
    """
    base = kind() if given is None else given
    if not isinstance(base, kind):
        raise fail(f"{owner} got {given!r:.60}", f"a {kind.__name__}", f"pass a {kind.__name__}(...)")
    names = [f.name for f in fields(kind)]  # type: ignore[arg-type]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise fail(f"{owner} got unknown argument(s) {unknown}", f"fields of {kind.__name__}: {names}",
                   "check the spelling")
    return replace(base, **changes) if changes else base  # type: ignore[type-var]
