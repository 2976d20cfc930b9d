"""Benchmark: the ranking (impacts) of sbottom RegionA, whole commands, diffhep next to cabinetry.

- diffhep: ``diffhep ranking BkgOnly.json -p patch [-p bounds] --json`` as a user runs it, with
  a cold (fresh ``DIFFHEP_CACHE_DIR``) and a warm compilation cache;
- cabinetry (the reference of issue 22): a fresh Python process that builds the model with
  pyhf (numpy backend), fits it and runs ``cabinetry.fit.ranking`` (MINUIT), as cabinetry's
  documentation shows (its defaults first; if they fail, the settings of ``SETTINGS`` in
  order, each in its own process; failed tries are listed with their times, not added).

Both rank every parameter of RegionA + the patch but the POI (4 refits per parameter: pre-fit
and post-fit, up and down), pinned to the same core (``--cpu``), one after the other; wall
times and CPU seconds of the whole processes. The default signal point is
``sbottom_1000_730_600`` with the POI's bounds opened to [-10, 10] (``--bounds open``): its
best fit (mu = -0.09 +- 0.58) lies inside the bounds, so the ranking carries information, and
far from where the background + mu x signal of a bin turns negative (mu < -2.0 at nominal
nuisance parameters), so pyhf's numpy likelihood stays finite where MINUIT goes.

``--diagnose`` explains why cabinetry fails on ``sbottom_1000_205_60`` with open bounds (the
point the benchmark used before): it runs cabinetry's nominal fit and counts the
likelihood evaluations that are not finite (pyhf's Poisson of a negative expected yield).

Usage:
    python benchmarks/ranking.py [--repeats 2] [--cpu 1] [--output docs/benchmarks.md]
    python benchmarks/ranking.py --diagnose --patch sbottom_1000_205_60
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _docs import publish

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT / "tests" / "data" / "pyhf-ins1748602-probability-models.tar.gz"
HEADING = "## Ranking of sbottom RegionA, whole commands (`benchmarks/ranking.py`)"
DIAG_HEADING = (
    "## Why cabinetry's ranking fails on sbottom RegionA (`benchmarks/ranking.py --diagnose`)"
)
FIELDS = ("prefit_up", "prefit_down", "postfit_up", "postfit_down")

CABINETRY = """
import json, sys, pyhf, cabinetry
pyhf.set_backend("numpy")
import jsonpatch
opts = json.loads(sys.argv[1])
spec = json.load(open(sys.argv[2]))
for patch in sys.argv[3:]:
    spec = jsonpatch.apply_patch(spec, json.load(open(patch)))
ws = pyhf.Workspace(spec)
model, data = cabinetry.model_utils.model_and_data(ws)
fit_results = cabinetry.fit.fit(model, data, **opts)
r = cabinetry.fit.ranking(model, data, fit_results=fit_results, **opts)
print(json.dumps({"n": len(r.labels), "labels": list(r.labels),
                  **{k: [float(x) for x in getattr(r, k)] for k in FIELDS}}))
""".replace("FIELDS", repr(FIELDS))

DIAGNOSE = """
import json, sys, time, logging, warnings
import numpy as np, pyhf, cabinetry, jsonpatch
logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")
pyhf.set_backend("numpy")
spec = json.load(open(sys.argv[1]))
for patch in sys.argv[2:]:
    spec = jsonpatch.apply_patch(spec, json.load(open(patch)))
model, data = cabinetry.model_utils.model_and_data(pyhf.Workspace(spec))
names, init = model.config.par_names, model.config.suggested_init()
calls, bad, first = [0], [0], []
logpdf = model.logpdf
def counted(pars, d):
    v = logpdf(pars, d)
    calls[0] += 1
    if not np.all(np.isfinite(v)):
        bad[0] += 1
        if not first:
            first.append(np.array(pars, float))
    return v
model.logpdf = counted
t0 = time.process_time()
out = {}
try:
    fr = cabinetry.fit.fit(model, data)
    out["status"] = "converged"
    out["poi"] = float(fr.bestfit[model.config.poi_index])
except Exception as exc:
    out["status"] = f"{type(exc).__name__}: {exc}"
    m = exc.result.minuit
    f = m.fmin
    out.update(fval=f.fval, edm=f.edm, edm_goal=f.edm_goal, nfcn=f.nfcn,
               params_at_limit=f.has_parameters_at_limit,
               at_limit=[n for n, p in zip(names, m.params) if not p.is_fixed and p.has_limits
                         and min(p.value - p.lower_limit, p.upper_limit - p.value)
                         < 1e-3 * (p.upper_limit - p.lower_limit)])
out.update(cpu_s=time.process_time() - t0, calls=calls[0], nonfinite=bad[0])
if first:
    p = first[0]
    out["first_nonfinite"] = {
        "min_expected_main": float(np.min(model.expected_actualdata(p))),
        "largest_moves": [[names[i], float(p[i])] for i in
                          np.argsort(-np.abs(p - np.asarray(init)))[:3]]}
print(json.dumps(out))
"""

#: cabinetry's tries in order (the first that finishes is the reference)
SETTINGS = [{}, {"strategy": 0, "tolerance": 1e-6}, {"strategy": 2, "tolerance": 1e-6},
            {"strategy": 2, "tolerance": 1e-5}, {"custom_fit": True}]  # fmt: skip


def _agreement(rows, cab) -> str:
    """Largest difference of the impacts, relative to the largest impact."""
    ours = {r["parameter"]: r for r in rows}
    common = [i for i, name in enumerate(cab["labels"]) if name in ours]
    diff = max(abs(ours[cab["labels"][i]][k] - cab[k][i]) for i in common for k in FIELDS)
    scale = max(abs(r[k]) for r in rows for k in FIELDS)
    top = sorted(rows, key=lambda r: -max(abs(r["postfit_up"]), abs(r["postfit_down"])))[0]
    return (f"{len(common)} parameters in both; largest impact difference {diff:.2g} "
            f"({diff / scale:.1e} of the largest impact, {scale:.3g}; the top parameter "
            f"{top['parameter']}: post-fit {top['postfit_up']:+.4f} / "
            f"{top['postfit_down']:+.4f})")  # fmt: skip


def _diagnosis(d: dict, args, wall: float, load0: float) -> list[str]:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    bounds = "POI bounds [-10, 10]" if args.bounds == "open" else "published POI bounds [0, 10]"
    lines = [
        "",
        f"Produced by `python benchmarks/ranking.py --diagnose --patch {args.patch} --bounds "
        f"{args.bounds}` ({stamp}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}, pinned "
        f"to core {args.cpu}; {wall:.0f} s wall). cabinetry's nominal fit (`cabinetry.fit.fit`, "
        f"MINUIT defaults, pyhf numpy backend) of RegionA + `patch.{args.patch}.json` "
        f"({bounds}), every evaluation of pyhf's `logpdf` counted: **{d['status']}** after "
        f"{d['cpu_s']:.1f} CPU-s; {d['calls']:,} likelihood evaluations, {d['nonfinite']:,} of "
        "them not finite.",
    ]
    if "edm" in d:
        lines.append(
            f"MINUIT stops at -2 log L = {d['fval']:.4f} with EDM {d['edm']:.3g} (goal "
            f"{d['edm_goal']:.2g}) after {d['nfcn']:,} calls; parameters at a bound: "
            f"{', '.join(d['at_limit']) or 'none'}."
        )
    if "first_nonfinite" in d:
        f = d["first_nonfinite"]
        moves = ", ".join(f"{n} = {v:.3g}" for n, v in f["largest_moves"])
        lines.append(
            f"The first non-finite evaluation is at {moves} (the largest moves from the "
            "suggested init), where the smallest expected main yield is "
            f"{f['min_expected_main']:.3g}: "
            "a negative Poisson rate, whose log pyhf's numpy backend returns as NaN."
        )
    return lines


def _run(cmd, env=None):
    """(wall seconds, CPU seconds of the child and its children, process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def _inputs(tmp: Path, patch_name: str, bounds: str):
    with tarfile.open(TARBALL, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    region = Path(next(iter(glob.glob(str(tmp / "**" / "RegionA"), recursive=True))))
    patches = [region / f"patch.{patch_name}.json"]
    if bounds == "open":
        b = tmp / "bounds.json"
        value = {"name": "mu_SIG", "bounds": [[-10.0, 10.0]]}
        path = "/measurements/0/config/parameters/-"
        b.write_text(json.dumps([{"op": "add", "path": path, "value": value}]))
        patches.append(b)
    return region / "BkgOnly.json", patches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--patch", default="sbottom_1000_730_600", help="signal point of RegionA")
    ap.add_argument("--bounds", choices=["open", "published"], default="open",
                    help="POI bounds: [-10, 10] or the published [0, 10]")  # fmt: skip
    ap.add_argument(
        "--cpu", type=int, default=1, help="core both commands are pinned to (-1: none)"
    )
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument(
        "--first-setting", type=int, default=0, help="first cabinetry setting tried (index)"
    )
    ap.add_argument(
        "--diagnose", action="store_true", help="cabinetry's nominal fit: MINUIT, non-finite L"
    )
    args = ap.parse_args()
    pin = ["taskset", "-c", str(args.cpu)] if args.cpu >= 0 and shutil.which("taskset") else []
    tmp = Path(tempfile.mkdtemp(prefix="diffhep-bench-"))
    bkg, patches = _inputs(tmp, args.patch, args.bounds)
    if args.diagnose:
        script = tmp / "diagnose.py"
        script.write_text(DIAGNOSE)
        load0 = os.getloadavg()[0]
        wall, _, proc = _run([*pin, sys.executable, str(script), str(bkg), *map(str, patches)])
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        publish(
            args.output,
            DIAG_HEADING,
            _diagnosis(json.loads(proc.stdout.splitlines()[-1]), args, wall, load0),
        )
        return
    load0 = os.getloadavg()
    diffhep = str(Path(sys.executable).parent / "diffhep")
    cmd = [
        *pin,
        diffhep,
        "ranking",
        str(bkg),
        *[a for p in patches for a in ("-p", str(p))],
        "--json",
    ]
    env = {"DIFFHEP_CACHE_DIR": str(tmp / "cache")}
    cold, cold_cpu, proc = _run(cmd, env)
    if proc.returncode != 0:
        raise SystemExit(f"diffhep ranking failed:\n{proc.stderr[-2000:]}")
    rows = json.loads(proc.stdout)
    warms = [_run(cmd, env)[:2] for _ in range(args.repeats)]
    warm = statistics.median(w for w, _ in warms)
    warm_cpu = statistics.median(c for _, c in warms)
    script = tmp / "cabinetry_ranking.py"
    script.write_text(CABINETRY)
    tries, cab_ok, ref, ref_cpu, used = [], False, float("nan"), float("nan"), None
    for opts in SETTINGS[args.first_setting :]:
        ref, ref_cpu, cab = _run([*pin, sys.executable, str(script), json.dumps(opts), str(bkg),
                                  *map(str, patches)])  # fmt: skip
        label = ", ".join(f"{k} {v!s}" for k, v in opts.items()) or "defaults"
        if cab.returncode == 0:
            cab_ok, used = True, label
            out = json.loads(cab.stdout.splitlines()[-1])
            break
        err = (cab.stderr.strip().splitlines() or ["?"])[-1][:120]
        tries.append(f"{label}: failed after {ref:.0f} s, {ref_cpu:.0f} CPU-s ({err})")
    cab_note = (
        f"{out['n']} parameters ranked with MINUIT {used}; {_agreement(rows, out)}"
        if cab_ok
        else "every setting failed"
    )
    if tries:
        cab_note += ". Failed before: " + "; ".join(tries)
    load1 = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    bounds = "POI bounds [-10, 10]" if args.bounds == "open" else "published POI bounds [0, 10]"
    opts = " ".join(
        f"--{k} {v}" for k, v in (("repeats", args.repeats), ("patch", args.patch),
                                  ("bounds", args.bounds), ("cpu", args.cpu))
    )  # fmt: skip
    ratio, ratio_cpu = ref / warm, ref_cpu / warm_cpu
    met = cab_ok and min(ratio, ratio_cpu) >= 50
    lines = [
        "",
        f"Produced by `python benchmarks/ranking.py {opts}` ({stamp}, {os.cpu_count()} CPU "
        f"cores shared with other sessions, load average {load0[0]:.1f} before and "
        f"{load1[0]:.1f} after; every process pinned to core {args.cpu} with `taskset`, one "
        f"after the other). Whole commands (fresh processes): wall time and CPU seconds. "
        f"sbottom RegionA + `patch.{args.patch}.json` ({bounds}): every parameter but the POI "
        "fixed at its best fit +- its pre-fit and post-fit width and the rest refitted "
        "(cabinetry's definition). diffhep: the refits in compiled chunks; cabinetry 0.6 "
        "(pyhf numpy backend, MINUIT): one fit after the other.",
        "",
        "| | diffhep warm cache | diffhep cold cache | cabinetry | cabinetry / diffhep warm |",
        "|---|---:|---:|---:|---:|",
        f"| whole command, wall (s) | {warm:.2f} | {cold:.2f} | {ref:.2f} | **{ratio:.0f}x** |",
        f"| whole command, CPU (s) | {warm_cpu:.2f} | {cold_cpu:.2f} | {ref_cpu:.2f} | "
        f"**{ratio_cpu:.0f}x** |",
        "",
        f"diffhep ranked {len(rows)} parameters; cabinetry: {cab_note}.",
        f"Target >= 50x (issue 22): **{'met' if met else 'not met'}**"
        + ("" if cab_ok else " (the reference did not finish)")
        + ".",
        "",
        "The impacts differ from cabinetry's by up to ~1% of the largest: MINUIT's default "
        "tolerance (EDM < 2e-4) stops cabinetry's fits that far from the minimum (its "
        "nominal mu_SIG -0.0883 against diffhep's -0.0869, 2026-12-04); the tests compare "
        "with cabinetry at tolerance 1e-6 to 1e-3 (tests/test_diagnostics.py).",
        "",
        "Where diffhep's warm 2.3 CPU-s go (2026-12-04 22:04 UTC, the command's stages timed "
        "in one process, pinned, load 7.3): imports 0.7 CPU-s, workspace and model 0.1, the "
        "nominal fit with its Hessian 0.4, the 250 refits 0.4 (1.6 CPU-ms each, once "
        "compiled), the remaining ~0.7 the CLI's start-up and loading the compiled kernels "
        "(not timed separately). The refits no longer dominate: 15.6-20.5 s wall was measured "
        "at 16:46-16:55 UTC (load 3-9, sbottom_1000_205_60).",
        "",
        "Why this signal point (measured 2026-12-04 20:58-21:41 UTC, pinned, load 5-10): "
        "until then the benchmark ranked `sbottom_1000_205_60` with the POI bounds opened, "
        "and every cabinetry setting failed (the section below: its nominal fit already "
        "fails, most of MINUIT's likelihood evaluations are NaN). diffhep's minimum there "
        "is mu_SIG = -0.633 +- 0.550 (-2 log L 98.481), next to mu_SIG = -0.645, where the "
        "signal region's expected yield turns negative at nominal nuisance parameters: "
        "MINUIT's steps cross into that region, pyhf's Poisson term is NaN there, and MINUIT "
        "stops at 112.40 (no parameter at a bound; the same model with the published "
        "bounds [0, 10] converges, so neither the symmetrised variations nor a bound are "
        "the cause). With the published bounds [0, 10] cabinetry's ranking of that point "
        "finishes (250 refits, 212 CPU-s pinned at load 9, 407 s wall), but its best fit "
        "sits at the bound mu_SIG = 0 and diffhep's impacts are all 0: no ranking to "
        "compare. All five RegionA signal points checked have a negative best fit (the signal "
        "region has a deficit in its two upper bins); `sbottom_1000_730_600` has mu_SIG = "
        "-0.087 +- 0.578 and stays positive down to mu_SIG = -2.0, so MINUIT converges "
        "there with cabinetry's defaults (nominal fit 1.2 CPU-s, all 250 refits).",
        "",
    ]
    publish(args.output, HEADING, lines)


if __name__ == "__main__":
    main()
