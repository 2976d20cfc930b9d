"""Exclusion contours in a two-dimensional mass plane: observed and expected CLs = level,
with the +-1 sigma band of the expected contour, interpolated on the signal points
(matplotlib's triangulation)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ..errors import DiffhepError
from .style import new_figure, save_figure, styled

__all__ = ["parse_points", "pattern_fields", "plot_exclusion", "point_fields", "select_points"]


def pattern_fields(pattern: str) -> list[str]:
    """The fields of a mass pattern (``sbottom_{m1}_{m2}_{m3}``: m1, m2, m3), checked: each
    named once, each a name (a letter first: ``{0}`` is none)."""
    fields = re.findall(r"\{(\w+)\}", pattern)
    bad = [f for f in fields if not f.isidentifier()]
    if bad:
        raise DiffhepError(
            f"the pattern {pattern!r} has the field {bad[0]!r}, not a name",
            where="--mass-pattern",
            fix="name each field with a letter first, e.g. sbottom_{m1}_{m2}_{m3}",
        )
    twice = sorted({f for f in fields if fields.count(f) > 1})
    if twice:
        raise DiffhepError(
            f"the pattern {pattern!r} names {', '.join(twice)} more than once",
            where="--mass-pattern",
            fix="give each field its own name, e.g. sbottom_{m1}_{m2}_{m3}",
        )
    return fields


def _fields(pattern: str, x: str, y: str) -> list[str]:
    """The fields of ``pattern`` (:func:`pattern_fields`), checked to hold ``x`` and ``y``."""
    fields = pattern_fields(pattern)
    for axis, field in (("--x", x), ("--y", y)):
        if field not in fields:
            raise DiffhepError(
                f"{field!r} is not a field of the pattern {pattern!r}",
                where=axis,
                fix=f"use one of {', '.join(fields) or '(none: write fields as {m1})'}",
            )
    return fields


def _regex(pattern: str) -> str:
    return "".join(
        f"(?P<{part[1:-1]}>[-+0-9.eE]+)" if re.fullmatch(r"\{\w+\}", part) else re.escape(part)
        for part in re.split(r"(\{\w+\})", pattern)
    )


def point_fields(names, pattern: str, *, text: bool = False) -> list[dict | None]:
    """The fields of ``pattern`` read from each point name (``None`` where it does not
    match): ``sbottom_1300_850_60`` by ``sbottom_{m1}_{m2}_{m3}`` gives
    ``{'m1': 1300.0, 'm2': 850.0, 'm3': 60.0}`` (with ``text``, the matched text: '1300')."""
    pattern_fields(pattern)
    regex = _regex(pattern)
    out: list[dict | None] = []
    for name in names:
        m = re.fullmatch(regex, name)
        try:
            out.append(None if m is None else
                       {k: v if text else float(v) for k, v in m.groupdict().items()})  # fmt: skip
        except ValueError:  # e.g. '1e' or '.-': not a number
            out.append(None)
    return out


def select_points(names, pattern: str, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The points of one mass plane: the indices of the names that ``pattern`` matches and
    their ``(x, y)``, ``(n, 2)``. A literal in the pattern selects a slice
    (``sbottom_{m1}_{m2}_60``); a field other than ``x`` and ``y`` that varies among the
    matching points is an error (a contour over it would mix the planes: RegionA's m3 takes
    eleven values), as is a pattern no name matches. Checked before any point is computed.
    """
    fields = _fields(pattern, x, y)
    values = point_fields(names, pattern)
    index = np.asarray([i for i, v in enumerate(values) if v is not None], dtype=int)
    if index.size == 0:
        shown = ", ".join(repr(n) for n in list(names)[:3])
        raise DiffhepError(
            f"no point name matches the pattern {pattern!r} (names: {shown}, ...)",
            where="--mass-pattern",
            fix="write the point names with {field} for each number, e.g. sbottom_{m1}_{m2}_60",
        )
    for field in fields:
        if field in (x, y):
            continue
        counts = Counter(values[i][field] for i in index)
        if len(counts) > 1:
            seen = sorted(counts)
            listed = ", ".join(f"{v:g}" for v in seen[:6]) + (", ..." if len(seen) > 6 else "")
            common = counts.most_common(1)[0][0]  # the largest slice
            example = pattern.replace("{" + field + "}", f"{common:g}", 1)
            raise DiffhepError(
                f"the field {field!r} takes {len(seen)} values among the points ({listed}): "
                f"one contour in ({x}, {y}) would mix them",
                where="--mass-pattern",
                fix=f"draw one slice by writing its value in the pattern, e.g. {example!r}",
            )
    coords = [(values[i][x], values[i][y]) for i in index]
    return index, np.asarray(coords, dtype=float).reshape(-1, 2)


def parse_points(names, pattern: str, x: str, y: str) -> np.ndarray:
    """``(n, 2)`` coordinates read from point names by a pattern such as
    ``sbottom_{m1}_{m2}_{m3}`` (fields are numbers), ``x`` and ``y`` naming two fields;
    every name must match."""
    _fields(pattern, x, y)
    out = []
    for name, v in zip(names, point_fields(names, pattern), strict=True):
        if v is None:
            raise DiffhepError(
                f"point {name!r} does not match the pattern {pattern!r}",
                where="--mass-pattern",
                fix="write the point names with {field} for each number",
            )
        out.append((v[x], v[y]))
    return np.asarray(out, dtype=float).reshape(-1, 2)


@styled
def plot_exclusion(coords, cls_obs, cls_exp, path, *, level=0.05, xlabel="m1", ylabel="m2"):
    """Observed (solid) and expected (dashed) contours at ``level`` with the expected
    +-1 sigma band (filled), and the points.

    Args:
        coords: ``(n, 2)`` point coordinates (at least 3 points, not all on a line).
        cls_obs: Observed CLs per point.
        cls_exp: ``(n, 5)`` expected CLs per point, in ``pyhf cls`` order (-2 sigma first).
        path: Output file.
    """
    xy = np.asarray(coords, float)
    if len(xy) < 3:
        raise DiffhepError(
            f"{len(xy)} converged point(s): a contour needs at least 3", fix="give more points"
        )
    distinct = np.unique(xy, axis=0)
    if len(distinct) < 3 or np.linalg.matrix_rank(distinct - distinct.mean(axis=0)) < 2:
        raise DiffhepError(
            f"the {len(xy)} converged point(s) lie on a line ({len(distinct)} distinct "
            f"(x, y)): a contour needs points spread over both axes",
            fix="give points with different values on both axes (or other --x/--y fields)",
        )
    import matplotlib.tri as mtri

    tri = mtri.Triangulation(xy[:, 0], xy[:, 1])
    log = lambda v: np.log(np.clip(np.asarray(v, float), 1e-300, None) / level)  # noqa: E731
    exp = np.asarray(cls_exp, float)
    fig = new_figure((6.0, 4.5))
    ax = fig.add_subplot()
    lo, hi = log(exp[:, 1]), log(exp[:, 3])
    band = np.maximum(np.minimum(lo, hi), -np.maximum(lo, hi))  # < 0 between the contours
    ax.tricontourf(tri, band, levels=[band.min() - 1.0, 0.0], colors=["gold"], alpha=0.6)
    ax.tricontour(tri, log(exp[:, 2]), levels=[0.0], colors="k", linestyles="--")
    ax.tricontour(tri, log(cls_obs), levels=[0.0], colors="r", linestyles="-")
    ax.plot(xy[:, 0], xy[:, 1], ".", color="0.6", ms=3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Line2D([], [], color="r", label=f"observed (CLs = {level:g})"),
            Line2D([], [], color="k", ls="--", label="expected"),
            Patch(color="gold", alpha=0.6, label=r"expected $\pm 1\sigma$"),
        ],
        loc="best",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    save_figure(fig, path)
