"""Whole commands, as a user runs them (issue 21): ``diffhep`` next to ``pyhf`` in one run.

- ``--help`` of both (and ``python -X importtime`` top entries of ``diffhep --help``);
- ``cls`` on the published sbottom RegionA likelihood (one signal patch) and on a small model
  (pyhf's 2-bin example), diffhep with a cold and a warm persistent compilation cache (a
  fresh ``DIFFHEP_CACHE_DIR``), pyhf on its numpy backend;
- the same ``cls`` commands at a terminal: the first starts the worker, which runs the next;
- ``diffhep exclusion`` over all RegionA patches against ``pyhf cls`` on 10 patches,
  extrapolated to all;
- where the time of one ``diffhep cls`` goes (:func:`_timeline`): the command run in a child
  process whose stages (imports, set-up, workspace, model, tracing and lowering, LAPACK set-up,
  compilation-cache read or XLA compilation, the rest) are timed by wrapping JAX's functions.

Writes docs/benchmarks-commands.md (the command line and the machine load included).

    python benchmarks/commands.py [--repeats 3] [--output docs/benchmarks-commands.md]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT / "tests" / "data" / "pyhf-ins1748602-probability-models.tar.gz"
BIN = Path(sys.executable).parent


#: CPU seconds (user + system) of every command run, by its label (the load-robust figure).
CPU: dict[str, list[float]] = {}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd, env=None, label=None) -> tuple[float, subprocess.CompletedProcess]:
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-2000:]}")
    if label is not None:
        CPU.setdefault(label, []).append(_children_cpu() - c0)
    return dt, proc


def _median(cmd, repeats, env=None, label=None) -> float:
    return statistics.median(_run(cmd, env, label)[0] for _ in range(repeats))


def _cpu(label) -> str:
    return f"{statistics.median(CPU[label]):.2f}" if label in CPU else ""


def _importtime(n=8) -> list[tuple[str, float]]:
    _, proc = _run([sys.executable, "-X", "importtime", "-m", "diffhep", "--help"])
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = (p.strip() for p in line[len("import time:") :].split("|"))
            if cum.isdigit():
                rows.append((name, int(cum) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


#: Functions timed in the child of :func:`_timeline` (module, attribute, stage); nested ones
#: (LAPACK set-up inside lowering) are subtracted from the stage around them.
_STAGES = [
    ("diffhep.stats.workflows", "load_workspace", "read and patch the workspace"),
    ("diffhep.stats.workflows", "_model_and_data", "build the model"),
    ("jax", "export.export", "trace the kernel (cold)"),
    ("jax", "export.deserialize", "read the stored kernel"),
    ("diffhep.stats.executables", "take", "wait for the prefetched executable"),
    ("diffhep.stats.executables", "load", "load the stored executable"),
    ("diffhep.stats.executables", "save", "store the executable (cold)"),
    ("jax._src.interpreters.mlir", "lower_jaxpr_to_module", "lowering to StableHLO"),
    ("jaxlib.lapack", "_lapack.initialize", "LAPACK set-up (imports scipy.linalg)"),
    ("jax._src.compilation_cache", "get_executable_and_time", "compilation cache: load"),
    ("jax._src.compiler", "backend_compile_and_load", "XLA compilation (cold)"),
    ("diffhep.cli.stats", "output", "write the JSON"),
]


def _timeline_child(argv: list[str]) -> None:
    """Run ``diffhep ARGV`` in this process with the functions of :data:`_STAGES` timed; print
    the stages (wall and CPU seconds) as JSON on stderr's last line."""
    import contextlib
    import importlib
    import threading

    t0, c0 = time.perf_counter(), time.process_time()
    spent: dict[str, list[float]] = {}
    stack: list[list[float]] = []  # [wall, cpu] of the nested stages of each open stage

    def timed(fn, stage):
        def run(*a, **k):
            if threading.current_thread() is not threading.main_thread():  # overlapped
                w = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    key = f"{stage}, on the prefetch thread (overlapped; not in the total)"
                    spent.setdefault(key, [0.0, float("nan")])[0] += time.perf_counter() - w
            w, c = time.perf_counter(), time.process_time()
            stack.append([0.0, 0.0])
            try:
                return fn(*a, **k)
            finally:
                inner = stack.pop()
                dw, dc = time.perf_counter() - w, time.process_time() - c
                tot = spent.setdefault(stage, [0.0, 0.0])
                tot[0] += dw - inner[0]
                tot[1] += dc - inner[1]
                if stack:
                    stack[-1][0] += dw
                    stack[-1][1] += dc

        return run

    def _timed_result(fn, stage):
        return lambda *a, **k: timed(fn(*a, **k), stage)

    def done():
        spent["(total in Python)"] = [time.perf_counter() - t0, time.process_time() - c0]
        print(json.dumps(spent), file=sys.stderr, flush=True)

    from diffhep.cli import common, main

    spent["import diffhep.cli"] = [time.perf_counter() - t0, time.process_time() - c0]
    real_setup, real_prefetching = common.setup, common.prefetching

    def setup():
        w, c = time.perf_counter(), time.process_time()
        import jax  # noqa: F401 (the set-up's first import)

        spent["import JAX"] = [time.perf_counter() - w, time.process_time() - c]
        w, c = time.perf_counter(), time.process_time()
        real_setup()
        spent["set-up (cache, threads, JAX's CPU client)"] = [
            time.perf_counter() - w,
            time.process_time() - c,
        ]

    @contextlib.contextmanager
    def prefetching(*args):
        w, c = time.perf_counter(), time.process_time()
        with real_prefetching(*args):
            spent["start the prefetch (a thread)"] = [
                time.perf_counter() - w,
                time.process_time() - c,
            ]
            w, c = time.perf_counter(), time.process_time()
            import diffhep.stats.workflows  # noqa: F401 (the command's next step)

            spent["imports of the statistics (equinox, diffhep.stats)"] = [
                time.perf_counter() - w,
                time.process_time() - c,
            ]
            _wrap_stages()
            yield

    def _wrap_stages():
        for module, attr, stage in _STAGES:
            owner = importlib.import_module(module)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            if not hasattr(owner, name):  # JAX's private functions may move
                continue
            fn = getattr(owner, name)
            wrap = _timed_result if attr == "export.export" else timed  # export: its result traces
            setattr(owner, name, wrap(fn, stage))

    common.setup, common.prefetching = setup, prefetching
    real_exit = os._exit

    def quick_exit(code):
        done()
        real_exit(code)

    os._exit = quick_exit
    sys.argv = ["diffhep", *argv]
    try:
        main()
    finally:
        done()


def _timeline(cmd: list[str], env: dict) -> list[tuple[str, float, float]]:
    """Stages of ``diffhep CMD`` (wall s, CPU s), from a child running
    :func:`_timeline_child`; "interpreter start-up" is the command's wall time before it."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--timeline-child", *cmd],
                          capture_output=True, text=True, env={**os.environ, **env})  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"timeline of {cmd} failed:\n{proc.stderr[-2000:]}")
    spent = json.loads(proc.stderr.strip().splitlines()[-1])
    total_w, total_c = spent.pop("(total in Python)")
    rows = [("interpreter start-up and exit", wall - total_w, float("nan"))]
    rows += [(k, w, c) for k, (w, c) in spent.items()]
    own = [(w, c) for k, w, c in rows[1:] if "overlapped" not in k]
    named_w, named_c = sum(w for w, _ in own), sum(c for _, c in own)
    rows.append(("the rest (execution of the kernel, glue)", total_w - named_w, total_c - named_c))
    rows.append(("whole command", wall, float("nan")))
    return rows


def _small_workspace(tmp: Path) -> Path:
    from diffhep.stats.workspace import example_spec

    path = tmp / "small.json"
    path.write_text(json.dumps(example_spec()))
    return path


#: Imports of a ``cls`` command, each including those before it (:func:`_import_ladder`)
_LADDER = [
    ("Python alone", "pass"),
    ("numpy", "import numpy"),
    ("jaxlib (XLA's C++ extension)", "import jaxlib._jax"),
    ("jax", "import jax"),
    ("jax + scipy.linalg (JAX's LAPACK set-up imports it)", "import jax, scipy.linalg"),
    ("equinox (imports jax)", "import equinox"),
    ("diffhep.stats.workflows (the cls command's imports)", "from diffhep.stats import workflows"),
    ("pyhf (for comparison; its cls imports more)", "import pyhf"),
]


def _import_ladder(repeats: int = 5) -> list[tuple[str, float, float]]:
    """Wall and CPU seconds of ``python -c IMPORT`` (least of ``repeats``: the cost itself,
    not the load's) for each of :data:`_LADDER`."""
    out = []
    for label, stmt in _LADDER:
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = _children_cpu(), time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True)
            walls.append(time.perf_counter() - t0)
            cpus.append(_children_cpu() - c0)
        out.append((label, min(walls), min(cpus)))
    return out


def _ladder_lines(ladder) -> list[str]:
    return [
        "",
        "What importing costs (`python -c IMPORT`, least of 5 runs; each row includes the "
        "imports above it that it needs):",
        "",
        "| import | wall (s) | CPU (s) |",
        "|---|---|---|",
        *(f"| {label} | {w:.3f} | {c:.3f} |" for label, w, c in ladder),
        "",
    ]


def _timelines(tmp: Path, bkg: Path, patch: Path, small: Path) -> dict:
    """The stages of ``cls`` on the small model (warm) and sbottom RegionA (cold, warm)."""
    out = {}
    for label, cmd in (("small model, warm", ["cls", str(small)]),
                       ("sbottom RegionA, cold", ["cls", str(bkg), "-p", str(patch)]),
                       ("sbottom RegionA, warm", ["cls", str(bkg), "-p", str(patch)])):  # fmt: skip
        env = {"DIFFHEP_CACHE_DIR": str(tmp / f"cache-timeline-{label.split(',')[0]}")}
        if "warm" in label and "small" in label:
            _run([str(BIN / "diffhep"), *cmd], env)  # fill the cache
        out[label] = _timeline(cmd, env)
    return out


def _timeline_lines(timelines: dict) -> list[str]:
    labels = list(timelines)
    last = ("the rest (execution of the kernel, glue)", "whole command")
    stages = list(dict.fromkeys(k for rows in timelines.values() for k, _, _ in rows))
    stages = [k for k in stages if k not in last] + list(last)
    by = {lab: {k: (w, c) for k, w, c in rows} for lab, rows in timelines.items()}

    def cell(lab, k):
        w, c = by[lab].get(k, (0.0, 0.0))
        return f"{w:.3f}" + ("" if c != c else f" ({c:.3f})")  # c != c: NaN, not measured

    return [
        "",
        "Where the time of one `diffhep cls` goes: the command in a child process whose stages "
        "are timed by wrapping diffhep's and JAX's functions (`benchmarks/commands.py "
        "--timeline-only` prints this table alone). Wall seconds, CPU seconds in parentheses; "
        "a stage nested in another (LAPACK set-up inside lowering) is counted once; what the "
        "prefetch thread does overlaps the main thread and is not in the whole command's sum.",
        "",
        "| stage | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        *(f"| {k} | " + " | ".join(cell(lab, k) for lab in labels) + " |" for k in stages),
        "",
    ]


def _verdict(rows, timelines, ladder) -> list[str]:
    """Issue 21's whole-command targets for ``cls``, from this run's numbers."""
    by = {label: (warm, cold, ref) for label, warm, cold, ref in rows}
    stage = {lab: {k: w for k, w, _ in r} for lab, r in timelines.items()}
    imports = {label: w for label, w, _ in ladder}
    warm, _, ref = by["`cls` small model (2 bins)"]
    small = stage["small model, warm"]
    jax_import = imports["jax"] - imports["Python alone"]
    warm_sb, cold, ref_sb = by["`cls` sbottom RegionA (1 patch)"]
    sb = stage["sbottom RegionA, cold"]
    w_small = by["`cls` small model, worker running"][0]
    w_sb = by["`cls` sbottom RegionA, worker running"][0]

    def met(x, target):
        return "met" if x <= target else "not met"

    return [
        "Issue 21's targets for `cls` in this run:",
        "",
        f"- small model, warm cache: {warm:.2f} s, target 0.5 x pyhf's {ref:.2f} s = "
        f"{0.5 * ref:.2f} s: {met(warm, 0.5 * ref)}. Importing JAX alone takes "
        f"{jax_import:.2f} s (import table), in the command "
        f"{small['import JAX']:.2f} s, the statistics' imports "
        f"{small['imports of the statistics (equinox, diffhep.stats)']:.2f} s and waiting for "
        f"the compiled program {small.get('wait for the prefetched executable', 0.0):.2f} s "
        "(timeline)"
        + (
            ": JAX's import alone exceeds the target, a command that imports JAX cannot meet it."
            if jax_import > 0.5 * ref
            else "."
        ),
        f"- small model, the next commands at a terminal (the worker the first started): "
        f"{w_small:.2f} s, target "
        f"{0.5 * ref:.2f} s: {met(w_small, 0.5 * ref)}; sbottom RegionA {w_sb:.2f} s, target "
        f"{0.5 * ref_sb:.2f} s: {met(w_sb, 0.5 * ref_sb)} (the first command, which starts "
        "the worker, and another signal point: rows above).",
        f"- sbottom RegionA, warm cache: {warm_sb:.2f} s, target 0.5 x pyhf's {ref_sb:.2f} s "
        f"= {0.5 * ref_sb:.2f} s: {met(warm_sb, 0.5 * ref_sb)}.",
        f"- sbottom RegionA, cold cache: {cold:.2f} s, target 1.5 x pyhf's {ref_sb:.2f} s = "
        f"{1.5 * ref_sb:.2f} s: {met(cold, 1.5 * ref_sb)}. Of it XLA's compilation "
        f"{sb['XLA compilation (cold)']:.2f} s, tracing {sb['trace the kernel (cold)']:.2f} s, "
        f"lowering {sb['lowering to StableHLO']:.2f} s (timeline).",
        "",
    ]


#: Measured once (not by this script), 2026-12-05 00:00-00:20 UTC, load 9-13, pinned:
#: what was tried to shorten the cold compilation and the warm start, and why it is not used.
NOTES = [
    "Tried and not used (measured 2026-12-05 on the loaded machine, CPU seconds, pinned; "
    "not by this script):",
    "",
    "- XLA's LLVM options `xla_cpu_disable_loop_unrolling` and `xla_cpu_optimize_for_size` "
    "(through `XLA_FLAGS=--xla_backend_extra_options=...`; jax.jit's compiler options cannot "
    "set them) compile the sbottom RegionA hypothesis test in 3.4 instead of 5.7-5.9 s with "
    "the same warm time, but each changes the last digits of the results (floating-point "
    "contraction follows LLVM's pipeline): 94 of the 217 RegionA points of `exclusion` "
    "differ, by up to 1.1e-13 relative, and the fit's values. `xla_backend_optimization_level"
    "=0`: 2.0 s, 2.6x slower execution, other digits; level 1: 5.2 s (the same CLs on one "
    "point, not checked further); "
    "`xla_llvm_disable_expensive_passes`, `xla_cpu_parallel_codegen_split_count=1`: no gain. "
    "Measured again 2026-12-06 01:33 UTC (idle, whole commands, both options): cold `cls` "
    "sbottom RegionA 12.9 -> 9.6 s (the same CLs on that point), but the toy kernel runs "
    "23% slower (768 toys, warm: 53.3 -> 65.7 s), and XLA_FLAGS hold for a whole process "
    "(a kernel's compiler options reject the map field: INVALID_ARGUMENT), so the options "
    "would differ by command and the same point's CLs in its last digits between `cls`, "
    "`exclusion`, the worker and the library.",
    "- What is compiled: the sbottom RegionA hypothesis test lowers to ~5,000 StableHLO "
    "operations with one copy of the solver (the test's fits and all restarts are one loop "
    "body): about half are the solver's run, a quarter the restarts' probes "
    "(2026-12-06, counted by source line).",
    "- Compiling on both cores (done since 2026-12-05 12:20 UTC): XLA compiles a program's "
    "LLVM modules on a pool that a thread of its CPU client starts at the first compilation, "
    "one thread per core that thread may run on; the statistics commands pin XLA to one core "
    "(the kernels run faster there), so that was one thread. Every thread but XLA's intra-op "
    "pool is now let onto all cores for the first call of a new kernel and put back after "
    "(`cli.common._compiling_on_all_cores`): sbottom RegionA's modules on two threads (5.3 + "
    "5.3 CPU-s instead of 11.2 on one), byte-identical results.",
    "- The LAPACK set-up imports scipy.linalg (JAX's CPU LAPACK kernels take their routines "
    "from it): the hypothesis test calls LAPACK (Cholesky, eigh, triangular solve), so it "
    "is needed before the program runs.",
    "- Loading the compiled program from JAX's cache is XLA's deserialisation of the "
    "executable (~0.1 CPU-s for the 2-bin model's 0.8 MB, ~0.25 for sbottom's 2.7 MB; "
    "the same on a second load in one process): not file reading.",
    "- Storing the compiled executable itself (jax.experimental.serialize_executable, a pickle "
    "of JAX's internal objects) instead of the exported kernel would skip lowering its call "
    "and JAX's cache-key hashing: the 2-bin model's kernel ready and run in 190-212 instead "
    "of 267-284 CPU-ms (one process, pinned, load ~10), ~80 ms of a ~1 s command. Not done "
    "then (no target within reach by it; a format private to JAX); done on 2026-12-07 "
    "(`diffhep.stats.executables`) together with loading it on a thread while the command "
    "imports the statistics: XLA releases the GIL while it deserialises, and JAX's persistent "
    "cache had also decompressed its entry. A warm sbottom RegionA `cls` 0.89-0.92 -> "
    "0.66-0.70 s (five runs each, alternating, 08:51 UTC): the stored executable alone 0.80 s, "
    "the prefetch the rest. The executable stored is always XLA's own compilation: one that "
    "JAX's persistent cache returned serialised incompletely (a later command failed: "
    "'Function ... not found'; a review's finding), so the stored kernel compiles under its "
    "own name and is not written to JAX's cache (a cold `cls` also skips compressing a 2.7 MB "
    "cache entry: its 'rest' 0.20 -> 0.04 s). The worker's first command prefetches too (the "
    "worker imports the statistics with it): sbottom 1.10 -> 0.76 s in this table's run. "
    "Measured alternating, three runs each (2026-12-07 10:10 UTC, scratch): `exclusion` over "
    "the 217 RegionA patches prefetching 3.16-3.23 -> 2.91-3.02 s; the diagnostics "
    "prefetching, then ending without the interpreter's finalisation as `cls` does: pulls "
    "0.81-0.88 -> 0.59-0.64 s, ranking 1.20-1.26 -> 0.97-1.03 s, gof 1.21-1.29 -> 0.91-1.01 s, "
    "the same outputs.",
    "- Measured 2026-12-07 (idle machine, pinned, the sbottom RegionA hypothesis test "
    "jitted as the CLI compiles it; scratch scripts): `xla_cpu_disable_loop_unrolling` "
    "alone compiles it in 5.1 instead of 7.0 CPU-s with the same warm time (6.9 ms), but 95 "
    "of the 217 RegionA points of `exclusion` differ in their last digits (up to 1.6e-13 "
    "relative): the objection above. `xla_cpu_small_while_loop_byte_threshold` (XLA hoists "
    "a small while loop into one compiled function, without the CPU runtime's dispatch per "
    "operation): none of the test's loops is hoisted at any threshold (their bodies hold "
    "dots and LAPACK calls; a toy loop of elementwise operations is: 0.21 -> 0.11 ms), and "
    "threshold 0 makes the test slower (10.7 vs 7.5 ms). "
    "`xla_cpu_parallel_codegen_split_count` 2-256 on two cores: within the run-to-run "
    "spread. Where the compilation's CPU goes (perf, by symbol): LLVM's code generation "
    "about three times XLA's own HLO passes, no pass or function above 1%.",
    "- Measured 2026-12-07 06:20-07:40 UTC (another machine of the same kind, 2 cores; "
    "scratch scripts, pinned; the sbottom RegionA hypothesis test): (1) Where a warm "
    "test's time goes. `jax.profiler`, the kernel's compiler options: ~39,800 operations "
    "executed per test, 25,500 of them the iterations of two scatter-adds of the dense "
    "Hessian (the cross terms of a parameter in two categories, the normsys segment sum) "
    "that XLA's CPU backend turns into loops of one update per iteration (100 and 42 per "
    "Newton step). Rewritten as gathers and one reduction: no gain (one process, the two "
    "programs called in turn: 6.15 vs 6.28 ms with the kernel's options, 5.68 vs 6.25 ms "
    "with XLA's defaults): an iteration costs tens of nanoseconds, the profiler's own "
    "cost per event had inflated them. `perf` of the warm test under `jax.jit` (2,252 "
    "calls): XLA's generated code 43%, OpenBLAS/LAPACK 21% (eigh's divide and conquer, "
    "dgemm, dtrsm, potrf), XLA's runtime and its dot kernels 22% (the thunk executor "
    "~5%), malloc/free/memmove 7%, libm 4%: arithmetic and LAPACK, not the dispatch of "
    "small operations, dominate; no change of 2x (the 30x and 300x targets) is in sight "
    "within this solver. (2) `xla_backend_optimization_level=2` (a compiler option the "
    "kernel accepts; XLA's default is 3): the test compiles in 4.0-4.2 instead of 4.8-5.0 "
    "CPU-s with the same warm time (all 217 RegionA points, the same exported kernel "
    "compiled both ways, called in turn: 0.987x), but 109 of the 217 points differ in "
    "their last digits (up to 9.6e-14 relative); whole cold `cls` commands (fresh "
    "`DIFFHEP_CACHE_DIR`, alternating, 3 each) 4.66-5.40 s vs 4.78-5.68 s: within the "
    "spread. `pyhf cls` on the same point in the same minutes: 1.95-1.99 s, so the 1.5x "
    "target (2.9 s) is out of reach by compiler options (the XLA compilation alone takes "
    "longer). Not used. (3) Other compiler options the kernel accepts, one compilation "
    "each (CPU-s, the same CLs): alias-scope, noalias and invariant-load metadata off, "
    "`xla_cpu_prefer_vector_width=128`, `xla_cpu_copy_insertion_use_region_analysis`, "
    "`xla_cpu_enable_concurrency_optimized_scheduler`, "
    "`xla_llvm_force_inline_before_split` off, `xla_cpu_use_xnnpack` off, "
    "`xla_cpu_opt_preset=1`: 4.7-5.6 vs 4.9-5.0 at the defaults, within the spread. Not "
    "accepted as compiler options: `xla_cpu_small_while_loop_byte_threshold`, "
    "`xla_cpu_disable_loop_unrolling`, `xla_cpu_optimize_for_size`, "
    "`xla_cpu_disable_slp_vectorizer`; the first is not accepted in XLA_FLAGS either "
    '("Unknown flag"), so the threshold measurement of the line above could not be '
    "repeated (how it was set is not recorded). (4) JAX initialises LAPACK (importing "
    "scipy.linalg, ~0.12 s) for every exported call on CPU "
    "(`jax._src.export._export._ensure_backends_initialized`), whether or not the program "
    "calls LAPACK: a small model's kernel without LAPACK calls would not save it.",
    "- Measured 2026-12-07 13:50-14:00 UTC (scratch scripts, jaxlib 0.10.2): a warm "
    "command that does not import JAX at all, calling its stored XLA executable through "
    "jaxlib alone (`jaxlib._jax`: 0.07 s to import; the CPU client, LAPACK's "
    "registrations and the executable's deserialisation work without JAX, and so do the "
    "inputs, through `batched_device_put` with a stand-in sharding), is closed: the "
    "executable's results are arrays whose abstract values jaxlib's C++ makes with JAX's "
    "`ShapedArray` (`MakeShapedArrayCached` imports `jax._src.core`, and with it all of "
    "JAX) before any can be read. Every such command imports JAX (0.24-0.26 s in the "
    "command; 0.33-0.39 s alone, import table) and equinox (the model is an Equinox "
    "module; 0.08 s more), so the 2-bin target (0.32-0.34 s) is below the floor of a "
    "command in its own process; the worker (0.08 s) is the way there. Lazy imports of "
    "jsonschema (a text validated before is not validated again) and of JAX's special "
    "functions (only a trace needs them) took the statistics' imports from 0.133 to 0.104 "
    "CPU-s (medians of 12, alternating, the imports alone; 70f32a6): within the spread of "
    "whole commands.",
    "",
]


def _worker_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the worker process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_worker(diffhep, label, cmd, env, tmp, ref, repeats) -> list[tuple]:
    """Rows of ``cmd`` with the worker: the first command, which starts it (as at a terminal:
    ``DIFFHEP_WORKER_START=always``, the benchmark has none) and is run by it, the same
    command again (median), and for sbottom another signal point of the same structure
    (first run on it). Same compilation cache as ``env``. Their CPU times are the client's
    plus the worker's during the command (the first: the worker's start-up too)."""
    env = {**env, "DIFFHEP_WORKER_DIR": str(tmp / "worker"), "DIFFHEP_WORKER_START": "always"}
    base = label.split(",")[0].split(" (")[0]
    first = f"{base}, first command (starts the worker)"
    out = [(first, _run([diffhep, *cmd], env, first)[0])]
    pid = json.loads(_run([diffhep, "worker", "status"], env)[1].stdout)["pid"]
    CPU[first][-1] += _worker_cpu(pid)

    def timed(command, row, n=1):
        walls = []
        for _ in range(n):
            w0 = _worker_cpu(pid)
            walls.append(_run([diffhep, *command], env, row)[0])
            CPU[row][-1] += _worker_cpu(pid) - w0
        return statistics.median(walls)

    try:
        again = f"{base}, worker running"
        out.append((again, timed(cmd, again, repeats)))
        if "-p" in cmd:
            other = [c.replace("1300_850_60", "1400_550_60") for c in cmd]
            row = f"{base}, worker running, next point (first run on it)"
            out.append((row, timed(other, row)))
    finally:
        _run([diffhep, "worker", "stop"], env)
    for row, _ in out:
        CPU[row + " pyhf"] = CPU[label + " pyhf"]
    return [(row, wall, None, ref) for row, wall in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks-commands.md"))
    ap.add_argument("--timeline-only", action="store_true",
                    help="only the stages of cls commands (printed, no file written)")  # fmt: skip
    if sys.argv[1:2] == ["--timeline-child"]:
        _timeline_child(sys.argv[2:])
        return
    args = ap.parse_args()
    diffhep, pyhf = str(BIN / "diffhep"), str(BIN / "pyhf")
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="diffhep-bench-"))
    with tarfile.open(TARBALL, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    region = Path(next(iter(glob.glob(str(tmp / "**" / "RegionA"), recursive=True))))
    bkg, patches = region / "BkgOnly.json", sorted(region.glob("patch.*.json"))
    patch = region / "patch.sbottom_1300_850_60.json"
    small = _small_workspace(tmp)
    rows = []
    timelines = _timelines(tmp, bkg, patch, small)
    ladder = _import_ladder()
    if args.timeline_only:
        print("\n".join(_timeline_lines(timelines) + _ladder_lines(ladder)))
        return

    help_d = _median([diffhep, "--help"], args.repeats, label="`--help`")
    help_p = _median([pyhf, "--help"], args.repeats, label="`--help` pyhf")
    rows.append(("`--help`", help_d, None, help_p))
    for label, cmd in (
        ("`cls` sbottom RegionA (1 patch)", ["cls", str(bkg), "-p", str(patch)]),
        ("`cls` small model (2 bins)", ["cls", str(small)]),
    ):
        cache = tmp / f"cache-{len(rows)}"
        env = {"DIFFHEP_CACHE_DIR": str(cache)}
        cold = _run([diffhep, *cmd], env)[0]
        warm = _median([diffhep, *cmd], args.repeats, env, label)
        ref = _median([pyhf, *cmd, "--backend", "numpy"], args.repeats, label=label + " pyhf")
        rows.append((label, warm, cold, ref))
        served = _with_worker(diffhep, label, cmd, env, tmp, ref, args.repeats)
        if "-p" in cmd:  # another signal point of the same structure (192 of the 217 are)
            other = region / "patch.sbottom_1400_550_60.json"
            cmd = ["cls", str(bkg), "-p", str(other)]
            label = "`cls` sbottom RegionA, next point (first run on it)"
            nxt = _run([diffhep, *cmd], env, label)[0]
            ref = _median([pyhf, *cmd, "--backend", "numpy"], args.repeats, label=label + " pyhf")
            rows.append((label, nxt, None, ref))
            served[-1] = (*served[-1][:3], ref)
            CPU[served[-1][0] + " pyhf"] = CPU[label + " pyhf"]
        rows += served

    env = {"DIFFHEP_CACHE_DIR": str(tmp / "cache-grid")}
    grid_cmd = [diffhep, "exclusion", str(bkg), *map(str, patches)]
    label = f"`exclusion`, all {len(patches)} RegionA patches"
    grid_cold = _run(grid_cmd, env)[0]
    grid_warm = _median(grid_cmd, args.repeats, env, label)
    ten = sum(
        _run([pyhf, "cls", str(bkg), "-p", str(p), "--backend", "numpy"], label="ten")[0]
        for p in patches[:10]
    )
    grid_ref = ten / 10 * len(patches)
    CPU[label + " pyhf"] = [sum(CPU.pop("ten")) / 10 * len(patches)]
    rows.append((label, grid_warm, grid_cold, grid_ref))
    # pyhf with one BLAS thread: on a loaded machine its default threads cost it ~2.4x its
    # CPU time (diffhep keeps its kernels on one core), so the ratio is also given without
    one = {f"{v}_NUM_THREADS": "1" for v in ("OPENBLAS", "OMP", "MKL")}
    ten = sum(
        _run([pyhf, "cls", str(bkg), "-p", str(p), "--backend", "numpy"], one, "ten")[0]
        for p in patches[:10]
    )
    label1 = label + ", pyhf with one BLAS thread"
    CPU[label1] = CPU[label]
    CPU[label1 + " pyhf"] = [sum(CPU.pop("ten")) / 10 * len(patches)]
    rows.append((label1, grid_warm, None, ten / 10 * len(patches)))
    top = _importtime()
    load1 = os.getloadavg()

    loaded = ": a shared, loaded machine" if max(load0[0], load1[0]) > 3 else ""
    lines = [
        "# Whole commands: diffhep next to pyhf",
        "",
        f"Produced by `python benchmarks/commands.py --repeats {args.repeats}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU cores, "
        f"load average {load0[0]:.1f} before and {load1[0]:.1f} after{loaded}). "
        "Wall times of whole commands in seconds, medians of "
        f"{args.repeats} runs (cold: one run with a fresh compilation cache), and their CPU "
        "times (user + system, medians; less sensitive to the load). pyhf 0.7.6 on "
        "its numpy backend. The pyhf grid time is 10 `pyhf cls` commands extrapolated.",
        "",
        "| command | diffhep warm cache (s) | diffhep cold cache (s) | pyhf (s) "
        "| pyhf / diffhep warm | diffhep warm CPU (s) | pyhf CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, warm, cold, ref in rows:
        cold_s = "" if cold is None else f"{cold:.2f}"
        lines.append(f"| {label} | {warm:.2f} | {cold_s} | {ref:.2f} | {ref / warm:.2f}x "
                     f"| {_cpu(label)} | {_cpu(label + ' pyhf')} |")  # fmt: skip
    lines += [
        "",
        "Rows 'worker': a statistics command at a terminal with no worker running starts one "
        "(`DIFFHEP_WORKER_START`, default `tty`; here `always`: the benchmark has no terminal) "
        "and is run by it: the first command includes the worker's start (importing JAX), "
        "then imports the statistics while its compiled program loads on a second thread, as "
        "in its own process; the next ones are run by that process (next point: another "
        "signal point on a worker that ran the first). Their CPU is the client's plus the "
        "worker's during the command.",
        "",
        "`python -X importtime -m diffhep --help`, largest cumulative imports:",
        "",
        "| module | cumulative (s) |",
        "|---|---|",
        *(f"| `{name}` | {sec:.3f} |" for name, sec in top),
        "",
    ]
    lines += _timeline_lines(timelines) + _ladder_lines(ladder)
    lines += _verdict(rows, timelines, ladder) + NOTES
    text = "\n".join(lines)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
