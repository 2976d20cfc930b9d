"""Benchmark: the compiled ``cls`` kernel of two revisions over a signal grid, in one process.

Each revision exports the kernel that ``diffhep cls`` and ``diffhep exclusion`` run (one per
model structure, :mod:`diffhep.stats.exported`) for every patch of the ATLAS sbottom RegionA
likelihoods (HEPData ins1748602, ``tests/data``), together with each point's model arrays and
data, in its own process on its own sources (``git archive``; ``--after`` defaults to the
working tree). One process then loads both sets of programs and calls them in turn on every
point (``--repeats`` rounds, the order alternating), so that a machine whose speed drifts
by tens of percent between processes (shared virtual machines) slows both alike. Prints the
summed kernel time of each revision, their ratio, the slowest points and the largest
difference of the CLs, and writes the section "## The cls kernel over a signal grid, two
revisions (benchmarks/kernel_ab.py)" of ``docs/benchmarks.md``.

Usage:
    python benchmarks/kernel_ab.py --before REV [--after REV] [--repeats N] [--points N]

Pin it (``taskset -c 1 ...``: the children inherit the core) to compare with the CLI, whose
kernels run on one core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _docs import publish  # noqa: E402

HEADING = "## The cls kernel over a signal grid, two revisions (benchmarks/kernel_ab.py)"
TARBALL = ROOT / "tests" / "data" / "pyhf-ins1748602-probability-models.tar.gz"


def export(out: Path, grid_dir: Path, points: int) -> None:
    """Export the kernel of every point (this process's diffhep), with its inputs."""
    from diffhep.cli import common

    common.setup()
    import equinox as eqx
    import jax

    from diffhep.stats import exported, grid
    from diffhep.stats.patches import apply_patch
    from diffhep.stats.validation import check_samples
    from diffhep.stats.workflows import _cls_kernel

    exported.set_cache_dir(out)
    spec = json.loads((grid_dir / "BkgOnly.json").read_text())
    checked = check_samples(spec)
    poi = np.float64(1.0)
    index = {}
    for path in sorted(grid_dir.glob("patch.*.json"))[: points or None]:
        doc = apply_patch(spec, json.loads(path.read_text()), file=str(path))
        model, data = grid._model_and_data(doc, str(path), 1.0, None, None, checked)
        exported.call(_cls_kernel, model, poi, data, test_stat="qtilde")
        key = exported.structure_key(model, poi, data, test_stat="qtilde")
        leaves = [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]
        name = path.name.removeprefix("patch.").removesuffix(".json")
        np.savez(out / f"{name}.npz", *leaves, data=np.asarray(data))
        index[name] = f"diffhep.stats.workflows._cls_kernel-{key}.bin"
    (out / "index.json").write_text(json.dumps(index))


def _revision(rev: str | None, dest: Path) -> Path:
    """The ``src`` directory of ``rev`` (``None``: the working tree)."""
    if rev is None:
        return ROOT / "src"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def compare(stores: list[Path], repeats: int):
    """Per point and revision, the median kernel time (s) and the outputs."""
    import jax

    jax.config.update("jax_enable_x64", True)
    on_cpu = jax.default_backend() == "cpu"
    indexes = [json.loads((s / "index.json").read_text()) for s in stores]
    loaded: dict[Path, object] = {}

    def kernel(store: Path, name: str):
        path = store / name
        if path not in loaded:
            exp = jax.export.deserialize(bytearray(path.read_bytes()))
            # compiled as the CLI compiles it (diffhep.stats.exported._CPU_COMPILER_OPTIONS)
            options = {"xla_cpu_use_fusion_emitters": False} if on_cpu else None
            loaded[path] = jax.jit(exp.call, compiler_options=options)
        return loaded[path]

    rows = []
    for k, point in enumerate(sorted(indexes[0])):
        calls, inputs = [], []
        for store, index in zip(stores, indexes, strict=True):
            arrays = np.load(store / f"{point}.npz")
            leaves = [arrays[f"arr_{i}"] for i in range(len(arrays.files) - 1)]
            inputs.append((leaves, np.float64(1.0), arrays["data"]))
            calls.append(kernel(store, index[point]))
        outs = [jax.block_until_ready(c(*a)) for c, a in zip(calls, inputs, strict=True)]
        times: list[list[float]] = [[], []]
        for r in range(repeats):
            for j in (0, 1) if (k + r) % 2 == 0 else (1, 0):
                t0 = time.perf_counter()
                jax.block_until_ready(calls[j](*inputs[j]))
                times[j].append(time.perf_counter() - t0)
        cls = [np.concatenate([[o["cls_obs"]], np.ravel(o["cls_exp"])]) for o in outs]
        diff = float(np.max(np.abs(cls[1] - cls[0]) / np.maximum(np.abs(cls[0]), 1e-300)))
        conv = [bool(o["converged"]) for o in outs]
        rows.append((point, *(float(np.median(t)) for t in times), diff, conv))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision A")
    ap.add_argument("--after", help="git revision B (default: the working tree)")
    ap.add_argument("--repeats", type=int, default=3, help="calls per point and revision")
    ap.add_argument("--points", type=int, default=0, help="first N patches only (0: all)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--export", nargs=2, metavar=("OUT", "GRID"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.export:
        export(Path(args.export[0]), Path(args.export[1]), args.points)
        return 0

    start = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with tarfile.open(TARBALL) as tar:
            tar.extractall(tmp / "grid", filter="data")
        (grid_dir,) = {p.parent for p in (tmp / "grid").rglob("RegionA/BkgOnly.json")}
        stores = []
        for label, rev in (("before", args.before), ("after", args.after)):
            src = _revision(rev, tmp / label)
            store = tmp / f"store-{label}"
            env = dict(os.environ, PYTHONPATH=str(src), DIFFHEP_NO_WORKER="1")
            cmd = [sys.executable, __file__, "--before", args.before, "--points",
                   str(args.points), "--export", str(store), str(grid_dir)]  # fmt: skip
            subprocess.run(cmd, check=True, env=env)
            stores.append(store)
        rows = compare(stores, args.repeats)

    a = sum(r[1] for r in rows)
    b = sum(r[2] for r in rows)
    worst = max(r[3] for r in rows)
    slowest = sorted(rows, key=lambda r: -r[1])[:5]
    slowest = ", ".join(f"{r[0]} {1e3 * r[1]:.0f} / {1e3 * r[2]:.0f}" for r in slowest)
    conv = [sum(r[4][j] for r in rows) for j in (0, 1)]
    after = args.after or "working tree"
    lines = [
        "",
        f"{start:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f} at the end. `python benchmarks/kernel_ab.py --before "
        f"{args.before}"
        + (f" --after {args.after}" if args.after else "")
        + f" --repeats {args.repeats}`: the `cls` kernel (warm, exported, median of "
        f"{args.repeats} calls per point, the two revisions in turn in one process) on "
        f"{len(rows)} sbottom RegionA patches.",
        "",
        "| revision | kernel time, all points (s) | median per point (ms) | converged |",
        "|---|---|---|---|",
        f"| before ({args.before}) | {a:.3f} | {1e3 * np.median([r[1] for r in rows]):.1f} | "
        f"{conv[0]}/{len(rows)} |",
        f"| after ({after}) | {b:.3f} | {1e3 * np.median([r[2] for r in rows]):.1f} | "
        f"{conv[1]}/{len(rows)} |",
        "",
        f"After / before: **{b / a:.3f}**. Largest relative difference of a CLs (observed or "
        f"expected) between the two: {worst:.1e}. Slowest points (before / after, ms): "
        f"{slowest}.",
    ]
    publish(args.output, HEADING, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
