"""Copy a columnar file adding one column: ROOT (TTree, RNTuple), parquet, HDF5, CSV, ``.npz``.

:func:`layout` reads a file's columns (which are flat numbers, which are all, and what is
needed to write it back); :func:`write_with_column` writes every column of the file plus a
new one, chunk by chunk, into a temporary file beside the output (renamed by the caller, so
nothing is left half-written). ``diffhep reweight`` (:mod:`diffhep.weights.files`) writes the
learned weights this way:

- ROOT: one TTree of the same name (uproot), copied chunk by chunk; jagged branches are
  carried over when uproot can write them back under the same names (a collection
  ``nJet``, ``Jet_pt``, ``Jet_eta``, ... or a single ``X`` with counter ``nX``), other
  non-flat branches (strings, objects, fixed-size arrays) are a :class:`DataError`. An
  RNTuple gives an RNTuple of the same name, every field copied as it is;
- parquet: copied batch by batch with pyarrow, every column type kept (lists, strings, ...);
- HDF5: the file is copied and the column added as a dataset of the group ``tree`` (or the
  root);
- CSV: every line is copied as it is, the new value appended (``repr`` of the float);
- ``.npz``: 1-D arrays as columns, the new one added.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..writers import AtomicWriter
from . import readers

__all__ = ["FORMATS", "RNTUPLE", "file_format", "layout", "write_with_column"]

#: File suffix -> format of the files ``diffhep reweight`` reads and writes.
FORMATS = {
    ".root": "root",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".csv": "csv",
    ".npz": "npz",
}


def file_format(path: Path, where=None) -> str:
    """The format of a file from its suffix (:data:`FORMATS`); an unknown suffix is a
    :class:`DataError` naming ``where`` (an option) and the known ones."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"unknown file type {path.suffix!r}",
            file=str(path),
            where=where,
            fix=f"use one of: {', '.join(FORMATS)}",
        )
    return kind


RNTUPLE = "RNTuple"


def _root_layout(path, tree):
    """``(tree, flat numeric branches, every branch, jagged groups)`` of a ROOT file; the
    groups ``{name: [branches]}`` say how jagged branches are written back (a record
    ``name`` of the fields ``<name>_<field>``, or the jagged branch ``name`` itself), so that
    uproot recreates the same branch names and counters. For an RNTuple the groups are
    :data:`RNTUPLE` (fields are written back as they are)."""
    import uproot

    file = str(path)
    tree, what = readers.tree_kind(path, tree)
    if what == "RNTuple":  # every field is written back as it is: no counters to recreate
        with uproot.open(path) as f:
            t = f[tree]
            fields = list(t.keys(recursive=False))
            types = t.arrays(fields, entry_stop=0)
        flat = [b for b in fields if types[b].ndim == 1 and readers.is_numeric_ak(types[b])]
        return tree, flat, fields, RNTUPLE
    with uproot.open(path) as f:
        t = f[tree]
        branches = list(t.keys(recursive=False))
        flat, by_counter = [], {}
        for b in branches:
            br = t[b]
            interp = br.interpretation
            if isinstance(interp, uproot.AsDtype) and interp.to_dtype.shape == ():
                if interp.to_dtype.kind in "biuf":
                    flat.append(b)
                continue
            inner = getattr(interp, "content", None)
            if (
                isinstance(interp, uproot.AsJagged)
                and isinstance(inner, uproot.AsDtype)
                and inner.to_dtype.shape == ()
                and br.count_branch is not None
            ):
                by_counter.setdefault(br.count_branch.name, []).append(b)
                continue
            raise DataError(
                f"branch {b!r} ({br.typename}) cannot be copied to the output",
                file=file,
                where=b,
                fix="copy flat numeric branches and jagged lists of numbers only "
                "(drop this branch from the file first)",
            )
    groups = {}
    for counter, members in by_counter.items():
        name = counter[1:] if counter.startswith("n") else None
        if name and all(m.startswith(name + "_") for m in members):
            groups[name] = members
        elif name and members == [name]:
            groups[name] = None  # a single jagged branch written as it is
        else:
            raise DataError(
                f"jagged branch {members[0]!r} has the counter {counter!r}, which uproot "
                "cannot recreate under the same names",
                file=file,
                where=members[0],
                fix="name collections nX with branches X_<field> (as NanoAOD does)",
            )
    return tree, flat, branches, groups


def layout(kind, path, tree):
    """``(tree, flat numeric columns, every column, extra)`` of a columnar file of format
    ``kind``; ``extra`` is what :func:`write_with_column` needs to write it back (the jagged
    groups of a ROOT tree, :data:`RNTUPLE`, the arrays of an ``.npz``)."""
    file = str(path)
    if kind == "root":
        return _root_layout(path, tree)
    if kind in ("parquet", "csv"):
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        try:
            if kind == "csv":
                with pcsv.open_csv(path) as reader:
                    schema = reader.schema
            else:
                schema = pq.ParquetFile(path).schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read as {kind} ({exc})", file=file) from None
        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
        flat = [f.name for f in schema if any(p(f.type) for p in numeric)]
        return tree, flat, list(schema.names), None
    if kind == "hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                group = f
                if tree is not None:
                    if tree not in f or not isinstance(f[tree], h5py.Group):
                        raise DataError(
                            f"group {tree!r} not found; the file has: {', '.join(f.keys())}",
                            file=file,
                            where=tree,
                        )
                    group = f[tree]
                every = [k for k in group if isinstance(group[k], h5py.Dataset)]
                flat = [k for k in every if group[k].ndim == 1 and group[k].dtype.kind in "biuf"]
        except OSError as exc:
            raise DataError(f"cannot open as HDF5 ({exc})", file=file) from None
        return tree, flat, every, None
    try:  # npz with 1-D arrays as columns
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except Exception as exc:
        raise DataError(f"cannot read as .npz ({exc})", file=file) from None
    flat = [k for k, v in arrays.items() if v.ndim == 1 and v.dtype.kind in "biuf"]
    return tree, flat, list(arrays), arrays


def write_with_column(kind, path: Path, out: Path, tree, extra, column, new, step) -> Path:
    """The output: every column of ``path`` plus ``column`` = ``new``, in a temporary file
    beside ``out`` (returned; renamed by the caller)."""
    tmp = out.with_name(f".{out.name}.part")
    file = str(path)
    try:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = AtomicWriter(out, "parquet")
            start = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=step):
                part = pa.array(new[start : start + batch.num_rows], pa.float64())
                writer.write(batch.append_column(column, part))
                start += batch.num_rows
            _check_count(file, start, len(new))
            empty = pq.read_schema(path).append(pa.field(column, pa.float64())).empty_table()
            return writer.finish(empty)
        if kind == "root":
            return _write_root(path, out, tree, extra, column, new, step)
        if kind == "hdf5":
            import h5py

            shutil.copyfile(path, tmp)
            with h5py.File(tmp, "a") as f:
                (f[tree] if tree is not None else f).create_dataset(column, data=new)
            return tmp
        if kind == "csv":
            with open(path, newline="") as src, open(tmp, "w", newline="") as dst:
                header = src.readline()
                end = header[len(header.rstrip("\r\n")) :] or "\n"
                dst.write(f"{header.rstrip(chr(13) + chr(10))},{column}{end}")
                i = 0
                for line in src:
                    body = line.rstrip("\r\n")
                    if not body:  # empty lines are not events (as in the reader)
                        dst.write(line)
                        continue
                    if i < len(new):
                        dst.write(f"{body},{float(new[i])!r}{line[len(body) :] or end}")
                    i += 1
            _check_count(file, i, len(new))
            return tmp
        with open(tmp, "wb") as fh:  # npz
            np.savez(fh, **extra, **{column: new})
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_count(file, n, expected):
    if n != expected:
        raise DataError(
            f"the file has {n} rows but {expected} events were read",
            file=file,
            fix="check the file (quoted line breaks in a CSV?)",
        )


def _write_root(path, out, tree, groups, column, new, step) -> Path:
    import awkward as ak
    import uproot

    rntuple = groups == RNTUPLE
    groups = {} if rntuple else groups
    counters = {"n" + g for g in groups}
    members = {m for ms in groups.values() if ms for m in ms}
    writer = AtomicWriter(out, "root", tree, rntuple=rntuple)
    start = 0
    try:
        with uproot.open(path) as f:
            for chunk in f[tree].iterate(step_size=step, library="ak"):
                n = len(chunk)
                cols = {}
                if rntuple:
                    cols = {b: chunk[b] for b in chunk.fields}
                    cols[column] = np.asarray(new[start : start + n], np.float64)
                    writer.write(cols)
                    start += n
                    continue
                for b in chunk.fields:
                    if b in counters or b in members:
                        continue
                    cols[b] = ak.to_numpy(chunk[b]) if b not in groups else chunk[b]
                for g, ms in groups.items():
                    if ms:
                        cols[g] = ak.zip({m[len(g) + 1 :]: chunk[m] for m in ms})
                cols[column] = np.asarray(new[start : start + n], np.float64)
                writer.write(cols)
                start += n
        _check_count(str(path), start, len(new))
        return writer.finish(None)
    except BaseException:
        writer.abort()
        raise
