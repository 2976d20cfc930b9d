"""The on-disk cache of compiled kernels: JAX's persistent compilation cache and diffhep's
exported kernels (:mod:`diffhep.stats.exported`), in one directory, bounded in size.

Every command of the CLI uses it; in Python, :func:`enable` (``diffhep.enable_cache()``)
switches it on, so that a new session on an analysis seen before loads its compiled kernels
instead of compiling them.

- ``DIFFHEP_CACHE_DIR``: the directory (default ``$XDG_CACHE_HOME/diffhep/jax``, else
  ``~/.cache/diffhep/jax``); empty: no cache.
- ``DIFFHEP_CACHE_MAX_SIZE``: its bound (default 2G; K, M, G, T are powers of 1024; ``none``:
  no bound). When the cache is enabled, the least recently used files beyond it are deleted.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from diffhep import cache
    >>> directory = Path(tempfile.mkdtemp())
    >>> for name, size in (("old-cache", 300), ("new-cache", 300), ("notes.txt", 900)):
    ...     (directory / name).write_bytes(bytes(size))
    300
    300
    900
    >>> [p.name for p in cache.prune(directory, 400)]  # not notes.txt: not a cache file
    ['old-cache']
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DiffhepError

__all__ = ["MAX_SIZE", "default_directory", "enable", "max_size", "prune"]

#: Bound of the cache directory when ``DIFFHEP_CACHE_MAX_SIZE`` does not set one.
MAX_SIZE = "2G"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def max_size() -> int | None:
    """``DIFFHEP_CACHE_MAX_SIZE`` in bytes (a number with K, M, G or T, powers of 1024;
    ``none``: no bound)."""
    given = os.environ.get("DIFFHEP_CACHE_MAX_SIZE", MAX_SIZE)
    text = given.strip().upper()
    if text == "NONE":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([KMGT]?)I?B?", text)
    if not match or float(match[1]) <= 0:
        raise DiffhepError(
            f"not a cache size: {given!r}",
            where="DIFFHEP_CACHE_MAX_SIZE",
            fix="a positive size such as 500M or 2G (powers of 1024), or 'none' for no bound",
        )
    return int(float(match[1]) * _UNITS[match[2]])


#: The files of the cache: JAX's compiled programs (and its access times), diffhep's
#: exported kernels, their executables and the names of those a command called last.
#: Nothing else in the directory is counted or deleted.
_FILES = ("*-cache", "*-atime", "exported/*.bin", "exported/*.exe", "exported/aliases/*")


def prune(directory: Path, max_bytes: int) -> list[Path]:
    """Delete the least recently used cache files in ``directory`` (:data:`_FILES`, by the
    later of their access and modification times) until the rest hold at most ``max_bytes``;
    returns what was deleted. A file that cannot be read or deleted is left alone."""
    files, total = [], 0
    for path in (p for pattern in _FILES for p in directory.glob(pattern)):
        try:
            st = path.stat()
        except OSError:
            continue
        files.append((max(st.st_atime, st.st_mtime), st.st_size, path))
        total += st.st_size
    removed = []
    for _, size, path in sorted(files, key=lambda f: f[:2]):
        if total <= max_bytes:
            break
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


def default_directory() -> Path | None:
    """``DIFFHEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/diffhep/jax`` (``~/.cache`` without it);
    ``None`` where ``DIFFHEP_CACHE_DIR`` is empty (no cache)."""
    given = os.environ.get("DIFFHEP_CACHE_DIR")
    if given is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "diffhep" / "jax"
    return Path(given) if given else None


_FROM_ENV = object()


def enable(directory: str | os.PathLike | None = None, *, limit=_FROM_ENV) -> Path | None:
    """Keep compiled kernels in ``directory`` (default: :func:`default_directory`, the CLI's
    cache) for this process and later ones: JAX's persistent compilation cache and diffhep's
    exported kernels. First the least recently used files beyond ``limit`` bytes go
    (default: ``DIFFHEP_CACHE_MAX_SIZE``; ``None``: no bound).

    Call it before the first computation: JAX opens its persistent cache at its first
    compilation and keeps that directory for the rest of the process.

    Returns:
        The directory, or ``None`` where there is none (``directory`` or
        ``DIFFHEP_CACHE_DIR`` empty) or it cannot be created (the kernels are then compiled
        in memory, as without a cache).

    Raises:
        DiffhepError: ``DIFFHEP_CACHE_MAX_SIZE`` is not a size.
    """
    limit = max_size() if limit is _FROM_ENV else limit
    if directory is None:
        path = default_directory()
    else:  # "" as DIFFHEP_CACHE_DIR="": no cache (not the current directory)
        path = Path(directory) if str(directory) else None
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if limit is not None:  # room for this process's entries: the oldest go first
            prune(path, limit)
    except OSError:
        return None
    import jax

    from .stats import executables  # not exported: it imports equinox, not needed yet

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    executables.set_store(path / "exported")
    return path
