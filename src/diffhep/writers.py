"""Atomic writing: whole files (:func:`write_atomic`) and event columns in chunks.

:func:`write_atomic` writes a file (text, bytes, or through a callback) to a temporary name
beside the target and renames it, so a reader never sees a partial file. :class:`AtomicWriter`
appends chunks of columns to a temporary file beside the target and
renames it to the target only when everything is written, so an error leaves no partial
output. Used by ``diffhep apply`` (:mod:`diffhep.apply`, :mod:`diffhep.dask_apply`) and
``diffhep reweight`` (:mod:`diffhep.reweight_files`).

Example:
    >>> import numpy as np, tempfile, pyarrow.parquet as pq
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "out.parquet"
    >>> w = AtomicWriter(path, "parquet")
    >>> w.write({"a": np.arange(2)}); w.write({"a": np.arange(2, 3)}); w.commit({})
    >>> pq.read_table(path)["a"].to_pylist()
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["AtomicWriter", "write_atomic"]


def write_atomic(path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``content`` to ``path`` through a temporary file beside it and a rename.

    ``content`` is text (UTF-8), bytes, or a function that writes the file at the path it is
    given. On any error the target is left as it was and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class AtomicWriter:
    """Chunks to a temporary parquet or ROOT file, renamed to ``path`` by :meth:`commit`.

    Chunks are ``{column: array}`` (numpy arrays; for ROOT also awkward arrays, e.g. jagged
    collections or records of them) or, for parquet, a ``pyarrow`` table or record batch
    (written as it is, every column type kept). ``tree`` names the ROOT output tree.
    """

    def __init__(self, path, kind: str, tree: str = "Events"):
        self.path, self.kind, self.tree = Path(path), kind, tree
        self.tmp = self.path.with_name(f".{self.path.name}.part")
        self.handle = None
        self.finished = False

    def write(self, columns) -> None:
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if isinstance(columns, pa.RecordBatch):
                table = pa.Table.from_batches([columns])
            elif isinstance(columns, pa.Table):
                table = columns
            else:
                table = pa.table(columns)
            if self.handle is None:
                self.handle = pq.ParquetWriter(self.tmp, table.schema)
            self.handle.write_table(table)
        else:
            import awkward as ak
            import uproot

            if self.handle is None:
                self.handle = uproot.recreate(self.tmp)
                types = {
                    k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in columns.items()
                }
                self.handle.mktree(self.tree, types)
            self.handle[self.tree].extend(columns)

    def finish(self, empty) -> Path:
        """Close the temporary file (written with the columns ``empty`` if no chunk was);
        returns its path. :meth:`commit` or :meth:`abort` follows."""
        if self.handle is None:  # no events: an empty file with the columns
            self.write(empty)
        self.handle.close()
        self.handle = None
        self.finished = True
        return self.tmp

    def commit(self, empty) -> None:
        """Close the file and rename it to ``path``."""
        if not self.finished:
            self.finish(empty)
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.tmp.unlink(missing_ok=True)
