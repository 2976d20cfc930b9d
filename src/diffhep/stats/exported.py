"""Compiled statistical kernels stored on disk per model *structure*, so that a command on
another workspace of the same structure (every signal point of one analysis) traces and
compiles nothing.

JAX's persistent compilation cache skips XLA's compilation, but not Python's tracing of the
kernel, which costs seconds for a hypothesis test (nested while loops, vmapped restarts). Here a
kernel is traced once per structure, exported with :mod:`jax.export` as StableHLO and written
to ``<store>/<key>.bin`` (the CLI's store is ``<compilation cache>/exported``), and its
compiled executable beside it (:mod:`diffhep.stats.executables`): later commands load that
and call it, without tracing, lowering or compiling.

The key is everything the traced program depends on and nothing else: the kernel and its
static options, the model's index tables, its configuration (but for ``symmetric``, an array
input: ``Model.symmetric_pars``) with the names of channels, samples, modifiers and parameters
replaced by their rank among them (so points whose signal sample is called
``sbottom_1300_850_60`` or ``sbottom_1000_600_60`` share a structure, while any behaviour that
depends on names, through equality or order, is unchanged; modifier types and interpolation
codes count as they are), the shapes and dtypes of the arrays, the versions of jax and
jaxlib, the platform, JAX's settings that change tracing (those its own ``jit`` cache keys
on), and a hash of the sources of :mod:`diffhep.stats` (a code change makes new entries).
Templates, data and the tested POI value are arguments, never constants.

The public fits and tests (``fit``, ``hypotest``, ...) run through :func:`compiled`: called
from plain Python they are compiled once per structure (in memory, the :data:`MAX_LOADED`
most recently used, and in the store where one is set: the CLI's, or
``diffhep.enable_cache()``), inside a transformation inline.

Example:
    >>> import copy
    >>> import diffhep
    >>> from diffhep.stats import exported
    >>> from diffhep.stats.workspace import builtin_example
    >>> diffhep.enable_x64()
    >>> spec, patch = builtin_example()
    >>> other = copy.deepcopy(patch)  # another signal point: only the sample name differs
    >>> for op in other:
    ...     if op["op"] == "add":
    ...         op["value"]["name"] = "sbottom_1000_600_60"
    >>> key = exported.structure_key(diffhep.Workspace(spec).patched(patch).model())
    >>> key == exported.structure_key(diffhep.Workspace(spec).patched(other).model())
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ..writers import write_atomic
from . import executables

__all__ = [
    "cache_dir",
    "call",
    "compiled",
    "set_cache_dir",
    "set_compile_context",
    "structure_key",
]

log = logging.getLogger(__name__)

_LOADED: dict[str, Callable] = {}  # key -> jitted call of the exported kernel, oldest first
_LOADED_STORE: Path | None = None  # the store the kernels of _LOADED were stored in
#: Kernels kept in memory (a long process, e.g. the worker, sees many structures): the least
#: recently used goes first, and is loaded from the store (or compiled) again if needed
MAX_LOADED = 64
_JITTED: dict[Callable, Callable] = {}  # kernel -> its filter_jit (without a store)
_SOURCES: str | None = None
_CONFIGS: dict = {}  # model configuration -> its digest in structure keys


def set_cache_dir(path: str | os.PathLike | None) -> None:
    """Store exported kernels under ``path`` (``None`` switches the store off)."""
    executables.set_store(path)


#: Run the first call of each new kernel within a context (:mod:`executables`' function)
set_compile_context = executables.set_compile_context


def cache_dir() -> Path | None:
    """The directory of exported kernels, or ``None`` when the store is off."""
    return executables.store()


def _sources_hash() -> str:
    global _SOURCES
    if _SOURCES is None:
        h = hashlib.sha256()
        for f in sorted(Path(__file__).parent.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _SOURCES = h.hexdigest()
    return _SOURCES


def _strings(value, out: set) -> None:
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _strings(v, out)


def _ranked(value, rank: dict):
    if isinstance(value, str):
        return ("#", rank[value])
    if isinstance(value, (tuple, list)):
        return tuple(_ranked(v, rank) for v in value)
    return value


#: Fields of the configuration that compiled programs read from an array of the model, not
#: as constants: ``symmetric`` (``Model.symmetric_pars``); not part of the key
_INPUTS = frozenset({"symmetric"})
#: Fields of names (of channels, samples, modifiers, parameters), replaced by their rank
_NAMES = frozenset({"channels", "samples", "par_order", "poi_name", "auxdata_order",
                    "normsys_keys", "histosys_keys", "staterror_keys"})  # fmt: skip
#: Fields of (name, value) pairs: the name ranked, the value (a bin count, a modifier type)
#: kept. Every other field is kept as it is: modifier types, kinds and interpolation codes
#: (``modifier_settings``) are constants of the compiled program, not names
_NAMED = frozenset({"channel_nbins_items", "modifiers"})


def _config_digest(config) -> bytes:
    """Digest of the model's configuration (without :data:`_INPUTS`) with names replaced by
    their rank (every point of an exclusion has a signal sample of another name, and the
    same compiled program). Remembered by value."""
    try:
        found = _CONFIGS.get(config)
        hashable = True
    except TypeError:  # an unhashable configuration: computed every time
        found, hashable = None, False
    if found is not None:
        return found
    names: set = set()
    for name in _NAMES:
        _strings(getattr(config, name), names)
    for name in _NAMED:
        names.update(n for n, _ in getattr(config, name))
    rank = {name: i for i, name in enumerate(sorted(names))}

    def field(name, value):
        if name in _NAMES:
            return _ranked(value, rank)
        if name in _NAMED:
            return tuple((("#", rank[n]), v) for n, v in value)
        return value

    values = tuple(
        field(f.name, getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.name not in _INPUTS
    )
    found = hashlib.sha256(repr(values).encode()).digest()
    if hashable:
        if len(_CONFIGS) >= 256:  # bounded: a long process sees many structures
            _CONFIGS.clear()
        _CONFIGS[config] = found
    return found


def structure_key(model, *args, **static) -> str:
    """A hex digest that is equal for two calls exactly when their traced programs are.

    Args:
        model: A :class:`~diffhep.stats.model.Model` (possibly stacked along a batch axis).
        *args: The other array arguments of the kernel (their shapes and dtypes count).
        **static: Static options of the kernel (their ``repr`` counts).
    """
    h = hashlib.sha256()
    h.update(_config_digest(model.config))
    tables = model.tables
    for name in tables._names:
        a = getattr(tables, name)
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    for leaf in jax.tree.leaves((eqx.filter(model, eqx.is_array), args)):
        h.update(f"{np.shape(leaf)}{jax.numpy.result_type(leaf)}".encode())
    h.update(repr(sorted(static.items())).encode())
    h.update(f"{jax.__version__}|{jax.lib.__version__}|{jax.default_backend()}".encode())
    h.update(f"x64={jax.config.jax_enable_x64}|{_sources_hash()}".encode())
    h.update(_tracing_settings().encode())
    return h.hexdigest()[:32]


def _tracing_settings() -> str:
    """JAX's settings that change a traced program, as JAX's own ``jit`` cache keys on them
    (the default matmul precision, the PRNG's implementation and partitioning, ...): their
    values, without objects that differ between processes (printed with an address)."""
    try:
        from jax._src import config  # JAX has no public list of them

        context = config.trace_context()
    except (ImportError, AttributeError):  # another JAX: the public ones that matter most
        c = jax.config
        names = ("jax_default_matmul_precision", "jax_default_prng_impl",
                 "jax_threefry_partitionable", "jax_numpy_dtype_promotion")  # fmt: skip
        context = tuple(getattr(c, n, None) for n in names)
    return repr(tuple(v for v in context if " at 0x" not in repr(v)))


#: XLA's older CPU emitters: its newer ones build an MLIR pass pipeline per fusion, and a
#: hypothesis test of sbottom RegionA compiled in 71-77 s instead of 114-127 s (pinned, loaded
#: machine) with the same CLs and the same warm time; a jit(fit) 2.3 instead of 6.2 s of CPU.
_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_OPTIONS_KNOWN: bool | None = None  # whether this jaxlib accepts them (its first compile says)


def _options() -> dict | None:
    if _OPTIONS_KNOWN is False or jax.default_backend() != "cpu":
        return None
    return _CPU_COMPILER_OPTIONS


def _with_options(build: Callable[[dict | None], Any]) -> Any:
    """``build(options)`` with :data:`_CPU_COMPILER_OPTIONS` on CPU, ``build(None)`` where this
    jaxlib does not know them (it says so at the first compilation)."""
    global _OPTIONS_KNOWN
    options = _options()
    if options is None:
        return build(None)
    try:
        return build(options)
    except jax.errors.JaxRuntimeError as err:
        if "compile option" not in str(err):
            raise
        _OPTIONS_KNOWN = False
        return build(None)


def _jit(fn: Callable) -> Callable:
    """``jax.jit(fn)`` compiled with :func:`_with_options`' options."""
    plain, fast = jax.jit(fn), jax.jit(fn, compiler_options=_CPU_COMPILER_OPTIONS)
    return lambda *args: _with_options(lambda o: (plain if o is None else fast)(*args))


def _jitted(kernel: Callable) -> Callable:
    fn = _JITTED.get(kernel)
    if fn is None:
        fn = _JITTED[kernel] = eqx.filter_jit(kernel)
    return fn


def _spec(x):
    return jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x))


def _compile(fn: Callable, *args):
    """``(compiled, cached)`` of :func:`executables.xla_compile` with :func:`_with_options`'
    options."""
    return _with_options(lambda options: executables.xla_compile(fn, *args, options=options))


def _guarded(compiled, fallback: Callable[[], Callable]) -> Callable:
    """Call ``compiled``; where it refuses the arguments (arrays on another device than the
    one it was compiled for: a ValueError; types it was not compiled for: a TypeError), the
    jitted kernel of ``fallback()`` from then on (it follows its arguments' devices)."""
    jitted: list[Callable] = []

    def run(*args):
        if not jitted:
            try:
                return compiled(*args)
            except (TypeError, ValueError):
                jitted.append(fallback())
        return jitted[0](*args)

    return run


def call(kernel: Callable, model, *args, **static) -> Any:
    """``kernel(model, *args, **static)``, from the store when its structure was seen before.

    ``kernel`` must be a module-level function returning arrays in tuples, lists or dicts
    (what :mod:`jax.export` serialises), and ``args`` arrays. Without a store
    (:func:`set_cache_dir`) the kernel is jitted in memory per structure (models that differ
    only in their names share one compilation); when it cannot be exported, it runs under
    :func:`equinox.filter_jit` as usual. With a store, its compiled executable is kept there
    too (:mod:`diffhep.stats.executables`) and loaded, or taken from the command's prefetch,
    without lowering the program again.
    """
    global _LOADED_STORE
    key = f"{kernel.__module__}.{kernel.__qualname__}-" + structure_key(model, *args, **static)
    arrays, rest = eqx.partition(model, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    store = executables.store()
    if store != _LOADED_STORE:  # kernels compiled in memory so far: stored at their next call
        _LOADED.clear()
        _LOADED_STORE = store
    fn = _LOADED.pop(key, None)
    if fn is not None:
        _LOADED[key] = fn  # the most recently used last
        return fn(leaves, *args)
    while _LOADED and len(_LOADED) >= MAX_LOADED:
        _LOADED.pop(next(iter(_LOADED)))

    def flat(leaves, *args):
        m = eqx.combine(jax.tree.unflatten(treedef, leaves), rest)
        return kernel(m, *args, **static)

    if store is None:
        fn = _LOADED[key] = _jit(flat)
        with executables.compile_context():
            return fn(leaves, *args)
    path = store / f"{key}.bin"

    def program():
        """The exported program: from the store, else traced and stored (None: not
        exportable)."""
        if path.exists():
            try:
                exp = jax.export.deserialize(bytearray(path.read_bytes()))
                with contextlib.suppress(OSError):
                    os.utime(path)  # used now: the last to go when the cache is pruned
                return exp
            except Exception as err:  # a damaged or foreign entry: rebuild it
                log.debug("ignoring %s: %s", path, err)
        try:
            exp = jax.export.export(jax.jit(flat))(
                [_spec(x) for x in leaves], *jax.tree.map(_spec, args)
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, bytes(exp.serialize()))
            return exp
        except Exception as err:  # not exportable here: run it as usual
            log.debug("kernel %s not exported: %s", key, err)
            return None

    def jitted() -> Callable:
        exp = program()
        return _jit(flat if exp is None else exp.call)  # (leaves, *args), as the executable

    exe = executables.path(key, _options())
    with executables.compile_context():
        executables.ready_lapack()  # (while a prefetch may still load: set up meanwhile)
        compiled = executables.take(exe) or executables.load(exe)
        if compiled is None:
            exp = program()
            if exp is None:
                return _jitted(kernel)(model, *args, **static)
            compiled, cached = _compile(exp.call, leaves, *args)
            if not cached:
                executables.save(exe, compiled)
        fn = _LOADED[key] = _guarded(compiled, jitted)
        out = fn(leaves, *args)
    return out


def compiled(kernel: Callable, model, *args, **static) -> Any:
    """``kernel(model, *args, **static)``: through :func:`call` (traced and compiled once per
    model structure) when nothing is traced, inline where the model or an argument is
    (under ``jit``, ``vmap`` or a derivative the caller's program includes the kernel).

    What the public fits and tests run on: called from plain Python, op by op, their loops
    were traced and compiled again at every call (a hypothesis test of sbottom RegionA 5.9-7.0 s
    a call, pyhf's numpy backend 1.8-2.1 s: benchmarks/python_calls.py), here once per
    structure (then ~20 ms). Inside a trace a nested compiled call is not used: its trace
    would be cached across calls and change the constants of the enclosing program
    (:func:`diffhep.stats.uncertainties.nll`).
    """
    if _tracing() or any(
        isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((model, args, static))
    ):
        return kernel(model, *args, **static)
    return call(kernel, model, *args, **static)


def _tracing() -> bool:
    """Whether a transformation (``jit``, ``vmap``, a derivative, a loop's body) is being
    traced, even where the kernel's own inputs are constants (a model closed over)."""
    try:
        from jax._src import core  # JAX has no public test of this

        return not core.trace_ctx.is_top_level()
    except (ImportError, AttributeError):  # another JAX: under jit a new array is a tracer
        return isinstance(jax.numpy.zeros(()), jax.core.Tracer)
