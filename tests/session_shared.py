"""Results built once per pytest session and shared by its xdist workers.

``make test`` runs the test files on two worker processes (``--dist loadfile``); a session
fixture (the tiny training run) or a cached reference (pyhf's and cabinetry's fits of a small
model) is otherwise built once in *each* worker that needs it. Here the first worker to ask
builds it under an exclusive lock in a directory of the session (``tests/conftest.py``
creates it and removes it at the end) and the others wait for the lock and reuse it.

Only deterministic things whose result does not depend on the worker belong here: a training
run of a fixed config and seed, or the numbers of a reference implementation.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "DIFFHEP_TEST_SHARED_DIR"


def root() -> Path:
    """The session's shared directory (made here when the session did not make one: a
    script that imports a test helper outside pytest)."""
    if not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="diffhep-test-shared-")
    return Path(os.environ[ENV])


def directory(name: str, build: Callable[[Path], Any]) -> Path:
    """``root()/name``, filled by ``build(path)`` once per session (``path`` does not exist
    yet when ``build`` is called). A build that failed (an exception, a killed worker) is
    not marked done: the next worker to ask builds again."""
    base = root()
    path, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        if not done.exists():
            if path.exists():
                shutil.rmtree(path)
            build(path)
            done.touch()
    return path


def value(name: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, computed once per session and pickled for the other workers."""

    def build(path: Path) -> None:
        path.mkdir()
        (path / "value.pkl").write_bytes(pickle.dumps(compute()))

    return pickle.loads((directory(name, build) / "value.pkl").read_bytes())
