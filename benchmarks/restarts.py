"""Benchmark: the cost of the fits' restarts (issue 20, several minima) in one hypotest.

Times one asymptotic hypotest (CLs at mu = 1 with the expected band, jitted: first call and
median warm call) with the sources of two git revisions side by side, on models whose
likelihood may have several minima: the ATLAS sbottom RegionA likelihoods (HEPData
ins1748602; three signal points, two of them with two minima in JER parameters), pyhf's
validation models ``multichan_coupledhistosys`` (code4p, qtilde) and
``2bin_2channel_coupledhistosys`` (code1/code0, q) and the 50-bin model of
``benchmarks/hypotest.py``. Each revision runs in its own process (this script with
``--worker``) on its sources extracted with ``git archive``, so the two never share a JAX
cache. Writes the section "## Restarts for several minima (benchmarks/restarts.py)" of
``docs/benchmarks.md``.

Usage:
    python benchmarks/restarts.py --before REV [--after REV] [--rounds N]  # --after: working tree

Under load, pin it (``taskset -c 1 python benchmarks/restarts.py ...``: the workers inherit
the core) and read the CPU columns; ``--rounds`` alternates the two revisions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _docs import write_section  # noqa: E402

HEADING = "## Restarts for several minima (benchmarks/restarts.py)"
VALIDATION = ROOT / "tests" / "data" / "validation"
CODE1_CODE0 = {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}
CASES = [
    ("sbottom RegionA 1300_850_60", "sbottom:sbottom_1300_850_60", None, "qtilde"),
    ("sbottom RegionA 400_205_60", "sbottom:sbottom_400_205_60", None, "qtilde"),
    ("sbottom RegionA 550_180_50", "sbottom:sbottom_550_180_50", None, "qtilde"),
    ("multichan_coupledhistosys (code4p, qtilde)", "multichan_coupledhistosys", None, "qtilde"),
    ("2bin_2channel_coupledhistosys (code1/code0, q)", "2bin_2channel_coupledhistosys", "c10", "q"),
    ("50-bin model (benchmarks/hypotest.py)", "model_50", None, "qtilde"),
]


def load_case(key: str, settings, sbottom_dir: Path):
    import diffhep

    settings = CODE1_CODE0 if settings == "c10" else None
    if key.startswith("sbottom:"):
        region = sbottom_dir / "RegionA"
        spec = json.loads((region / "BkgOnly.json").read_text())
        patch = json.loads((region / f"patch.{key.split(':')[1]}.json").read_text())
        ws = diffhep.Workspace(spec).patched(patch)
    elif key == "model_50":
        from hypotest import model50_obs, model50_spec

        model = diffhep.Model.from_spec(model50_spec(), poi_name="mu")
        return model, model50_obs().tolist() + list(model.config.auxdata)
    else:
        ws = diffhep.Workspace(json.loads((VALIDATION / f"{key}.json").read_text()))
    model = ws.model(modifier_settings=settings) if settings else ws.model()
    return model, ws.data(model)


def worker(repeats: int, budget: float, only: str = "") -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from diffhep.stats.hypotest import hypotest  # imported before tracing: its constants
    from hypotest import extract_sbottom

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        sbottom = extract_sbottom(Path(tmp))
        for label, key, settings, test_stat in CASES:
            if only not in label:
                continue
            model, data = load_case(key, settings, sbottom)
            fn = jax.jit(lambda m, d, ts=test_stat: hypotest(1.0, m, d, test_stat=ts))
            data = jax.numpy.asarray(data)
            t0, c0 = time.perf_counter(), time.process_time()
            r = jax.block_until_ready(fn(model, data))
            first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
            times, cpu = [], []
            while len(times) < repeats and (len(times) < 3 or sum(times) < budget):
                t0, c0 = time.perf_counter(), time.process_time()
                r = jax.block_until_ready(fn(model, data))
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            out[label] = {
                "first": first,
                "first_cpu": first_cpu,
                "warm": statistics.median(times),
                "warm_cpu": statistics.median(cpu),
                "n": len(times),
                "cls_obs": float(r.cls_obs),
                "converged": bool(r.converged),
                "npars": model.config.npars,
            }
    return out


def run_revision(rev: str | None, repeats: int, budget: float, only: str = "") -> dict:
    """Run the worker on the sources of ``rev`` (the working tree if None)."""
    with tempfile.TemporaryDirectory() as tmp:
        if rev is None:
            src = ROOT / "src"
        else:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            src = Path(tmp) / "src"
        env = {**os.environ, "PYTHONPATH": str(src)}
        cmd = [sys.executable, __file__, "--worker", "--repeats", str(repeats)]
        cmd += ["--budget", str(budget), "--only", only]
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def describe(rev: str | None) -> str:
    if rev is None:
        return "working tree"
    return subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()[:90]


def _merge(runs: list[dict]) -> dict:
    """Per case, the median over alternating rounds of each measured time (CLs, convergence
    and size from the last round; they do not change between rounds)."""
    out = {}
    for label in runs[-1]:
        out[label] = dict(runs[-1][label])
        for key in ("first", "first_cpu", "warm", "warm_cpu"):
            out[label][key] = statistics.median(r[label][key] for r in runs)
        out[label]["n"] = sum(r[label]["n"] for r in runs)
    return out


def report(before, after, revs, argv, minutes, loads) -> str:
    import jax

    ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    lines = [
        HEADING,
        "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: "
        f"{os.cpu_count()} CPUs ({platform.machine()}), shared; load average (1 min) "
        f"{loads[0]:.2f} at start, {loads[1]:.2f} at end; jax {jax.__version__}; "
        f"run: `python benchmarks/restarts.py {' '.join(argv)}`, {minutes:.1f} min.",
        "",
        f"Before: `{describe(revs[0])}`  ",
        f"After: `{describe(revs[1])}`",
        "",
        "One jitted hypotest at mu = 1 with the expected band (6 fits, restarts included: "
        "before, a second fit from the mirror image only for kinked interpolation codes and "
        "symmetrised variations; after, also for histosys/normsys parameters whose up and "
        "down variations move a yield the same way, from single-parameter probes; the "
        "Asimov stage's free fit and refit of its origin, started at their global minimum, "
        "do not restart). Warm: "
        "median of repeated calls; first: trace + compile + run. CPU: the process's CPU "
        "time (`time.process_time`, all its threads), the measure that a loaded machine "
        "disturbs least; wall: elapsed time.",
        "",
        "| model | pars | warm CPU before | warm CPU after | after / before | warm wall before | "
        "warm wall after | first call CPU before | first call CPU after | CLs_obs before | "
        "CLs_obs after | converged (before, after) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, *_ in CASES:
        if label not in after:
            continue
        b, a = before[label], after[label]
        lines.append(
            f"| {label} | {a['npars']} | {ms(b['warm_cpu'])} | {ms(a['warm_cpu'])} | "
            f"{a['warm_cpu'] / b['warm_cpu']:.2f}x | {ms(b['warm'])} | {ms(a['warm'])} | "
            f"{b['first_cpu']:.1f} s | {a['first_cpu']:.1f} s | {b['cls_obs']:.10g} | "
            f"{a['cls_obs']:.10g} | {b['converged']}, {a['converged']} |"
        )
    return "\n".join(lines) + "\n\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", help="git revision before the change")
    p.add_argument("--after", default=None, help="git revision after (default: working tree)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--budget", type=float, default=10.0, help="seconds of warm calls per case")
    p.add_argument("--only", default="", help="run only the cases whose label contains this")
    p.add_argument(
        "--rounds", type=int, default=1, help="alternate before/after this many times (medians)"
    )
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.repeats, args.budget, args.only)))
        return 0
    if not args.before:
        p.error("--before REV is required")
    t0, load0 = time.time(), os.getloadavg()[0]
    befores, afters = [], []
    for _ in range(args.rounds):  # alternating: both sides see the same changes of load
        befores.append(run_revision(args.before, args.repeats, args.budget, args.only))
        afters.append(run_revision(args.after, args.repeats, args.budget, args.only))
    before, after = _merge(befores), _merge(afters)
    text = report(
        before,
        after,
        (args.before, args.after),
        argv,
        (time.time() - t0) / 60,
        (load0, os.getloadavg()[0]),
    )
    print(text)
    write_section(args.output, HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
