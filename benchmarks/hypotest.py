"""Benchmark: one asymptotic hypothesis test (CLs at mu = 1, qtilde, expected band).

diffhep (jitted, warm and first call) against pyhf 0.7.6 in three configurations
(numpy+scipy, jax+scipy, numpy+minuit), side by side in one run on this machine, on:

- ``pyhf.simplemodels.uncorrelated_background`` with 1, 10, 100 and 1000 bins
  (random yields and Poisson data from fixed seeds);
- a hand-built one-channel 50-bin model: signal (normfactor ``mu``) and two backgrounds,
  5 histosys, 5 normsys and staterror;
- RegionA of the ATLAS sbottom likelihood (HEPData ins1748602) at the 1300/850/60 GeV point.

Also ``jax.vmap`` of the hypotest over 100 signal hypotheses (10-bin simple model and the
50-bin model) against 100 pyhf calls (extrapolated from single calls of pyhf's fastest
configuration), and diffhep's compile time. Checks the targets of the issue and writes the
section "## Hypothesis test (benchmarks/hypotest.py)" of ``docs/benchmarks.md`` (other
sections of that file are kept).

Every pyhf measurement runs in a fresh worker process (this script with ``--pyhf-worker``),
so pyhf's backends and caches never share a process with diffhep, and a pyhf call that takes
longer than ``--pyhf-timeout`` seconds is stopped and reported as a lower bound.

Usage:
    python benchmarks/hypotest.py            # full run (30-40 min on 2 CPUs), writes the doc
    python benchmarks/hypotest.py --quick    # no 1000-bin pyhf runs, fewer repeats, no doc
                                             # (unless --output is given)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from _docs import write_section

ROOT = Path(__file__).resolve().parent.parent
SBOTTOM_TARBALL = ROOT / "tests" / "data" / "pyhf-ins1748602-probability-models.tar.gz"
SBOTTOM_POINT = "sbottom_1300_850_60"
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Hypothesis test (benchmarks/hypotest.py)"

POI_TEST = 1.0
PYHF_CONFIGS = ("numpy+scipy", "jax+scipy", "numpy+minuit")
SIMPLE_BINS = (1, 10, 100, 1000)
N_SIGNAL_POINTS = 100
VMAP_CASES = ("simple_10", "model_50")
EXPENSIVE = ("simple_1000",)  # pyhf: one timed call, no warm-up on the same model

TARGET_SPEEDUP = 10.0  # warm diffhep vs pyhf's fastest configuration, models with >= 10 bins
TARGET_MIN_BINS = 10
TARGET_VMAP_SPEEDUP = 100.0  # vmap over 100 signal points vs 100 pyhf calls
TARGET_COMPILE_S = 10.0


# --------------------------------------------------------------------------- models
# Every model is a pure function of fixed seeds, so the main process (diffhep) and the pyhf
# worker processes build exactly the same numbers.


def simple_inputs(nbins: int):
    """Signal, background, background uncertainty and observed counts of a simple model.

    Backgrounds of 20-200 events per bin with a 10% uncorrelated uncertainty; the signal is
    scaled with 1/sqrt(nbins) so that the expected sensitivity (about 3 sigma without
    systematics) and hence CLs stay in a realistic range at every size.
    """
    rng = np.random.default_rng(20240 + nbins)
    bkg = rng.uniform(20.0, 200.0, nbins)
    sig = rng.uniform(0.5, 1.5, nbins) * 3.0 * np.sqrt(bkg) / np.sqrt(nbins)
    unc = 0.1 * bkg
    obs = rng.poisson(bkg).astype(float)
    return np.round(sig, 6), np.round(bkg, 6), np.round(unc, 6), obs


def model50_spec(signal=None) -> dict:
    """One channel, 50 bins: signal (normfactor mu) + two backgrounds; 5 histosys,
    5 normsys and staterror (61 parameters)."""
    n = 50
    x = np.arange(n) + 0.5
    t = (x - n / 2) / (n / 2)  # -1 .. 1
    sig0 = 8.0 * np.exp(-0.5 * ((x - 30.0) / 2.8) ** 2)
    sig = sig0 if signal is None else np.asarray(signal)
    bkg1 = 500.0 * np.exp(-x / 15.0) + 5.0
    bkg2 = 40.0 + 10.0 * np.sin(x / 8.0)

    def r(a):
        return [round(float(v), 6) for v in a]

    def histo(name, nom, shape):
        return {
            "name": name,
            "type": "histosys",
            "data": {"lo_data": r(nom * (1.0 - shape)), "hi_data": r(nom * (1.0 + shape))},
        }

    def norm(name, lo, hi):
        return {"name": name, "type": "normsys", "data": {"lo": lo, "hi": hi}}

    def stat(nom, frac):
        return {"name": "staterror_SR", "type": "staterror", "data": r(frac * np.sqrt(nom))}

    samples = [
        {
            "name": "signal",
            "data": r(sig),
            "modifiers": [
                {"name": "mu", "type": "normfactor", "data": None},
                norm("lumi_like", 0.98, 1.02),
                norm("sig_theory", 0.9, 1.1),
                norm("eff", 0.95, 1.05),
                # from the nominal signal even when ``signal`` replaces the yields, as
                # Model.with_yields(nominal=...) keeps the staterror uncertainties
                stat(np.maximum(sig0, 1e-3), 0.2),
            ],
        },
        {
            "name": "bkg1",
            "data": r(bkg1),
            "modifiers": [
                histo("jes", bkg1, 0.06 * t),
                histo("jer", bkg1, 0.03 * t**2),
                histo("pileup", bkg1, 0.02 * np.sin(3.0 * t)),
                histo("bkg1_model", bkg1, 0.08 * (t + 1.0) / 2.0),
                norm("lumi_like", 0.98, 1.02),
                norm("bkg1_xsec", 0.9, 1.12),
                norm("eff", 0.95, 1.05),
                stat(bkg1, 0.3),
            ],
        },
        {
            "name": "bkg2",
            "data": r(bkg2),
            "modifiers": [
                histo("jes", bkg2, -0.04 * t),
                histo("jer", bkg2, 0.02 * t**2),
                histo("bkg2_model", bkg2, 0.05 * np.cos(2.0 * t)),
                norm("lumi_like", 0.98, 1.02),
                norm("bkg2_xsec", 0.85, 1.15),
                norm("eff", 0.95, 1.05),
                stat(bkg2, 0.3),
            ],
        },
    ]
    return {"channels": [{"name": "SR", "samples": samples}], "parameters": []}


def model50_obs() -> np.ndarray:
    spec = model50_spec()
    bkg = sum(np.asarray(s["data"]) for s in spec["channels"][0]["samples"][1:])
    return np.random.default_rng(5050).poisson(bkg).astype(float)


def load_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sbottom_files(sbottom_dir: Path):
    region = sbottom_dir / "RegionA"
    return load_json(region / "BkgOnly.json"), load_json(region / f"patch.{SBOTTOM_POINT}.json")


def extract_sbottom(dest: Path) -> Path:
    """Extract the published likelihoods; return the directory holding ``RegionA``."""
    with tarfile.open(SBOTTOM_TARBALL, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    for candidate in [dest, *sorted(p for p in dest.rglob("*") if p.is_dir())]:
        if (candidate / "RegionA" / "BkgOnly.json").is_file():
            return candidate
    raise FileNotFoundError(f"RegionA/BkgOnly.json not found in {SBOTTOM_TARBALL}")


@dataclass
class Case:
    key: str
    label: str
    nbins: int = 0
    npars: int = 0
    signal: np.ndarray | None = None  # nominal signal (cases with vmap)
    # filled by the main process
    pyhf: dict = field(default_factory=dict)  # config -> worker result
    diffhep: dict = field(default_factory=dict)


CASES = [
    *(Case(f"simple_{n}", f"simple, {n} bin{'s' * (n > 1)}") for n in SIMPLE_BINS),
    Case("model_50", "50-bin model"),
    Case("sbottom_A", "sbottom RegionA"),
]
LEGEND = (
    "simple = `pyhf.simplemodels.uncorrelated_background` (background 20-200 per bin with a "
    "10% uncorrelated shapesys, signal scaled by 1/sqrt(bins), Poisson data; fixed seeds); "
    "50-bin model = one channel, signal (normfactor mu) + two backgrounds, 5 histosys, "
    "5 normsys, staterror (hand-built, deterministic); sbottom RegionA = "
    f"`RegionA/BkgOnly.json` + `patch.{SBOTTOM_POINT}.json` of the ATLAS sbottom multi-b "
    "likelihoods (HEPData ins1748602)."
)


def signal_points(case_key: str, nominal_signal: np.ndarray, n: int = N_SIGNAL_POINTS):
    """``n`` signal hypotheses: the nominal signal with a random overall scale (0.2-2.5) and
    a random +-20% bin-by-bin shape change (fixed seed)."""
    rng = np.random.default_rng(777 + len(case_key))
    scale = rng.uniform(0.2, 2.5, n)
    shape = rng.uniform(0.8, 1.2, (n, nominal_signal.shape[0]))
    return nominal_signal[None, :] * scale[:, None] * shape


# --------------------------------------------------------------------------- pyhf worker
def pyhf_model_and_data(case_key: str, sbottom_dir: str | None, signal=None):
    """pyhf model (under the current backend) and data list; ``signal`` replaces the
    nominal signal yields (vmap cross-checks)."""
    import pyhf

    if case_key.startswith("simple_"):
        sig, bkg, unc, obs = simple_inputs(int(case_key.split("_")[1]))
        sig = sig if signal is None else np.asarray(signal)
        model = pyhf.simplemodels.uncorrelated_background(sig.tolist(), bkg.tolist(), unc.tolist())
        return model, obs.tolist() + model.config.auxdata
    if case_key == "model_50":
        model = pyhf.Model(model50_spec(signal), poi_name="mu")
        return model, model50_obs().tolist() + model.config.auxdata
    if case_key == "sbottom_A":
        spec, patch = sbottom_files(Path(sbottom_dir))
        ws = pyhf.Workspace(spec)
        model = ws.model(patches=[patch])
        return model, list(ws.data(model))
    raise ValueError(case_key)


def pyhf_worker(job: dict) -> dict:
    """Time ``pyhf.infer.hypotest`` in this (fresh) process; return times and CLs."""
    import warnings

    warnings.filterwarnings("ignore")
    import pyhf

    backend, optimizer = job["config"].split("+")
    pyhf.set_backend(backend, optimizer)

    def hypotest(model, data):
        cls_obs, cls_exp = pyhf.infer.hypotest(
            POI_TEST, data, model, test_stat="qtilde", return_expected_set=True
        )
        return float(cls_obs), [float(v) for v in cls_exp]

    # first-call overheads (lazy imports) on a 1-bin model, cheap for every configuration
    tiny = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [5.0])
    hypotest(tiny, pyhf.tensorlib.astensor([52.0, *tiny.config.auxdata]))

    model, data = pyhf_model_and_data(job["case"], job.get("sbottom_dir"), job.get("signal"))
    data = pyhf.tensorlib.astensor(data)
    out = {"config": job["config"], "npars": model.config.npars, "nbins": model.config.nmaindata}
    if job["warmup"]:
        t0 = time.perf_counter()
        hypotest(model, data)
        out["warmup_s"] = time.perf_counter() - t0
    times = []
    while True:
        t0 = time.perf_counter()
        cls_obs, cls_exp = hypotest(model, data)
        times.append(time.perf_counter() - t0)
        if len(times) >= job["repeats"] or sum(times) >= job["budget_s"]:
            break
    # the fastest call: conservative for diffhep's speed-ups (the machine is shared, and
    # pyhf's jax backend needs a few calls to reach its steady state)
    out.update(times=times, time_s=min(times), cls_obs=cls_obs, cls_exp=cls_exp)
    return out


def run_pyhf(job: dict, timeout: float) -> dict:
    """Run one pyhf measurement in a fresh process, stopped after ``timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pyhf-worker", json.dumps(job)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"config": job["config"], "timeout_s": timeout}
    if proc.returncode != 0:
        raise RuntimeError(f"pyhf worker failed for {job}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- diffhep
def time_jax(fn, args, repeats: int, budget_s: float):
    """First call (trace + compile + run) and the median of warm calls."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    while len(times) < repeats and (len(times) < 3 or sum(times) < budget_s):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times, out


def diffhep_model_and_data(case_key: str, sbottom_dir: Path):
    import diffhep

    if case_key.startswith("simple_"):
        import pyhf

        pyhf.set_backend("numpy")
        sig, bkg, unc, obs = simple_inputs(int(case_key.split("_")[1]))
        spec = pyhf.simplemodels.uncorrelated_background(
            sig.tolist(), bkg.tolist(), unc.tolist()
        ).spec
        model = diffhep.Model.from_spec(copy.deepcopy(spec), poi_name="mu")
        return model, obs.tolist() + list(model.config.auxdata), sig
    if case_key == "model_50":
        spec = model50_spec()
        model = diffhep.Model.from_spec(spec, poi_name="mu")
        sig = np.asarray(spec["channels"][0]["samples"][0]["data"])
        return model, model50_obs().tolist() + list(model.config.auxdata), sig
    if case_key == "sbottom_A":
        spec, patch = sbottom_files(sbottom_dir)
        ws = diffhep.Workspace(spec).patched(patch)
        model = ws.model()
        return model, ws.data(model), None
    raise ValueError(case_key)


def signal_row(model) -> int:
    samples = model.config.samples
    return samples.index("signal") if "signal" in samples else 0


# --------------------------------------------------------------------------- formatting
def fmt_t(seconds) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_x(ratio, lower_bound=False) -> str:
    if ratio is None:
        return "n/a"
    prefix = "> " if lower_bound else ""
    return f"{prefix}{ratio:.3g}x" if ratio < 1000 else f"{prefix}{ratio:,.0f}x"


def fmt_e(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def pyhf_time(res: dict | None):
    """(seconds, is_lower_bound) of a pyhf measurement; (None, False) if not run."""
    if not res:
        return None, False
    if "timeout_s" in res:
        return res["timeout_s"], True
    return res["time_s"], False


def fastest(case: Case):
    """(config, seconds, is_lower_bound) of pyhf's fastest measured configuration."""
    done = [(pyhf_time(r)[0], pyhf_time(r)[1], c) for c, r in case.pyhf.items() if r]
    if not done:
        return None, None, False
    finished = [d for d in done if not d[1]]
    t, lb, c = min(finished or done)
    return c, t, lb and not finished


def machine_info() -> dict:
    import jax
    import jaxlib
    import pyhf

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    versions["jaxlib"] = jaxlib.__version__
    versions["pyhf"] = pyhf.__version__
    for mod in ("numpy", "scipy", "iminuit", "equinox", "diffhep"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return {
        "nproc": nproc,
        "cpu": cpu,
        "platform": platform.platform(),
        "versions": versions,
        "jax_devices": ", ".join(str(d) for d in jax.devices()),
    }


# --------------------------------------------------------------------------- report
def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


DISAGREE = 1e-3  # |dCLs| above this is flagged


def build_report(cases, vmaps, info, meta) -> tuple[str, list[str]]:
    v = info["versions"]
    lines = [
        HEADING,
        "",
        f"Date: {meta['date']}  ",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['platform']}; "
        f"JAX devices: {info['jax_devices']}  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + "  ",
        f"Run: `{meta['command']}` ({meta['mode']}), {meta['total_s'] / 60:.1f} min; "
        f"load average (1 min) {meta['load_start']:.2f} at start, {meta['load_end']:.2f} at "
        "end (the machine is shared with other processes: expect noise).",
        "",
        f"One `hypotest` at mu = {POI_TEST:g}, `qtilde`, with the expected band (5 CLs values), "
        "float64 everywhere: pyhf 0.7.6 `pyhf.infer.hypotest(..., return_expected_set=True)` "
        "against diffhep `jax.jit(lambda m, d: diffhep.stats.hypotest.hypotest(1.0, m, d))`. "
        "Speed-up = pyhf time / diffhep warm time. |dCLs_obs|, |dCLs_exp| = largest absolute "
        "difference between diffhep and any of the three pyhf configurations (CLs_exp: over the "
        "5 values); 'pyhf spread' = the same between the pyhf configurations themselves.",
        "",
        LEGEND,
        "",
    ]
    header = [
        "model",
        "bins",
        "pars",
        "pyhf numpy+scipy",
        "pyhf jax+scipy",
        "pyhf numpy+minuit",
        "diffhep first call (compile+run)",
        "diffhep warm (median)",
        "speed-up vs numpy+scipy",
        "vs jax+scipy",
        "vs numpy+minuit",
        "vs fastest pyhf",
        "\\|dCLs_obs\\|",
        "\\|dCLs_exp\\|",
        "pyhf spread",
        "diffhep converged",
        f"{TARGET_SPEEDUP:g}x target",
    ]
    rows, fails, notes = [], [], []
    for case in cases:
        d = case.diffhep
        row = [case.label, str(case.nbins), str(case.npars)]
        speed = []
        for c in PYHF_CONFIGS:
            res = case.pyhf.get(c)
            t, lb = pyhf_time(res)
            if res is None:
                row.append("skipped")
            elif lb:
                row.append(f"> {fmt_t(t)} (stopped)")
            else:
                row.append(fmt_t(t) + (" ¹" if case.key in EXPENSIVE else ""))
            speed.append(None if t is None else (t / d["warm_s"], lb))
        row += [fmt_t(d["first_s"]), fmt_t(d["warm_s"])]
        row += [fmt_x(*sp) if sp else "n/a" for sp in speed]
        cfg, t_fast, lb_fast = fastest(case)
        ratio = None if t_fast is None else t_fast / d["warm_s"]
        row.append(fmt_x(ratio, lb_fast) + (f" ({cfg})" if cfg else ""))
        row += [fmt_e(d.get("dcls_obs")), fmt_e(d.get("dcls_exp")), fmt_e(d.get("pyhf_spread"))]
        row.append("yes" if d["converged"] else "**no**")
        if case.nbins < TARGET_MIN_BINS:
            verdict = f"n/a (< {TARGET_MIN_BINS} bins)"
        elif ratio is None:
            verdict = "not measured"
        elif ratio >= TARGET_SPEEDUP:
            verdict = "met"
        else:
            verdict = "**not met**"
            fails.append(f"{case.label}: {fmt_x(ratio)}")
        row.append(verdict)
        rows.append(row)
        if max(d.get("dcls_obs") or 0.0, d.get("dcls_exp") or 0.0) > DISAGREE:
            notes.append(
                f"diffhep's CLs differ from pyhf's by more than {DISAGREE:g} on {case.label}."
            )
    lines += table(header, rows)
    lines += [
        "",
        "pyhf times: the fastest of up to 5 calls (10 s budget; conservative for the "
        "speed-ups) in a fresh process, after a "
        "warm-up (jax+scipy: a full hypotest on the same model, so its JIT compilation is "
        "excluded; numpy: a hypotest on a 1-bin model, for first-call overheads).  ",
        "¹ 1000 bins: a single timed call per configuration and no warm-up on the same model "
        "(the jax+scipy time includes its JIT compilation). '(stopped)': the call was stopped "
        "after the given time; speed-ups against it are lower bounds.",
    ]
    # ---- vmap
    lines += [
        "",
        f"### vmap over {N_SIGNAL_POINTS} signal hypotheses",
        "",
        "`jax.jit(jax.vmap(lambda nom: hypotest(1.0, model.with_yields(nominal=nom), data)))` "
        f"over {N_SIGNAL_POINTS} different signal vectors (nominal signal x random overall "
        "scale 0.2-2.5 x random +-20% per bin, fixed seed). The pyhf column is **extrapolated**: "
        f"{N_SIGNAL_POINTS} x the per-call time of pyhf's fastest configuration on the nominal "
        f"model (table above), not {N_SIGNAL_POINTS} measured calls. Cross-checks: the vmapped "
        "CLs against single diffhep calls (points 0, 1, 99) and against single pyhf calls "
        "(fastest configuration; points 0 and 1).",
        "",
    ]
    header = [
        "model",
        "vmap first call (compile+run)",
        "vmap warm (median)",
        f"{N_SIGNAL_POINTS} x diffhep single warm call",
        f"{N_SIGNAL_POINTS} x pyhf fastest (extrapolated)",
        "speed-up vs pyhf",
        "speed-up vs serial diffhep",
        "converged",
        "\\|dCLs\\| vs single diffhep",
        "\\|dCLs\\| vs pyhf",
        f"{TARGET_VMAP_SPEEDUP:g}x target",
    ]
    rows, vfails = [], []
    for vm in vmaps:
        case = vm["case"]
        cfg, t_fast, lb = fastest(case)
        pyhf_total = None if t_fast is None else N_SIGNAL_POINTS * t_fast
        ratio = None if pyhf_total is None else pyhf_total / vm["warm_s"]
        serial = N_SIGNAL_POINTS * case.diffhep["warm_s"]
        if ratio is None:
            verdict = "not measured"
        elif ratio >= TARGET_VMAP_SPEEDUP:
            verdict = "met"
        else:
            verdict = "**not met**"
            vfails.append(f"{case.label}: {fmt_x(ratio)}")
        rows.append(
            [
                case.label,
                fmt_t(vm["first_s"]),
                fmt_t(vm["warm_s"]),
                fmt_t(serial),
                (fmt_t(pyhf_total) + f" ({cfg})") if pyhf_total else "n/a",
                fmt_x(ratio, lb),
                fmt_x(serial / vm["warm_s"]),
                f"{vm['n_converged']}/{N_SIGNAL_POINTS}",
                fmt_e(vm["dcls_single"]),
                fmt_e(vm.get("dcls_pyhf")),
                verdict,
            ]
        )
        if vm["n_converged"] < N_SIGNAL_POINTS:
            notes.append(
                f"vmap on {case.label}: {N_SIGNAL_POINTS - vm['n_converged']} of "
                f"{N_SIGNAL_POINTS} hypotests report a non-converged fit; under vmap the "
                "fits' while loops run until the slowest lane stops, so a lane that runs to the "
                "step limit sets the cost of the whole batch."
            )
        if serial < vm["warm_s"]:
            notes.append(
                f"vmap on {case.label} is slower than {N_SIGNAL_POINTS} serial diffhep calls "
                f"({fmt_t(vm['warm_s'])} vs {fmt_t(serial)})."
            )
        if (vm.get("dcls_pyhf") or 0.0) > DISAGREE:
            notes.append(
                f"vmap on {case.label}: the CLs of a cross-checked signal point differ from "
                f"pyhf's by {vm['dcls_pyhf']:.2g} (per point: "
                + ", ".join(f"{k}: {x:.1e}" for k, x in vm["dcls_pyhf_points"].items())
                + "). Largest gradient component of -log L at diffhep's unconditional fit "
                "(free parameters not at a bound; ~0 at a true minimum): "
                + ", ".join(
                    f"point {k}: {x:.2g} (hypotest reported converged: {'yes' if c else 'no'})"
                    for k, (x, c) in vm["proj_grad"].items()
                )
                + "."
            )
    lines += table(header, rows)
    # ---- compile
    compiles = [(c.label, c.diffhep["compile_s"]) for c in cases]
    compiles += [(f"vmap x{N_SIGNAL_POINTS}, {vm['case'].label}", vm["compile_s"]) for vm in vmaps]
    worst = max(compiles, key=lambda x: x[1])
    lines += [
        "",
        "### diffhep compile time",
        "",
        "First call - warm call: tracing + XLA compilation (JAX's persistent compilation cache "
        "is off; JAX itself was started before, untimed).",
        "",
        *table(["function", "compile time"], [[n, fmt_t(t)] for n, t in compiles]),
    ]
    # ---- targets
    measured = [c for c in cases if c.nbins >= TARGET_MIN_BINS and fastest(c)[1] is not None]
    unmeasured = [c.label for c in cases if c.nbins >= TARGET_MIN_BINS and fastest(c)[1] is None]
    t1 = bool(measured) and not fails
    t2 = bool(vmaps) and not vfails and all(fastest(vm["case"])[1] for vm in vmaps)
    t3 = worst[1] < TARGET_COMPILE_S
    summary = [
        f"- Warm diffhep >= {TARGET_SPEEDUP:g}x faster than pyhf's fastest configuration on "
        f"every model with >= {TARGET_MIN_BINS} bins: **{'met' if t1 else 'NOT MET'}**"
        + (f" (not met: {'; '.join(fails)})" if fails else "")
        + (f" (not measured: {'; '.join(unmeasured)})" if unmeasured else ""),
        f"- vmap over {N_SIGNAL_POINTS} signal points >= {TARGET_VMAP_SPEEDUP:g}x faster than "
        f"{N_SIGNAL_POINTS} pyhf calls (extrapolated): **{'met' if t2 else 'NOT MET'}**"
        + (f" (not met: {'; '.join(vfails)})" if vfails else ""),
        f"- Compile time < {TARGET_COMPILE_S:g} s: **{'met' if t3 else 'NOT MET'}** "
        f"(longest: {fmt_t(worst[1])}, {worst[0]})",
    ]
    lines += ["", "### Targets", "", *summary]
    if notes:
        lines += ["", "### Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n", summary


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="skip 1000-bin pyhf runs, fewer repeats")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown file to update (default: {DOC.relative_to(ROOT)}; none with --quick)",
    )
    p.add_argument("--pyhf-timeout", type=float, default=600.0, help="seconds per pyhf run")
    p.add_argument(
        "--only",
        help="comma-separated cases to run (development): " + ", ".join(c.key for c in CASES),
    )
    p.add_argument("--pyhf-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.pyhf_worker:
        print(json.dumps(pyhf_worker(json.loads(args.pyhf_worker))))
        return 0

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    output = args.output if args.output is not None else (None if args.quick else DOC)
    repeats, budget = (5, 2.0) if args.quick else (20, 10.0)
    pyhf_repeats, pyhf_budget = (2, 3.0) if args.quick else (5, 10.0)

    import jax
    import jax.numpy as jnp

    import diffhep
    from diffhep.stats.hypotest import hypotest

    diffhep.enable_x64()
    jax.config.update("jax_enable_compilation_cache", False)  # honest compile times
    jax.block_until_ready(jax.jit(lambda x: x + 1.0)(jnp.ones(3)))  # JAX start-up, untimed
    info = machine_info()
    print(f"{info['nproc']} CPUs, {info['cpu']}; {info['versions']}", flush=True)

    single = jax.jit(lambda m, d: hypotest(POI_TEST, m, d, test_stat="qtilde"))

    def many(m, d, noms):
        return jax.vmap(lambda nom: hypotest(POI_TEST, m.with_yields(nominal=nom), d))(noms)

    many = jax.jit(many)

    with tempfile.TemporaryDirectory(prefix="diffhep-bench-") as tmp:
        sbottom_dir = extract_sbottom(Path(tmp))
        only = set(args.only.split(",")) if args.only else {c.key for c in CASES}
        cases = [copy.deepcopy(c) for c in CASES if c.key in only]
        vmaps = []
        for case in cases:
            print(f"\n== {case.label}", flush=True)
            model, data, sig = diffhep_model_and_data(case.key, sbottom_dir)
            data = jnp.asarray(data)
            case.nbins, case.npars, case.signal = model.config.nmaindata, model.config.npars, sig
            first, warm, times, out = time_jax(single, (model, data), repeats, budget)
            case.diffhep = {
                "first_s": first,
                "warm_s": warm,
                "compile_s": first - warm,
                "times": times,
                "cls_obs": float(out.cls_obs),
                "cls_exp": [float(v) for v in out.cls_exp],
                "converged": bool(out.converged),
            }
            print(
                f"diffhep: first {fmt_t(first)}, warm {fmt_t(warm)} "
                f"(min {fmt_t(min(times))}, n={len(times)}); CLs_obs {float(out.cls_obs):.6g} "
                f"exp {[round(float(v), 6) for v in out.cls_exp]}; converged "
                f"{bool(out.converged)}",
                flush=True,
            )
            expensive = case.key in EXPENSIVE
            for cfg in PYHF_CONFIGS:
                if expensive and args.quick:
                    print(f"pyhf {cfg}: skipped (--quick)", flush=True)
                    continue
                job = {
                    "case": case.key,
                    "config": cfg,
                    "sbottom_dir": str(sbottom_dir),
                    "warmup": cfg.startswith("jax") and not expensive,
                    "repeats": 1 if expensive else pyhf_repeats,
                    "budget_s": pyhf_budget,
                }
                res = run_pyhf(job, args.pyhf_timeout)
                case.pyhf[cfg] = res
                if "timeout_s" in res:
                    print(f"pyhf {cfg}: stopped after {res['timeout_s']:.0f} s", flush=True)
                    continue
                assert res["nbins"] == case.nbins and res["npars"] == case.npars, res
                print(
                    f"pyhf {cfg}: {fmt_t(res['time_s'])} "
                    f"(calls {[round(t, 4) for t in res['times']]}"
                    + (f", warm-up {fmt_t(res['warmup_s'])}" if "warmup_s" in res else "")
                    + f"); CLs_obs {res['cls_obs']:.6g}",
                    flush=True,
                )
            done = [r for r in case.pyhf.values() if r and "cls_obs" in r]
            if done:
                d_obs = [abs(case.diffhep["cls_obs"] - r["cls_obs"]) for r in done]
                d_exp = [
                    np.max(np.abs(np.subtract(case.diffhep["cls_exp"], r["cls_exp"]))) for r in done
                ]
                spread = [
                    max(
                        abs(a["cls_obs"] - b["cls_obs"]),
                        *np.abs(np.subtract(a["cls_exp"], b["cls_exp"])),
                    )
                    for a in done
                    for b in done
                ]
                case.diffhep.update(
                    dcls_obs=float(max(d_obs)),
                    dcls_exp=float(max(d_exp)),
                    pyhf_spread=float(max(spread)),
                )
                print(
                    f"|dCLs_obs| {max(d_obs):.2e}, |dCLs_exp| {max(d_exp):.2e}, "
                    f"pyhf spread {max(spread):.2e}",
                    flush=True,
                )

            if case.key in VMAP_CASES:
                sigs = signal_points(case.key, np.asarray(case.signal))
                row = signal_row(model)
                noms = jnp.asarray(np.repeat(np.asarray(model.nominal)[None], len(sigs), axis=0))
                noms = noms.at[:, row, :].set(jnp.asarray(sigs))
                first, warm, times, out = time_jax(many, (model, data, noms), repeats, budget)
                vm = {
                    "case": case,
                    "first_s": first,
                    "warm_s": warm,
                    "compile_s": first - warm,
                    "n_converged": int(np.sum(np.asarray(out.converged))),
                }
                # cross-checks: single diffhep calls and pyhf (fastest configuration)
                check = (0, 1, N_SIGNAL_POINTS - 1)
                dsingle = 0.0
                for k in check:
                    r1 = single(model.with_yields(nominal=noms[k]), data)
                    dsingle = max(
                        dsingle,
                        abs(float(r1.cls_obs) - float(out.cls_obs[k])),
                        float(jnp.max(jnp.abs(r1.cls_exp - out.cls_exp[k]))),
                    )
                vm["dcls_single"] = dsingle
                cfg = fastest(case)[0]
                if cfg is not None:
                    per_point, proj_grad = {}, {}
                    lo, hi = np.asarray(model.config.bounds, dtype=float).T
                    for k in check[:2]:
                        job = {
                            "case": case.key,
                            "config": cfg,
                            "sbottom_dir": str(sbottom_dir),
                            "warmup": False,
                            "repeats": 1,
                            "budget_s": 0.0,
                            "signal": sigs[k].tolist(),
                        }
                        res = run_pyhf(job, args.pyhf_timeout)
                        if "cls_obs" in res:
                            # is diffhep's free fit at a minimum? (largest gradient component
                            # of -log L over the parameters not fixed or held at a bound)
                            xb = out.bestfit[k]
                            mk = model.with_yields(nominal=noms[k])
                            g = np.asarray(jax.grad(lambda x, mk=mk, d=data: -mk.logpdf(x, d))(xb))
                            xb = np.asarray(xb)
                            held = np.asarray(mk.config.fixed)
                            held |= (xb <= lo) & (g > 0)
                            held |= (xb >= hi) & (g < 0)
                            proj_grad[k] = (
                                float(np.max(np.abs(np.where(held, 0.0, g)))),
                                bool(out.converged[k]),
                            )
                            per_point[k] = max(
                                abs(res["cls_obs"] - float(out.cls_obs[k])),
                                float(np.max(np.abs(np.subtract(res["cls_exp"], out.cls_exp[k])))),
                            )
                            print(
                                f"  point {k}: pyhf {cfg} CLs_obs {res['cls_obs']:.6g}, "
                                f"diffhep {float(out.cls_obs[k]):.6g}",
                                flush=True,
                            )
                    if per_point:
                        vm["dcls_pyhf"] = max(per_point.values())
                        vm["dcls_pyhf_points"] = per_point
                        vm["proj_grad"] = proj_grad
                vmaps.append(vm)
                print(
                    f"vmap x{N_SIGNAL_POINTS}: first {fmt_t(first)}, warm {fmt_t(warm)}; "
                    f"converged {vm['n_converged']}/{N_SIGNAL_POINTS}; |dCLs| vs single "
                    f"{dsingle:.1e}, vs pyhf {vm.get('dcls_pyhf', float('nan')):.1e}",
                    flush=True,
                )

    total = time.perf_counter() - t_start
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/hypotest.py" + (" --quick" if args.quick else ""),
        "mode": "quick: no 1000-bin pyhf runs, fewer repeats" if args.quick else "full",
        "total_s": total,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    section, _ = build_report(cases, vmaps, info, meta)
    print("\n" + section)
    if output is not None:
        write_section(output, HEADING, section)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
