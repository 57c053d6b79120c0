"""The one exception headkit raises for bad input."""

from __future__ import annotations

__all__ = ["HeadkitError"]


class HeadkitError(ValueError):
    """Bad input to headkit: the message names what was given, what was expected, and a fix.

    It subclasses ``ValueError`` so existing ``except ValueError`` code keeps working.

    Example:
        >>> import headkit as hk
        >>> try:
        ...     hk.Heads.parse("L5X1")
        ... except hk.HeadkitError as e:
        ...     print(type(e).__name__)
        HeadkitError
    """


def fail(given: str, expected: str, fix: str) -> HeadkitError:
    """Build a HeadkitError from its three parts (the message shape every error follows)."""
    return HeadkitError(f"{given}; expected {expected}. Fix: {fix}")


_SHORT_DTYPES = {
    "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
    "bool": "bool", "int64": "i64", "int32": "i32", "uint8": "u8",
}


def describe(x: object) -> str:
    """A short, tensor-free summary for messages and reprs: ``f32[2, 4, 7, 7]``, or the type's name."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        dtype = str(x.dtype).removeprefix("torch.")
        return f"{_SHORT_DTYPES.get(dtype, dtype)}[{', '.join(str(int(n)) for n in x.shape)}]"
    return f"a {type(x).__name__}"
