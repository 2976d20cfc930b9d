"""Benchmark: toy-based CLs on sbottom RegionA (1300/850/60), diffhep against pyhf 0.7.6.

diffhep: ``diffhep.stats.toys.toys(1.0, model, data, ntoys=N)`` (qtilde, both hypotheses,
every toy's two fits in compiled chunks), in a fresh process: the first call (compilation +
``--small`` toys), then ``N`` toys warm; peak RSS after each (memory flat in the number of
toys: the second, larger run must not raise it). pyhf: ``ToyCalculator(ntoys=M)`` with its
default numpy backend and scipy optimiser (what ``hypotest(..., calctype="toybased")`` runs),
``teststatistic`` + ``distributions``, in its own fresh process, extrapolated linearly to
``--target`` toys (pyhf fits the toys one by one: its time is linear in the toys).
The two run one after the other in one invocation, pinned to one core (``--cpu``), so the
ratio is measured under one load; wall times and CPU seconds (``time.process_time``).
Then the whole command a user runs, ``diffhep cls ... --toys N --workers K`` (``--command-toys``,
``--workers``), on the whole machine with a cold compilation cache, against pyhf's toys.

Usage:
    python benchmarks/toys.py          # 1,000 then 10,000 diffhep toys, 20 pyhf toys, core 1
    python benchmarks/toys.py --small 256 --ntoys 2000 --pyhf-toys 100 --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _docs import publish

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Toy-based CLs (benchmarks/toys.py)"
POI = 1.0


def _model():
    import diffhep
    from diffhep.stats import workspace

    diffhep.enable_x64()
    spec, patch = workspace.builtin_example()
    return spec, patch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_diffhep(small: int, ntoys: int, chunk: int) -> dict:
    from diffhep.stats import toys, workspace

    spec, patch = _model()
    ws = workspace.Workspace(spec).patched(patch)
    model = ws.model()
    data = ws.data(model)
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    # one chunk shape for both runs: the second compiles nothing, its RSS growth is the toys'
    first = toys.toys(POI, model, data, ntoys=small, seed=1, chunk=chunk)
    t_first, c_first = time.perf_counter() - t0, time.process_time() - c0
    rss1 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    big = toys.toys(POI, model, data, ntoys=ntoys, seed=2, chunk=chunk)
    t_big, c_big = time.perf_counter() - t0, time.process_time() - c0
    rss2 = _rss_mb()
    return {
        "t_first": t_first, "n_first": small, "t_warm": t_big, "n_warm": ntoys,
        "c_first": c_first, "c_warm": c_big,
        "rss_start": rss0, "rss_small": rss1, "rss_big": rss2,
        "cls": big.cls_json(), "nonconverged": big.nonconverged, "chunk": min(chunk, small),
        "first_nonconverged": first.nonconverged, "batch": toys.default_batch(model),
    }  # fmt: skip


def worker_pyhf(ntoys: int) -> dict:
    import numpy as np
    import pyhf

    spec, patch = _model()
    pyhf.set_backend("numpy")
    ws = pyhf.Workspace(spec)
    model = ws.model(patches=[patch])
    data = ws.data(model)
    np.random.seed(0)  # noqa: NPY002 (pyhf samples from numpy's global state)
    calc = pyhf.infer.calculators.ToyCalculator(data, model, ntoys=ntoys, track_progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    q = calc.teststatistic(POI)
    sb, b = calc.distributions(POI)
    clsb, clb, cls = calc.pvalues(q, sb, b)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"t": dt, "c": dc, "ntoys": ntoys, "CLs_obs": float(cls), "CLsb": float(clsb),
            "CLb": float(clb), "pyhf": pyhf.__version__}  # fmt: skip


def command_diffhep(ntoys: int, workers: int) -> dict:
    """``diffhep cls BKG -p PATCH --toys N --workers K`` as a user runs it: a fresh process
    on the whole machine (not pinned), first with a cold compilation cache (a new, empty
    directory: the workers compile), then again with it warm; the command's wall time and
    the CPU time of it and its children."""
    import gzip
    import tempfile

    data = ROOT / "src" / "diffhep" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name in ("sbottom_RegionA_BkgOnly", "sbottom_RegionA_patch_1300_850_60"):
            path = Path(tmp) / f"{name}.json"
            path.write_bytes(gzip.decompress((data / f"{name}.json.gz").read_bytes()))
            files.append(str(path))
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
                   DIFFHEP_CACHE_DIR=str(Path(tmp) / "cache"))  # fmt: skip
        cmd = [sys.executable, "-m", "diffhep", "cls", files[0], "-p", files[1], "--toys",
               str(ntoys), "--seed", "2", "--workers", str(workers)]  # fmt: skip
        runs = []
        for _ in ("cold", "warm"):  # the second finds the first's compiled kernels
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
            runs.append((t, cpu, out.stdout))
    assert runs[0][2] == runs[1][2], "the warm command printed other numbers"
    return {"t": runs[0][0], "c": runs[0][1], "t_warm": runs[1][0], "c_warm": runs[1][1],
            "ntoys": ntoys, "workers": workers, "cls": json.loads(runs[0][2])}  # fmt: skip


def _spawn(pin, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DIFFHEP_CACHE_DIR="")
    out = subprocess.run(
        [*pin, sys.executable, __file__, "--worker", *map(str, args)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _num(x) -> str:
    return "null" if x is None else f"{x:.4g}"


def _fmt_s(t: float) -> str:
    return f"{t:,.0f} s" if t >= 100 else f"{t:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ntoys", type=int, default=10_000, help="diffhep toys (warm run)")
    ap.add_argument("--small", type=int, default=1000, help="diffhep toys of the first call")
    ap.add_argument("--chunk", type=int, default=256, help="diffhep toys per compiled call")
    ap.add_argument("--pyhf-toys", type=int, default=20, help="pyhf toys (extrapolated)")
    ap.add_argument("--cpu", type=int, default=1, help="core both are pinned to (-1: none)")
    ap.add_argument("--target", type=int, default=10_000, help="toys the ratio is quoted at")
    ap.add_argument(
        "--command-toys",
        type=int,
        default=10_000,
        help="toys of the whole 'diffhep cls --toys N --workers K' command (0: none)",
    )
    ap.add_argument("--workers", type=int, default=2, help="K of that command")
    ap.add_argument("--output", default=None, help="markdown file to write the section to")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        res = worker_diffhep(*map(int, rest)) if kind == "diffhep" else worker_pyhf(int(rest[0]))
        print(json.dumps(res))
        return

    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    pin = ["taskset", "-c", str(args.cpu)] if args.cpu >= 0 and shutil.which("taskset") else []
    d = _spawn(pin, "diffhep", args.small, args.ntoys, args.chunk)
    p = _spawn(pin, "pyhf", args.pyhf_toys)
    w = command_diffhep(args.command_toys, args.workers) if args.command_toys else None
    wall = time.perf_counter() - start
    load1 = os.getloadavg()[0]
    print(json.dumps({"diffhep": d, "pyhf": p, "command": w}), file=sys.stderr)  # raw, first

    compile_s = max(0.0, d["t_first"] - d["t_warm"] * d["n_first"] / d["n_warm"])
    compile_c = max(0.0, d["c_first"] - d["c_warm"] * d["n_first"] / d["n_warm"])
    per_toy_d = d["t_warm"] / d["n_warm"]  # both hypotheses
    per_toy_p = p["t"] / p["ntoys"]
    cpu_toy_d, cpu_toy_p = d["c_warm"] / d["n_warm"], p["c"] / p["ntoys"]
    n = args.target
    diffhep_n = compile_s + n * per_toy_d
    diffhep_c = compile_c + n * cpu_toy_d
    pyhf_n, pyhf_c = n * per_toy_p, n * cpu_toy_p
    ratio, ratio_c = pyhf_n / diffhep_n, pyhf_c / diffhep_c
    ratio_warm = per_toy_p / per_toy_d
    growth = d["rss_big"] - d["rss_small"]
    measured_n = "measured" if args.ntoys == n else f"{args.ntoys:,} toys measured, extrapolated"
    import jax

    argv, skip = [], False
    for a in sys.argv[1:]:  # the command without --output and its file
        if not skip and not a.startswith("--output"):
            argv.append(a)
        skip = a == "--output"
    cmd = "python benchmarks/toys.py " + " ".join(argv)
    lines = [
        "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; jax {jax.__version__}, "
        f"pyhf {p['pyhf']}  ",
        f"Run: `{cmd.strip()}`, {wall / 60:.1f} min; load average (1 min) {load0:.1f} at start, "
        f"{load1:.1f} at end (the machine is shared: both sides ran under this load, one after "
        f"the other, each pinned to core {args.cpu} with `taskset`; CPU seconds are "
        "`time.process_time` of the process, the load-independent measure).",
        "",
        "Toy-based CLs at mu = 1 (qtilde) of sbottom RegionA (`RegionA/BkgOnly.json` + "
        "`patch.sbottom_1300_850_60.json`, 64 parameters, 6 bins), N toys per hypothesis. "
        "diffhep: `diffhep.stats.toys.toys` in a fresh process (compilation included once; "
        f"{d['batch']} toy(s) per vmapped batch, the default for this model). pyhf 0.7.6: "
        "`ToyCalculator` (numpy backend, scipy optimiser: `hypotest(..., "
        f"calctype='toybased')`'s defaults), {p['ntoys']} toys timed and extrapolated "
        "linearly (it fits toy after toy).",
        "",
        "| | diffhep | pyhf (numpy + scipy) | ratio |",
        "|---|---:|---:|---:|",
        f"| wall time per toy (both hypotheses, warm) | {per_toy_d * 1e3:.1f} ms "
        f"({d['n_warm']:,} toys) | {per_toy_p:.2f} s ({p['ntoys']} toys) | {ratio_warm:,.0f}x |",
        f"| CPU time per toy (both hypotheses, warm) | {cpu_toy_d * 1e3:.1f} ms | "
        f"{cpu_toy_p:.2f} s | {cpu_toy_p / cpu_toy_d:,.0f}x |",
        f"| compilation (first call), wall / CPU | {_fmt_s(compile_s)} / {_fmt_s(compile_c)} "
        "| - | |",
        f"| {n:,} toys, wall | {_fmt_s(diffhep_n)} ({measured_n}) | {_fmt_s(pyhf_n)} "
        f"(extrapolated) | **{ratio:,.0f}x** |",
        f"| {n:,} toys, CPU | {_fmt_s(diffhep_c)} | {_fmt_s(pyhf_c)} (extrapolated) "
        f"| **{ratio_c:,.0f}x** |",
        f"| CLs_obs (CLsb, CLb) | {_num(d['cls']['CLs_obs'])} ({_num(d['cls']['toys']['CLsb_obs'])}"
        f", {_num(d['cls']['toys']['CLb_obs'])}; {d['n_warm']:,} toys) | {_num(p['CLs_obs'])} "
        f"({_num(p['CLsb'])}, {_num(p['CLb'])}; {p['ntoys']} toys) | |",
        f"| non-converged toys | {d['nonconverged']} | (pyhf raises) | |",
        "",
        f"Peak RSS (ru_maxrss) of the diffhep process: {d['rss_start']:.0f} MB after loading, "
        f"{d['rss_small']:.0f} MB after the first call ({d['n_first']} toys, compilation), "
        f"{d['rss_big']:.0f} MB after {d['n_warm']:,} toys: +{growth:.0f} MB "
        f"({'flat' if growth < 0.05 * d['rss_small'] + 16 else 'NOT flat'}; toys run in chunks "
        f"of {d['chunk']}, one compiled shape for both runs, only the test statistics are kept).",
        "",
        f"One process on one core, 10,000 toys: {ratio:,.0f}x wall, {ratio_c:,.0f}x CPU.",
    ]
    if w is not None:
        pyhf_w = w["ntoys"] * per_toy_p
        ratio_w = pyhf_w / w["t"]
        lines += [
            "",
            f"**The whole command**, as a user runs it on this {os.cpu_count()}-core machine: "
            f"`diffhep cls BkgOnly.json -p patch.json --toys {w['ntoys']:,} --workers "
            f"{w['workers']}` (not pinned; a cold compilation cache: each worker process "
            "compiles; the toy ranges of the seed merge into the single run's result), "
            f"against pyhf's `ToyCalculator` above ({per_toy_p:.2f} s per toy, one core: "
            "pyhf fits one toy after the other, and on both cores its wall time is the same "
            "(8 toys, 2026-12-05: 40.5 s unpinned, 39.4 s pinned; its BLAS threads only "
            "doubled the CPU time)).",
            "",
            "| | diffhep command (--workers) | pyhf | ratio |",
            "|---|---:|---:|---:|",
            f"| {w['ntoys']:,} toys, wall | {_fmt_s(w['t'])} (measured, compilation "
            f"included) | {_fmt_s(pyhf_w)} (extrapolated) | **{ratio_w:,.0f}x** |",
            f"| {w['ntoys']:,} toys, CPU (all processes) | {_fmt_s(w['c'])} | "
            f"{_fmt_s(w['ntoys'] * cpu_toy_p)} (extrapolated) | "
            f"{w['ntoys'] * cpu_toy_p / w['c']:,.0f}x |",
            f"| the same command again (warm cache), wall | {_fmt_s(w['t_warm'])} (the same "
            f"output) | {_fmt_s(pyhf_w)} | **{pyhf_w / w['t_warm']:,.0f}x** |",
            f"| the same command again, CPU | {_fmt_s(w['c_warm'])} | "
            f"{_fmt_s(w['ntoys'] * cpu_toy_p)} | {w['ntoys'] * cpu_toy_p / w['c_warm']:,.0f}x |",
            f"| CLs_obs (CLsb, CLb) | {_num(w['cls']['CLs_obs'])} "
            f"({_num(w['cls']['toys']['CLsb_obs'])}, {_num(w['cls']['toys']['CLb_obs'])}) | | |",
            f"| non-converged toys | {w['cls']['toys']['nonconverged']} | | |",
            "",
            f"Target >= 100x for 10,000 toys (issue 22), the whole command against pyhf: "
            f"**{'met' if ratio_w >= 100 else 'not met'}** with a cold cache ({ratio_w:,.0f}x "
            f"wall), **{'met' if pyhf_w / w['t_warm'] >= 100 else 'not met'}** with a warm one "
            f"({pyhf_w / w['t_warm']:,.0f}x); per core (CPU time, one process above) "
            f"{ratio_c:,.0f}x: the target is reached by running the toys on both cores, "
            "which pyhf's toy calculator does not.",
        ]
    publish(args.output, HEADING, lines)


if __name__ == "__main__":
    main()
