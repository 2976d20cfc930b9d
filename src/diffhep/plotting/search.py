"""The objective of a black-box search against the number of evaluations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..writers import write_atomic
from .style import new_figure

__all__ = ["best_so_far", "plot_search_history"]


def best_so_far(values: Sequence[float], maximize: bool) -> np.ndarray:
    """The running best of ``values`` (NaN, a failed evaluation, is skipped).

    Example:
        >>> best_so_far([3.0, float("nan"), 1.0, 2.0], maximize=False).tolist()
        [3.0, 3.0, 1.0, 1.0]
    """
    v = np.asarray(values, dtype=float)
    v = np.where(np.isnan(v), -np.inf if maximize else np.inf, v)
    out = np.maximum.accumulate(v) if maximize else np.minimum.accumulate(v)
    return np.where(np.isfinite(out), out, np.nan)


def plot_search_history(
    series: Mapping[str, Sequence[float]],
    path,
    *,
    ylabel: str,
    maximize: bool,
    reference: float | None = None,
    points: bool = True,
) -> None:
    """Each evaluation (points) and the best so far (line) per method, written atomically.

    Args:
        series: ``{label: objective of evaluations 1, 2, ...}`` (NaN: a failed evaluation).
        path: The PNG file.
        ylabel: The objective's name.
        maximize: Whether larger is better.
        reference: A known optimum, drawn as a horizontal line.
        points: Whether to draw every evaluation, not only the best so far.
    """
    fig = new_figure((5.5, 4.0))
    ax = fig.subplots()
    for i, (label, values) in enumerate(series.items()):
        n = np.arange(1, len(values) + 1)
        color = f"C{i}"
        if points:
            ax.scatter(n, values, s=10, alpha=0.4, color=color)
        ax.step(n, best_so_far(values, maximize), where="post", color=color, label=label)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label="optimum (dense grid)")
    ax.set_xlabel("objective evaluations")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    fig.clear()
