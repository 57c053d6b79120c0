"""The per-layer plan: interventions validated against a model and grouped by (site, layer) in forward order."""

from __future__ import annotations

from collections.abc import Sequence

from headkit.core.interventions import Intervention, check_interventions
from headkit.core.sites import ModelShape, Site

__all__ = ["plan"]

_SITE_ORDER: dict[Site, int] = {"z": 0, "scores": 1, "pattern": 2}


def plan(
    interventions: Sequence[object], shape: ModelShape, owner: str
) -> dict[tuple[Site, int], list[Intervention]]:
    """Validate interventions against a model and group them by (site, layer), in forward order.

    At each site the edits keep the order they were given in, and reads (captures) come after every edit,
    so a capture sees the activation as the model uses it. Equal reads are placed once: they would record
    the same thing under the same key of the run's Captures.

    Example:
        >>> import headkit as hk
        >>> from headkit.core.sites import ModelShape
        >>> p = plan([hk.zero_ablate("L1H0")], ModelShape(2, 4, 16, 4), "example")
        >>> list(p)
        [('z', 1)]
    """
    check_interventions(interventions, owner)
    ivs: list[Intervention] = []
    readers: set[Intervention] = set()
    for iv in interventions:
        iv.validate(shape)  # type: ignore[attr-defined]
        if iv.reads_only:  # type: ignore[attr-defined]
            if iv in readers:  # an equal reader records the same thing into the same key: place it once
                continue
            readers.add(iv)  # type: ignore[arg-type]
        ivs.append(iv)  # type: ignore[arg-type]
    groups: dict[tuple[Site, int], list[Intervention]] = {}
    for iv in sorted(ivs, key=lambda iv: iv.reads_only):  # stable: edits in given order, then reads
        for site in iv.sites:
            for layer in iv.layers(shape.n_layers):
                groups.setdefault((site, layer), []).append(iv)
    return dict(sorted(groups.items(), key=lambda item: (item[0][1], _SITE_ORDER[item[0][0]])))
