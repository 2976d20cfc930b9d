"""Whole commands, as a user runs them (issue 21): ``diffhep`` next to ``pyhf`` in one run.

- ``--help`` of both (and ``python -X importtime`` top entries of ``diffhep --help``);
- ``cls`` on the published sbottom RegionA likelihood (one signal patch) and on a small model
  (pyhf's 2-bin example), diffhep with a cold and a warm persistent compilation cache (a
  fresh ``DIFFHEP_CACHE_DIR``), pyhf on its numpy backend;
- ``diffhep exclusion`` over all RegionA patches against ``pyhf cls`` on 10 patches,
  extrapolated to all.

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


def _small_workspace(tmp: Path) -> Path:
    from diffhep.stats.workspace import example_spec

    path = tmp / "small.json"
    path.write_text(json.dumps(example_spec()))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks-commands.md"))
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
        if "-p" in cmd:  # another signal point of the same structure (192 of the 217 are)
            other = region / "patch.sbottom_1400_550_60.json"
            cmd = ["cls", str(bkg), "-p", str(other)]
            label = "`cls` sbottom RegionA, next point (first run on it)"
            nxt = _run([diffhep, *cmd], env, label)[0]
            ref = _median([pyhf, *cmd, "--backend", "numpy"], args.repeats, label=label + " pyhf")
            rows.append((label, nxt, None, ref))

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
        "`python -X importtime -m diffhep --help`, largest cumulative imports:",
        "",
        "| module | cumulative (s) |",
        "|---|---|",
        *(f"| `{name}` | {sec:.3f} |" for name, sec in top),
        "",
    ]
    text = "\n".join(lines)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
