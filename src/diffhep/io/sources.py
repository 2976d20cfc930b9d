"""Reading event data from files: ROOT TTrees and RNTuples, parquet, HDF5, ``.npz`` and CSV,
in chunks.

:func:`iterate` streams chunks of evaluated expressions (branch names or
:class:`~diffhep.io.expressions.Expression` strings) from a list of files (globs allowed), reading
only the branches the expressions need (one reader per format, :mod:`diffhep.io.readers`).
:func:`load_sample` reads a whole sample: features, one or more weight expressions and a
filter, with the checks of
:class:`~diffhep.io.datasets.DataError`: missing file, tree or branch, non-numeric branch,
NaN/inf in features or weights (counted per file and expression), empty after the filter.
:func:`evaluate_chunk` applies the same conversions and checks to a chunk read by another
reader (e.g. a partition of ``uproot.dask``, see :mod:`diffhep.io.dask_apply`).

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.npz")
    >>> np.savez(path, met=np.array([10.0, 40.0, 70.0]), w=np.array([1.0, -1.0, 2.0]))
    >>> [c["met > 20"].tolist() for c in iterate(path, expressions=["met > 20"], step_size=2)]
    [[False, True], [True]]
    >>> x, w = load_sample(path, features=["log(met)"], weights={"w": "2 * w"}, filter="met > 20")
    >>> x.shape, w["w"].tolist()
    ((2, 1), [-2.0, 4.0])
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .expressions import Expression, ExpressionError
from .readers import FORMATS, read, to_columns, tree_kind, tree_name

__all__ = [
    "FORMATS",
    "columns_of",
    "evaluate_chunk",
    "expand",
    "iterate",
    "load_sample",
    "tree_kind",
    "tree_name",
]

#: Events per chunk by default.
DEFAULT_STEP = 100_000


def expand(files, base_dir=None) -> list[str]:
    """The files of ``files`` (a path or glob, or a list of them), sorted per pattern, each
    once; relative patterns are taken relative to ``base_dir`` (default: working directory)."""
    patterns = [files] if isinstance(files, str | Path) else list(files)
    out = []
    for p in patterns:
        p = str(p)
        full = str(Path(base_dir) / p) if base_dir is not None and not Path(p).is_absolute() else p
        found = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        if not found or not Path(found[0]).exists():
            raise DataError(
                "no such file" if not glob.has_magic(full) else "the pattern matches no file",
                file=full,
                fix="check the sample's files (relative paths start at data.base_dir or the "
                "working directory)",
            )
        out += [f for f in found if f not in out]
    return out


def _parse(expressions) -> dict:
    out = {}
    for e in expressions:
        if e not in out:
            out[e] = Expression(e)
    return out


def _chunks(files, tree, expressions, step_size, constants=None, base_dir=None):
    """``(file, first entry, {expression: values})`` per chunk."""
    if int(step_size) < 1:
        raise DataError(f"step_size must be >= 1, got {step_size}")
    parsed = _parse(expressions)
    constants = dict(constants or {})
    names = _names(parsed, constants)
    for path in expand(files, base_dir):
        start = 0
        for cols, n in read(path, tree, names, int(step_size)):
            yield path, start, _evaluate(path, parsed, {**cols, **constants}, n)
            start += n


def _names(parsed, constants=()) -> list[str]:
    """The columns to read for the parsed expressions."""
    return sorted({n for e in parsed.values() for n in e.names} - set(constants))


def columns_of(expressions: Sequence[str]) -> list[str]:
    """The columns (branches) of a file that the expressions read, sorted."""
    return _names(_parse(expressions))


def _evaluate(path, parsed, cols, n) -> dict:
    """``{expression: values}`` of one chunk (float64, or bool for logical expressions)."""
    out = {}
    for text, e in parsed.items():
        try:
            v = e.evaluate(cols, n)
        except ExpressionError as exc:
            raise DataError(exc.message, file=path, where=text, fix=exc.fix) from None
        if v.dtype.kind != "b":
            v = v.astype(np.float64)
        out[text] = v
    return out


def _check_finite(path, start, out) -> None:
    """Raise :class:`DataError` on NaN/inf values of a chunk whose first entry is ``start``."""
    for text, v in out.items():
        bad = ~np.isfinite(v) if v.dtype.kind == "f" else None
        if bad is not None and bad.any():
            first = start + int(np.argmax(bad))
            raise DataError(
                f"{int(bad.sum())} NaN/inf values of {text!r} in entries "
                f"{start}-{start + len(v) - 1} (first at entry {first})",
                file=path,
                where=text,
                fix="repair or filter these events",
            )


def evaluate_chunk(
    path,
    chunk,
    expressions: Sequence[str],
    *,
    start: int = 0,
    tree: str | None = None,
    check_finite: bool = True,
    constants: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """What :func:`iterate` yields for the entries ``start, start + 1, ...`` of the file
    ``path``, read by another reader: ``chunk`` is an awkward record array holding the
    columns the expressions need (e.g. a partition of ``uproot.dask`` or dask-awkward).

    The columns get the same checks and conversions as in :func:`iterate` (numeric type,
    missing values of nullable columns as NaN, float64 or bool results, NaN/inf with the
    entries counted from ``start``); ``tree`` only names the tree in error messages;
    ``constants`` as in :func:`iterate`.
    """
    parsed = _parse(expressions)
    constants = dict(constants or {})
    cols, n = to_columns(str(path), chunk, _names(parsed, constants), tree)
    out = _evaluate(str(path), parsed, {**cols, **constants}, n)
    if check_finite:
        _check_finite(str(path), start, out)
    return out


def iterate(
    files,
    *,
    tree: str | None = None,
    expressions: Sequence[str],
    step_size: int = DEFAULT_STEP,
    constants: Mapping[str, float] | None = None,
    base_dir=None,
    check_finite: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Chunks ``{expression: values (n,)}`` of the files, at most ``step_size`` events each.

    Args:
        files: A path or glob, or a list of them (read in sorted order).
        tree: TTree or RNTuple of ROOT files (optional when the file has one), group for HDF5.
        expressions: Branch names or expressions (:mod:`diffhep.io.expressions`).
        step_size: Events per chunk (memory stays bounded by it).
        constants: Names with fixed values (e.g. ``{"lumi": 139.0}``), not read from files.
        base_dir: Directory of relative paths (default: the working directory).
        check_finite: Raise :class:`DataError` on NaN/inf values (naming the file, the
            expression, the count and the entries).

    Yields:
        Dicts of 1-D numpy arrays (float64, or bool for logical expressions).
    """
    for path, start, out in _chunks(files, tree, expressions, step_size, constants, base_dir):
        if check_finite:
            _check_finite(path, start, out)
        yield out


def load_sample(
    files,
    *,
    features: Sequence[str],
    weights: Mapping[str, str],
    filter: str | None = None,
    tree: str | None = None,
    step_size: int = DEFAULT_STEP,
    constants: Mapping[str, float] | None = None,
    base_dir=None,
    name: str = "sample",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The features ``(n, f)`` (float64) and weights ``{key: (n,)}`` of the events passing
    ``filter`` (weights: one or several expressions, e.g. nominal and systematic variations).

    Raises:
        DataError: A missing file/tree/branch, a non-numeric branch, NaN/inf features or
            weights of selected events (the count per file and expression), or no event
            passing the filter.
    """
    wkeys = list(weights)
    exprs = [*features, *(weights[k] for k in wkeys)] + ([filter] if filter else [])
    xs, ws = [], {k: [] for k in wkeys}
    read, bad, current = 0, {}, None

    def report(path):
        if bad:
            items = "; ".join(f"{e!r}: {c}" for e, c in bad.items())
            raise DataError(
                f"sample {name!r}: NaN/inf values among the selected events ({items})",
                file=path,
                where=next(iter(bad)),
                fix="repair these events or exclude them with the sample's filter",
            )

    for path, _, out in _chunks(files, tree, exprs, step_size, constants, base_dir):
        if path != current:
            report(current)
            current = path
        read += len(next(iter(out.values()))) if out else 0
        keep = slice(None)
        if filter:
            keep = out[filter]
            keep = keep if keep.dtype.kind == "b" else keep != 0
        for e in (*features, *weights.values()):
            nonfinite = int(np.sum(~np.isfinite(out[e][keep])))
            if nonfinite:
                bad[e] = bad.get(e, 0) + nonfinite
        xs.append(np.stack([out[e][keep] for e in features], axis=1))
        for k in wkeys:
            ws[k].append(out[weights[k]][keep])
    report(current)
    x = np.concatenate(xs) if xs else np.zeros((0, len(features)))
    if len(x) == 0:
        raise DataError(
            f"sample {name!r} is empty: 0 of {read} events pass the filter {filter!r}"
            if filter
            else f"sample {name!r} has no events",
            file=", ".join(expand(files, base_dir)),
            where=filter,
            fix="check the filter expression and the files",
        )
    return x, {k: np.concatenate(v).astype(np.float64) for k, v in ws.items()}
