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


class StaysLocal:
    """A marker in the namespace of a module that must not travel to a remote (NDIF) server.

    nnsight ships a module that a remote trace block names by value, with everything in it. headkit's
    package and its client-side modules (models, file caches, the command line, the transformers and
    TransformerLens adapters) would drag imports an NDIF server refuses, so pickling this marker, which
    happens exactly then, stops the request on the client with the fix instead.

    Example:
        >>> import pickle
        >>> from headkit.core.errors import StaysLocal
        >>> try:
        ...     pickle.dumps(StaysLocal("headkit"))
        ... except HeadkitError as e:
        ...     print(str(e).split(",")[0])
        a remote trace block refers to headkit
    """

    def __init__(self, module: str) -> None:
        self.module = module

    def __reduce__(self) -> tuple:
        raise fail(
            f"a remote trace block refers to {self.module}, which cannot travel to an NDIF server",
            "a block that names only the interventions and headkit.adapters.nnsight",
            "build the interventions before `with model.trace(..., remote=True):` (e.g. "
            "ablate = hk.zero_ablate('L5H1')) and inside it call only hk_nn.apply(model, ablate)",
        )
