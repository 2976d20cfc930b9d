"""What the studies share: the shipped config a study starts from, medians of per-seed
results, and the "Reproduce with" sentence that heads a study's markdown."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["median", "reproduce", "shipped_config"]


def shipped_config(name: str) -> Path:
    """The config ``src/diffhep/data/<name>.yaml`` shipped with the package."""
    return Path(str(resources.files("diffhep") / "data" / f"{name}.yaml"))


def median(rows, *keys) -> float:
    """The median over ``rows`` of ``row[keys[0]][keys[1]]...``.

    Example:
        >>> median([{"a": {"z": 1.0}}, {"a": {"z": 3.0}}, {"a": {"z": 2.5}}], "a", "z")
        2.5
    """
    vals = []
    for r in rows:
        for k in keys:
            r = r[k]
        vals.append(r)
    return float(np.median(vals))


def reproduce(study: str, config: str, seeds, epochs, overrides, runs_dir=None, per="") -> str:
    """The sentence that tells how to run a study again (its config, seeds x epochs ``per``
    run, the overrides given, and where finished runs are reused from).

    Example:
        >>> reproduce("cuts", "cuts_2d", 3, 20, ["seed=1"])
        'Reproduce with `diffhep study cuts` (config `src/diffhep/data/cuts_2d.yaml`; 3 seeds x 20 epochs; overrides `seed=1`; finished runs under `runs/cuts` are reused).'
    """  # noqa: E501
    return (
        f"Reproduce with `diffhep study {study}` (config `src/diffhep/data/{config}.yaml`; "
        f"{seeds} seeds x {epochs} epochs{per}"
        + (f"; overrides `{' '.join(overrides)}`" if overrides else "")
        + f"; finished runs under `{runs_dir or f'runs/{study}'}` are reused)."
    )
