"""Chunked reading of event files (ROOT TTrees, parquet): plain columns, bounded memory.

A minimal reader (ROOT via ``uproot.iterate``, parquet via ``pyarrow`` ``iter_batches``;
expressions are plain column or branch names). Missing files, trees and columns raise a
:class:`~diffhep.datasets.DataError` naming the file and the column.

Example:
    >>> import tempfile, numpy as np, pyarrow as pa, pyarrow.parquet as pq
    >>> path = tempfile.mkdtemp() + "/ev.parquet"
    >>> pq.write_table(pa.table({"a": np.arange(5.0), "b": np.ones(5)}), path)
    >>> [c["a"].tolist() for c in iterate([path], expressions=["a"], step_size=2)]
    [[0.0, 1.0], [2.0, 3.0], [4.0]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .datasets import DataError

__all__ = ["SUFFIXES", "iterate"]

#: File kinds by suffix.
SUFFIXES = {".root": "root", ".parquet": "parquet", ".pq": "parquet"}


def kind(path) -> str:
    """``"root"`` or ``"parquet"`` from the file suffix (a :class:`DataError` otherwise)."""
    k = SUFFIXES.get(Path(path).suffix.lower())
    if k is None:
        raise DataError(
            f"unsupported file type {Path(path).suffix!r}",
            file=str(path),
            fix=f"use one of: {', '.join(SUFFIXES)}",
        )
    return k


def _tree_name(file: str, handle, tree: str | None) -> str:
    trees = [k.split(";")[0] for k, c in handle.classnames().items() if c == "TTree"]
    if tree is None:
        if len(set(trees)) != 1:
            raise DataError(
                f"{len(set(trees))} TTrees in the file ({', '.join(sorted(set(trees)))})",
                file=file,
                fix="name the tree (--tree NAME)",
            )
        return trees[0]
    if tree not in trees:
        raise DataError(
            f"no TTree {tree!r} (trees: {', '.join(sorted(set(trees))) or 'none'})",
            file=file,
            where=tree,
            fix="check the tree name",
        )
    return tree


def _root(file: str, tree, expressions, step_size) -> Iterator[dict]:
    import uproot

    try:
        handle = uproot.open(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot open as a ROOT file ({exc})", file=file) from None
    with handle:
        name = _tree_name(file, handle, tree)
        missing = [e for e in expressions if e not in handle[name].keys()]
        if missing:
            raise DataError(
                f"branch(es) {', '.join(missing)} not in tree {name!r}",
                file=file,
                where=missing[0],
                fix="check the feature names",
            )
        for chunk in handle[name].iterate(list(expressions), step_size=step_size, library="np"):
            yield {e: chunk[e] for e in expressions}


def _parquet(file: str, expressions, step_size) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(file, pre_buffer=False)  # pre-buffering keeps every chunk
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot open as a parquet file ({exc})", file=file) from None
    missing = [e for e in expressions if e not in handle.schema_arrow.names]
    if missing:
        raise DataError(
            f"column(s) {', '.join(missing)} not in the file",
            file=file,
            where=missing[0],
            fix="check the feature names",
        )
    for batch in handle.iter_batches(batch_size=step_size, columns=list(expressions)):
        yield {e: np.asarray(batch.column(e).to_numpy(zero_copy_only=False)) for e in expressions}


def iterate(
    files: Sequence[str | Path],
    *,
    tree: str | None = None,
    expressions: Sequence[str],
    step_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of at most ``step_size`` events of ``files`` (in order): ``{column: array}``.

    Args:
        files: ROOT or parquet files.
        tree: The TTree of ROOT files (default: the only one in the file).
        expressions: Column (branch) names to read.
        step_size: Events per chunk.

    Raises:
        DataError: Missing file, tree or column, or an unsupported file type.
    """
    for f in files:
        f = str(f)
        k = kind(f)
        if not Path(f).is_file():
            raise DataError("file not found", file=f, fix="check the path")
        if k == "root":
            yield from _root(f, tree, expressions, step_size)
        else:
            yield from _parquet(f, expressions, step_size)
