"""Atomic writing: whole files (:func:`write_atomic`) and event columns in chunks.

:func:`write_atomic` writes a file (text, bytes, or through a callback) to a temporary name
beside the target and renames it, so a reader never sees a partial file. :class:`AtomicWriter`
appends chunks of columns to a temporary file beside the target and
renames it to the target only when everything is written, so an error leaves no partial
output. Used by ``diffhep apply`` (:mod:`diffhep.io.apply`, :mod:`diffhep.io.dask_apply`) and
``diffhep reweight`` (:mod:`diffhep.weights.files`).

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

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import DiffhepError

__all__ = [
    "LOCK_FILE",
    "METADATA_KEY",
    "AtomicWriter",
    "RunLocked",
    "check_writable_dir",
    "run_lock",
    "same_file",
    "write_atomic",
]

#: Name of the metadata of written event files (parquet schema key, ROOT ``TObjString``).
METADATA_KEY = "diffhep_metadata"


def check_writable_dir(path, *, where: str | None = None, create: bool = True) -> Path:
    """Check that files can be written into the directory ``path``, before any work whose
    results would go there: with ``create`` the directory (and its parents) is created
    and a probe file written; without, the nearest existing ancestor must be a writable
    directory (a probe file is written there and removed; nothing is left).

    Raises:
        DiffhepError: A part of the path is a file, or the directory cannot be created or
            written (naming the path, the option ``where`` and the fix).
    """
    path = Path(path)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".diffhep-probe-"):
                pass
        else:
            base = next(p for p in (path, *path.absolute().parents) if p.exists())
            if not base.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(base))
            with tempfile.NamedTemporaryFile(dir=base, prefix=".diffhep-probe-"):
                pass
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = (
            f"{blocker} is a file, not a directory"
            if blocker is not None
            else f"{exc.strerror or exc} ({exc.filename or path})"
        )
        raise DiffhepError(
            f"cannot write into the directory {path}: {reason}",
            file=str(path),
            where=where,
            fix="choose a directory you can write to (existing, or under directories only)",
        ) from None
    return path


#: The lock file of a run directory (:func:`run_lock`).
LOCK_FILE = "run.lock"


class RunLocked(DiffhepError):
    """The run directory is in use by another process."""


@contextlib.contextmanager
def run_lock(directory, *, where: str | None = None) -> Iterator[Path]:
    """Hold the run directory ``directory`` for this process: a second ``train`` (or
    ``evaluate``) into it stops with :class:`RunLocked` naming the process that holds it.

    The lock is ``LOCK_FILE`` in the directory, locked with ``flock`` (released by the
    kernel when the process ends, however it ends) and holding the pid, host, start time and
    command line of its holder, for the message. A lock file left by a process that died is
    taken over with a warning naming its pid; the file is removed when the lock is released.
    (``flock`` rather than an ``O_EXCL`` file: the kernel releases it however its holder
    ends, so a dead holder never blocks and a takeover cannot race a live one.)

    Raises:
        RunLocked: Another open lock on the directory (another process, or this one).
    """
    import fcntl

    path = Path(directory) / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"the run directory {directory} is in use by another diffhep run ({_holder(path)})",
                file=str(path),
                where=where,
                fix="wait for that run to finish, or use another --out directory",
            ) from None
        try:  # the file may have been removed (and re-created) by its previous holder
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        _warn_stale(path, os.pread(fd, 65536, 0))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiting opener retries
        os.close(fd)


def _warn_stale(path: Path, previous: bytes) -> None:
    """Warn that the lock file ``path`` of a process that died (``previous``: its content) has
    been taken over. An empty file is a fresh one (or its writer died before writing)."""
    if not previous.strip():
        return
    try:
        old = json.loads(previous)
        who = f"pid {old['pid']} on {old.get('host', '?')}, started {old.get('started', '?')}"
    except (ValueError, KeyError, TypeError):
        who = "an unreadable holder"
    logging.getLogger("diffhep").warning(
        "the lock file %s was left by %s, which is no longer running (it holds no lock): "
        "taken over (that run ended without releasing it)",
        path,
        who,
    )


def _holder(path: Path) -> str:
    """The holder of a lock file, as its message names it."""
    try:
        info = json.loads(path.read_text())
        return (
            f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}: "
            f"{info.get('command', '?')}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is starting (its lock file is not written yet)"


def same_file(a, b) -> bool:
    """Whether the paths ``a`` and ``b`` name the same file (symbolic links and relative
    paths resolved; hard links by the file system)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


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
    (written as it is, every column type kept). ``tree`` names the ROOT output tree, a TTree
    or, with ``rntuple``, an RNTuple (so that an output mirrors its input). ``metadata``
    (text, e.g. JSON) describes the columns: the parquet schema's metadata key
    :data:`METADATA_KEY`, in ROOT files a ``TObjString`` of that name beside the tree;
    ``title`` is the ROOT tree's title (RNTuple: description).
    """

    def __init__(
        self,
        path,
        kind: str,
        tree: str = "Events",
        *,
        rntuple: bool = False,
        metadata: str | None = None,
        title: str = "",
    ):
        self.path, self.kind, self.tree = Path(path), kind, tree
        self.rntuple, self.metadata, self.title = rntuple, metadata, title
        self.tmp = self.path.with_name(f".{self.path.name}.part")
        self.handle = None
        self._schema_metadata = None  # the metadata in a parquet file's Arrow schema
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
                schema = table.schema
                if self.metadata is not None:
                    schema = schema.with_metadata(
                        {**(schema.metadata or {}), METADATA_KEY: self.metadata}
                    )
                    self._schema_metadata = self.metadata
                self.handle = pq.ParquetWriter(self.tmp, schema)
            self.handle.write_table(table)
        else:
            import awkward as ak
            import uproot

            if self.handle is None:
                self.handle = uproot.recreate(self.tmp)
                if self.rntuple:  # awkward types of one entry (ListType, RecordType, ...)
                    types = {
                        k: v.type.content if isinstance(v, ak.Array) else v.dtype
                        for k, v in columns.items()
                    }
                    self.handle.mkrntuple(self.tree, types, description=self.title)
                else:
                    types = {
                        k: v.type if isinstance(v, ak.Array) else v.dtype
                        for k, v in columns.items()
                    }
                    self.handle.mktree(self.tree, types, title=self.title)
            self.handle[self.tree].extend(columns)

    def set_metadata(self, metadata: str) -> None:
        """Replace the metadata before :meth:`finish` (e.g. with what the chunks showed).
        ROOT: the ``TObjString`` is written at the end anyway; parquet: the footer's
        key-value metadata :data:`METADATA_KEY` is replaced (what
        :func:`diffhep.io.selection.read_metadata` reads), the Arrow schema's copy keeps the
        value of the first chunk."""
        self.metadata = metadata

    def finish(self, empty) -> Path:
        """Close the temporary file (written with the columns ``empty`` if no chunk was);
        returns its path. :meth:`commit` or :meth:`abort` follows."""
        if self.handle is None:  # no events: an empty file with the columns
            self.write(empty)
        if self.kind == "root" and self.metadata is not None:  # last: set_metadata may change it
            self.handle[METADATA_KEY] = self.metadata
        elif self.metadata is not None and self.metadata != self._schema_metadata:
            self.handle.add_key_value_metadata({METADATA_KEY: self.metadata})
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
