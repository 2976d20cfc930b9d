"""One reader per file format, all yielding raw column chunks ``(columns, n)``.

ROOT through ``uproot`` (TTree or RNTuple ``tree``, jagged branches or fields as awkward
arrays), parquet and CSV through ``pyarrow`` (list columns become jagged; CSV has a header
line with the column names), HDF5 through ``h5py`` (1-D datasets of the group ``tree`` or
of the file root) and ``.npz`` (1-D arrays). :data:`READERS` maps a file suffix to its
reader; :func:`read` picks one. Each reader reads only the columns asked for and checks that
they exist and are numeric (:class:`~diffhep.errors.DataError` naming the file, the column
and close matches). :mod:`diffhep.io.sources` evaluates expressions on these chunks.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = [
    "FORMATS",
    "READERS",
    "few",
    "is_numeric_ak",
    "read",
    "to_columns",
    "tree_kind",
    "tree_name",
]


def _missing(path, kind, names, available, tree=None):
    (first, *_) = names
    close = difflib.get_close_matches(first, list(available), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"it has: {few(available)}"
    return DataError(
        f"{kind} {', '.join(map(repr, names))} not found" + (f" in tree {tree!r}" if tree else ""),
        file=path,
        where=first,
        fix=hint,
    )


def few(names, k=12):
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names)} in total)" if len(names) > k else "")


def is_numeric_ak(arr) -> bool:
    import awkward as ak

    t = str(ak.type(arr))
    return not any(s in t for s in ("string", "bytes", "{", "?"))


def _check_type(path, name, arr, tree=None):
    if isinstance(arr, np.ndarray):
        ok = arr.dtype.kind in "biuf" and arr.ndim == 1
    else:
        ok = is_numeric_ak(arr)
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


def _open(opener, path, message: str, errors=(Exception,)):
    """``opener(path)``; a failure is a :class:`DataError` ``"<message> (<why>)"``."""
    try:
        return opener(path)
    except errors as exc:
        raise DataError(f"{message} ({exc})", file=str(path)) from None


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

    with _open(uproot.open, path, "cannot open as a ROOT file") as f:
        return _tree_of(str(path), f, tree)


def _root(path, tree, names, step):
    import uproot

    with _open(uproot.open, path, "cannot open as a ROOT file") as f:
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
            yield to_columns(path, chunk, names, tree)


def to_columns(path, chunk, names, tree=None):
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
        if arr.ndim == 1 and is_numeric_ak(arr):
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
            yield to_columns(path, table[start : start + step], names)


def _parquet(path, tree, names, step):
    return _arrow_batches(path, names, step, "parquet")


def _csv(path, tree, names, step):
    return _arrow_batches(path, names, step, "csv")


def _header(path):
    with open(path) as fh:
        return fh.readline().strip().split(",")


def _absent_csv(path, names):
    return [n for n in names if n not in _header(path)]


def _hdf5(path, tree, names, step):
    import h5py

    with _open(lambda p: h5py.File(p, "r"), path, "cannot open as HDF5", OSError) as f:
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
    with _open(np.load, path, "cannot read as .npz") as f:
        absent = [n for n in names if n not in f.files]
        if absent:
            raise _missing(path, "array(s)", absent, f.files)
        cols = {n: _check_type(path, n, np.asarray(f[n])) for n in names}
    total = len(next(iter(cols.values()))) if cols else 0
    for start in range(0, total, step):
        yield {n: c[start : start + step] for n, c in cols.items()}, min(step, total - start)


#: File suffix -> reader ``(path, tree, names, step) -> iterator of (columns, n)``.
READERS = {
    ".root": _root,
    ".parquet": _parquet,
    ".pq": _parquet,
    ".csv": _csv,
    ".h5": _hdf5,
    ".hdf5": _hdf5,
    ".npz": _npz,
}
#: The file suffixes diffhep reads.
FORMATS = tuple(READERS)


def read(path, tree, names, step):
    """Raw column chunks ``(columns, n)`` of one file, by the reader of its suffix."""
    suffix = Path(path).suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise DataError(
            f"unknown file type {suffix!r}",
            file=path,
            fix=f"use one of: {', '.join(FORMATS)}",
        )
    return reader(path, tree, names, step)
