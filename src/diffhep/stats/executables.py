"""Compiled kernels kept as XLA executables on disk, and loaded on another thread while a
command starts.

:mod:`diffhep.stats.exported` stores a kernel's traced program once per model structure. Its
XLA compilation used to come from JAX's persistent cache, which first lowers the program
again (with LAPACK's set-up) to compute its key, then deserialises the executable: for a
hypothesis test of sbottom RegionA ~0.06 + 0.09 + 0.31 s of a 1.0 s command. Here the
executable itself is stored beside the program (:func:`save`, ``<key>.<machine>.exe``: the
machine digest covers what the compiled code depends on beyond the program: jax and jaxlib,
the platform and its version, the CPU's features, ``XLA_FLAGS`` and the options XLA compiles
with, from JAX's settings and the kernel's compiler options) and loaded without lowering
(:func:`load`). It is always XLA's own compilation (:func:`xla_compile`), never one from JAX's
persistent cache: those serialise incompletely.

A command names the workspace it will run on before it imports the statistics
(:func:`prefetch`): the kernels that the last command of the same kind and options called on
a workspace file of the same bytes are deserialised on another thread (XLA releases the GIL)
while Python imports equinox and diffhep.stats and builds the model; :func:`take` hands a
kernel over when the command asks for it, and :func:`remember` records what the command
called for the next one. A kernel is only taken by the structure key the command computes
itself: a guess that misses (a patch of another structure) costs the thread's work, on
another core (the CLI prefetches only where there is one).

This module imports no more than JAX, so that the thread starts before equinox is imported.
Files are written atomically with a SHA-256 of their content, checked before XLA reads them.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

__all__ = [
    "compile_context",
    "forget",
    "load",
    "machine",
    "path",
    "prefetch",
    "ready_lapack",
    "remember",
    "save",
    "set_compile_context",
    "set_store",
    "store",
    "take",
    "xla_compile",
]

log = logging.getLogger(__name__)

_STORE: Path | None = None
_CONTEXT: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
_MAGIC = b"diffhep-xla-executable-1\n"
_MACHINE: str | None = None
_LAPACK_READY = False


def set_store(directory: str | os.PathLike | None) -> None:
    """Keep kernels under ``directory`` (``None``: no store)."""
    global _STORE
    _STORE = None if directory is None else Path(directory)


def store() -> Path | None:
    """The directory of stored kernels, or ``None``."""
    return _STORE


def set_compile_context(context: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Run the first call of each new kernel (its compilation or load, and one execution)
    within ``context()`` (the CLI's: compile on every core)."""
    global _CONTEXT
    _CONTEXT = context


def compile_context() -> contextlib.AbstractContextManager:
    """A new context from the factory given to :func:`set_compile_context`."""
    return _CONTEXT()


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "isa")):
                    return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _compile_options(compiler_options) -> bytes:
    """The options XLA compiles with (from JAX's settings, ``XLA_FLAGS`` and
    ``compiler_options``), serialised as JAX's own cache key takes them; all of JAX's
    settings where that is not available."""
    import jax

    try:
        from jax._src import compiler  # JAX's construction of them; nothing public

        options = compiler.get_compile_options(
            num_replicas=1, num_partitions=1, env_options_overrides=compiler_options
        )
        debug = options.executable_build_options.debug_options
        debug.xla_gpu_per_fusion_autotune_cache_dir = ""  # where caches are (JAX puts them in
        debug.xla_gpu_kernel_cache_file = ""  # the persistent cache's directory, as written),
        debug.xla_gpu_experimental_autotune_cache_mode = 0  # not how code is compiled
        return options.SerializeAsString()
    except Exception:  # another JAX
        return repr(sorted(jax.config.values.items())).encode()


def machine(compiler_options=None) -> str:
    """A digest of what compiled code depends on beyond its program (see the module's
    docstring); the executables of two machines or settings never share a file."""
    global _MACHINE
    import jax

    if _MACHINE is None:
        client = jax.devices()[0].client
        parts = (
            jax.__version__,
            jax.lib.__version__,
            client.platform,
            client.platform_version,
            jax.devices()[0].device_kind,
            _cpu_features(),
            os.environ.get("XLA_FLAGS", ""),
        )
        _MACHINE = hashlib.sha256(repr(parts).encode()).hexdigest()
    h = hashlib.sha256(_MACHINE.encode())
    h.update(_compile_options(compiler_options))  # JAX's settings may change
    return h.hexdigest()[:16]


def path(key: str, compiler_options=None) -> Path | None:
    """The file of the executable of kernel ``key`` on this machine (``None``: no store)."""
    if _STORE is None:
        return None
    return _STORE / f"{key}.{machine(compiler_options)}.exe"


def xla_compile(fn: Callable, *args, options: dict | None = None):
    """``(compiled, cached)``: ``jax.jit(fn, compiler_options=options).lower(*args)
    .compile()``, and whether JAX's persistent cache returned it.

    An executable from JAX's cache serialises incompletely (a process that loaded it failed:
    "Function compare_select_fusion.3 not found"), so it must not be stored (:func:`save`):
    ``fn`` is compiled under a name of its own (``stored_kernel``: the cache's entries of
    the same program under another name, e.g. from earlier versions, do not match) and not
    written to JAX's cache (its executable is stored here); ``cached`` says where it came
    from all the same."""
    import jax

    def stored_kernel(*a):
        return fn(*a)

    _count_cache_hits()
    hits = _hits
    with _not_written_to_jaxs_cache():
        out = jax.jit(stored_kernel, compiler_options=options).lower(*args).compile()
    return out, _hits != hits


_GLOBAL_SETTING = threading.Lock()


@contextlib.contextmanager
def _not_written_to_jaxs_cache():
    """Within: this thread's compilations are not written to JAX's persistent cache (its
    minimum compile time infinite for this thread only; where JAX has no such context, for
    the process, one such compilation at a time)."""
    import jax

    try:
        from jax._src import config  # JAX's thread-local form of the setting; not public

        context = config.persistent_cache_min_compile_time_secs(float("inf"))
    except (ImportError, AttributeError, TypeError):
        context = None
    if context is not None:
        with context:
            yield
        return
    with _GLOBAL_SETTING:
        saved = jax.config.jax_persistent_cache_min_compile_time_secs
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
        try:
            yield
        finally:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", saved)


_hits = 0  # JAX's persistent-cache hits in this process (from the first xla_compile on)
_counting = False


def _count(event, **_) -> None:
    global _hits
    if event == "/jax/compilation_cache/cache_hits":
        _hits += 1


def _count_cache_hits() -> None:
    global _counting
    if not _counting:
        import jax

        _counting = True
        jax.monitoring.register_event_listener(_count)


def save(file: Path, compiled) -> None:
    """Write the executable of ``compiled`` (a :class:`jax.stages.Compiled`) to ``file``;
    nothing where XLA cannot serialise it."""
    from jax.experimental import serialize_executable

    from ..writers import write_atomic

    try:
        payload, in_tree, out_tree = serialize_executable.serialize(compiled)
        blob = pickle.dumps((payload, in_tree, out_tree), protocol=pickle.HIGHEST_PROTOCOL)
        file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(file, _MAGIC + hashlib.sha256(blob).digest() + blob)
    except Exception as err:  # not serialisable here (a platform, a callback): not stored
        log.debug("executable %s not stored: %s", file.name, err)


def load(file: Path | None):
    """The :class:`jax.stages.Compiled` stored in ``file``, or ``None`` (no file, or one
    that is damaged or cannot be loaded here)."""
    if file is None:
        return None
    try:
        data = file.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 32
    blob = data[head:]
    if data[: len(_MAGIC)] != _MAGIC or hashlib.sha256(blob).digest() != data[len(_MAGIC) : head]:
        log.debug("ignoring %s: not a whole executable", file)
        return None
    try:
        from jax.experimental import serialize_executable

        payload, in_tree, out_tree = pickle.loads(blob)
        import jax

        # on the one device it was compiled for (by default JAX loads it for all of them:
        # with two, every call failed, "Expected args ... to have 2 shards")
        compiled = serialize_executable.deserialize_and_load(
            payload, in_tree, out_tree, execution_devices=jax.devices()[:1]
        )
    except Exception as err:
        log.debug("ignoring %s: %s", file, err)
        return None
    with contextlib.suppress(OSError):
        os.utime(file)  # used now: the last to go when the cache is pruned
    return compiled


def ready_lapack() -> None:
    """Set up JAX's LAPACK kernels (the function pointers it takes from scipy), as lowering a
    linear-algebra operation does: a loaded executable calling them without it crashes."""
    global _LAPACK_READY
    if _LAPACK_READY:
        return
    import jax

    if jax.default_backend() != "cpu":  # CPU kernels only
        _LAPACK_READY = True
        return
    try:
        from jax._src.lax import linalg  # JAX sets LAPACK up when it lowers; nothing public

        linalg.initialize_lapack()
    except (ImportError, AttributeError):  # another JAX: lower a Cholesky decomposition
        import numpy as np

        jax.jit(jax.numpy.linalg.cholesky).lower(np.eye(1))
    _LAPACK_READY = True


class _Prefetch:
    """The kernels one command is expected to call, loading on a thread: ``named`` is set
    once ``alias`` and ``names`` are known, ``loads[name]`` holds each one's load."""

    def __init__(self, store: Path, alias_of: Callable[[], str], core: int | None):
        self.alias: str | None = None
        self.names: list[str] = []
        self.named = threading.Event()
        self.loads: dict[str, Future] = {}
        self.thread = threading.Thread(
            target=self._run, args=(store, alias_of, core), name="diffhep-prefetch", daemon=True
        )
        self.thread.start()

    def _run(self, store, alias_of, core):
        try:
            if core is not None:
                with contextlib.suppress(AttributeError, OSError):
                    os.sched_setaffinity(0, {core})  # this thread only (Linux)
            self.alias = alias_of()
            with contextlib.suppress(OSError):
                text = (store / "aliases" / self.alias).read_text()
                self.names = _unique(n for n in text.split() if n.endswith(".exe") and "/" not in n)
            self.loads = {name: Future() for name in self.names}
        except Exception as err:  # never the command's failure
            log.debug("prefetch: %s", err)
        finally:
            self.named.set()
        for name, done in list(self.loads.items()):  # (take pops them meanwhile)
            try:
                done.set_result(load(store / name))
            except Exception as err:
                log.debug("prefetch: %s", err)
                done.set_result(None)


_PREFETCH: _Prefetch | None = None
_CALLED: list[str] = []  # the executables asked for since the prefetch started, in order


def prefetch(kind: str, workspace: str | os.PathLike, options, *, core: int | None = None):
    """Load, on a thread, the kernels the last command ``kind`` with ``options`` called on a
    workspace file of the same bytes as ``workspace`` (on CPU core ``core``, if given)."""
    global _PREFETCH
    if _STORE is None:
        return

    def alias_of() -> str:
        h = hashlib.sha256(f"{kind}|{options!r}|".encode())
        with open(workspace, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:32]

    _PREFETCH = _Prefetch(_STORE, alias_of, core)
    if not _THREADS:  # once: a command that ends early (an error, exit 2) waits for the load,
        atexit.register(_join)  # XLA's objects are not destroyed under a thread still
    _THREADS[:] = [t for t in _THREADS if t.is_alive()]  # deserialising (a quick exit,
    _THREADS.append(_PREFETCH.thread)  # os._exit, needs not)


_THREADS: list[threading.Thread] = []


def _join() -> None:
    for thread in _THREADS:
        thread.join(30.0)


def take(file: Path | None):
    """The prefetched :class:`jax.stages.Compiled` of ``file`` (waiting for its load), or
    ``None`` where it was not prefetched."""
    p = _PREFETCH
    if file is None or p is None:
        return None
    _CALLED.append(file.name)
    p.named.wait()
    done = p.loads.pop(file.name, None)  # (taken once: the memory goes with the command)
    return None if done is None else done.result()


def remember() -> None:
    """Record the kernels this command called under its prefetch's alias, for the next; the
    prefetch is over (:func:`forget`)."""
    p = _PREFETCH
    called = _unique(_CALLED)
    forget()
    if p is None or _STORE is None or not called:
        return
    p.named.wait()
    if p.alias is None or p.names == called:
        return
    from ..writers import write_atomic

    with contextlib.suppress(OSError):
        (_STORE / "aliases").mkdir(parents=True, exist_ok=True)
        write_atomic(_STORE / "aliases" / p.alias, "\n".join(called) + "\n")


def forget() -> None:
    """End the command's prefetch without recording anything (a command that failed; a
    process that runs several commands, the worker, starts each without one)."""
    global _PREFETCH
    _PREFETCH = None
    _CALLED.clear()


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
