"""Reading event data from files: ROOT TTrees and RNTuples, parquet, HDF5, ``.npz`` and CSV,
in chunks.

:func:`iterate` streams chunks of evaluated expressions (branch names or
:class:`~diffhep.io.expressions.Expression` strings) from a list of files (globs allowed), reading
only the branches the expressions need: ROOT through ``uproot`` (TTree or RNTuple ``tree``,
jagged branches or fields as awkward arrays), parquet through ``pyarrow`` (list columns
become jagged), HDF5 through ``h5py`` (1-D datasets of the group ``tree`` or of the file
root), ``.npz`` (1-D arrays) and CSV (header line with the column names).
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

import difflib
import glob
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .expressions import Expression, ExpressionError

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

#: File suffix -> reader.
FORMATS = (".root", ".parquet", ".pq", ".h5", ".hdf5", ".npz", ".csv")
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


def _missing(path, kind, names, available, tree=None):
    (first, *_) = names
    close = difflib.get_close_matches(first, list(available), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"it has: {_few(available)}"
    return DataError(
        f"{kind} {', '.join(map(repr, names))} not found" + (f" in tree {tree!r}" if tree else ""),
        file=path,
        where=first,
        fix=hint,
    )


def _few(names, k=12):
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names)} in total)" if len(names) > k else "")


def _is_numeric_ak(arr) -> bool:
    import awkward as ak

    t = str(ak.type(arr))
    return not any(s in t for s in ("string", "bytes", "{", "?"))


def _check_type(path, name, arr, tree=None):
    if isinstance(arr, np.ndarray):
        ok = arr.dtype.kind in "biuf" and arr.ndim == 1
    else:
        ok = _is_numeric_ak(arr)
    if not ok:
        raise DataError(
            f"branch {name!r} has a non-numeric type "
            f"({arr.dtype if isinstance(arr, np.ndarray) else arr.type})"
            + (f" in tree {tree!r}" if tree else ""),
            file=path,
            where=name,
            fix="use numeric (or boolean) branches, or jagged lists of numbers",
        )
    return arr


#: ROOT classes of event data -> the kind named in messages (TTree, RNTuple).
TREE_CLASSES = {
    "TTree": "TTree",
    "TNtuple": "TTree",
    "TNtupleD": "TTree",
    "ROOT::RNTuple": "RNTuple",
    "ROOT::Experimental::RNTuple": "RNTuple",
}


def _objects(f) -> dict:
    """``{name: class name}`` of the objects of the open ROOT file ``f`` (no cycles)."""
    out = {}
    for k, c in f.classnames().items():
        out.setdefault(k.split(";")[0], c)
    return out


def _tree_of(path, f, tree):
    """``(name, kind)`` of the event data of the open ROOT file ``f``: the TTree or RNTuple
    ``tree``, or the only one; ``kind`` is ``"TTree"`` or ``"RNTuple"``."""
    objects = {k: TREE_CLASSES.get(c, c) for k, c in _objects(f).items()}
    trees = {k: c for k, c in objects.items() if c in ("TTree", "RNTuple")}
    if tree is None:
        if len(trees) != 1:
            found = ", ".join(f"{k} ({c})" for k, c in objects.items()) or "nothing"
            raise DataError(
                f"the file has {len(trees)} TTrees or RNTuples; "
                + ("name one" if trees else f"it holds: {found}"),
                file=path,
                where=", ".join(f"{k} ({c})" for k, c in trees.items()) or None,
                fix="give the sample's 'tree' (or data.tree, or --tree)"
                if trees
                else "give a ROOT file with a TTree or an RNTuple of the events",
            )
        tree = next(iter(trees))
    if tree not in trees:
        close = difflib.get_close_matches(tree, list(trees), n=3)
        found = ", ".join(f"{k} ({c})" for k, c in objects.items()) or "nothing"
        raise DataError(
            f"tree {tree!r} not found (no TTree or RNTuple of that name); the file holds: " + found,
            file=path,
            where=tree,
            fix=f"did you mean {', '.join(close)}?" if close else "give one of its trees",
        )
    return tree, trees[tree]


def tree_name(path, tree: str | None = None) -> str:
    """The TTree or RNTuple of the ROOT file ``path`` that :func:`iterate` reads: ``tree``
    (checked), or the only one of the file."""
    return tree_kind(path, tree)[0]


def tree_kind(path, tree: str | None = None) -> tuple[str, str]:
    """``(name, kind)`` of the event data of the ROOT file ``path`` (as :func:`tree_name`);
    ``kind`` is ``"TTree"`` or ``"RNTuple"``, so that outputs can mirror the input."""
    import uproot

    try:
        f = uproot.open(path)
    except Exception as exc:
        raise DataError(f"cannot open as a ROOT file ({exc})", file=str(path)) from None
    with f:
        return _tree_of(str(path), f, tree)


def _root(path, tree, names, step):
    import uproot

    try:
        f = uproot.open(path)
    except Exception as exc:
        raise DataError(f"cannot open as a ROOT file ({exc})", file=path) from None
    with f:
        tree, kind = _tree_of(path, f, tree)
        t = f[tree]
        keys = t.keys()
        absent = [n for n in names if n not in keys]
        if absent:
            raise _missing(path, "branch(es)", absent, keys, tree)
        if kind == "TTree":  # RNTuple fields are checked by type once read (_columns)
            for n in names:
                if t[n].interpretation.__class__.__name__ in ("AsStrings", "AsObjects"):
                    raise _check_type(path, n, np.array(["?"]), tree)
        for chunk in t.iterate(list(names), step_size=step, library="ak"):
            yield _columns(path, chunk, names, tree)


def _columns(path, chunk, names, tree=None):
    import awkward as ak

    out = {}
    for n in names:
        arr = chunk[n]
        if "?" in str(arr.type):  # nullable (arrow): missing values become NaN, then checked
            if arr.ndim == 2:  # a missing list is an empty one
                counts = ak.to_numpy(ak.fill_none(ak.num(arr, axis=1), 0))
                flat = ak.flatten(ak.drop_none(arr, axis=0), axis=1)
                arr = ak.unflatten(ak.fill_none(flat, np.nan), counts)
            else:
                arr = ak.fill_none(arr, np.nan)
        if arr.ndim == 1 and _is_numeric_ak(arr):
            arr = ak.to_numpy(arr)
        out[n] = _check_type(path, n, arr, tree)
    return out, len(chunk)


def _arrow_batches(path, names, step, fmt):
    import awkward as ak
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if fmt == "csv":
            reader = pcsv.open_csv(
                path, convert_options=pcsv.ConvertOptions(include_columns=list(names))
            )
            schema = reader.schema
        else:
            pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every chunk (memory)
            schema = pf.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        if "include_columns" in str(exc) or "not exist" in str(exc):
            raise _missing(path, "column(s)", _absent_csv(path, names), _header(path)) from None
        raise DataError(f"cannot read as {fmt} ({exc})", file=path) from None
    absent = [n for n in names if n not in schema.names]
    if absent:
        raise _missing(path, "column(s)", absent, schema.names)
    batches = reader if fmt == "csv" else pf.iter_batches(batch_size=step, columns=list(names))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise DataError(
                f"inconsistent column types ({exc})",
                file=path,
                fix="every value of a column must have the same numeric type",
            ) from None
        table = ak.from_arrow(pa.Table.from_batches([batch]))
        for start in range(0, len(table), step):
            yield _columns(path, table[start : start + step], names)


def _header(path):
    with open(path) as fh:
        return fh.readline().strip().split(",")


def _absent_csv(path, names):
    return [n for n in names if n not in _header(path)]


def _hdf5(path, tree, names, step):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open as HDF5 ({exc})", file=path) from None
    with f:
        group = f
        if tree is not None:
            if tree not in f or not isinstance(f[tree], h5py.Group):
                raise _missing(path, "group", [tree], list(f.keys()))
            group = f[tree]
        absent = [n for n in names if n not in group or not isinstance(group[n], h5py.Dataset)]
        if absent:
            raise _missing(path, "dataset(s)", absent, list(group.keys()), tree)
        lengths = {n: group[n].shape[0] if group[n].ndim else 0 for n in names}
        for n in names:
            if group[n].ndim != 1 or group[n].dtype.kind not in "biuf":
                raise _check_type(path, n, np.array(["?"]), tree)
        total = min(lengths.values(), default=0)
        if len(set(lengths.values())) > 1:
            raise DataError(
                f"datasets have different lengths: {lengths}", file=path, where=names[0]
            )
        for start in range(0, total, step):
            cols = {n: group[n][start : start + step] for n in names}
            yield cols, min(step, total - start)


def _npz(path, tree, names, step):
    try:
        f = np.load(path)
    except Exception as exc:
        raise DataError(f"cannot read as .npz ({exc})", file=path) from None
    with f:
        absent = [n for n in names if n not in f.files]
        if absent:
            raise _missing(path, "array(s)", absent, f.files)
        cols = {n: _check_type(path, n, np.asarray(f[n])) for n in names}
    total = len(next(iter(cols.values()))) if cols else 0
    for start in range(0, total, step):
        yield {n: c[start : start + step] for n, c in cols.items()}, min(step, total - start)


def _read(path, tree, names, step):
    """Raw column chunks ``(columns, n)`` of one file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".root":
        return _root(path, tree, names, step)
    if suffix in (".parquet", ".pq"):
        return _arrow_batches(path, names, step, "parquet")
    if suffix == ".csv":
        return _arrow_batches(path, names, step, "csv")
    if suffix in (".h5", ".hdf5"):
        return _hdf5(path, tree, names, step)
    if suffix == ".npz":
        return _npz(path, tree, names, step)
    raise DataError(
        f"unknown file type {suffix!r}",
        file=path,
        fix=f"use one of: {', '.join(FORMATS)}",
    )


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
        for cols, n in _read(path, tree, names, int(step_size)):
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
    cols, n = _columns(str(path), chunk, _names(parsed, constants), tree)
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
