"""The Python API as an analyst calls it: ``hypotest`` from plain Python (no ``jax.jit`` of
one's own) on one signal point after another, in a fresh process, against pyhf.

For each model, one process per variant runs ``hypotest(1.0, model, data)`` (qtilde, with the
expected band) on the signal points in turn and times every call: the first (it compiles)
and the next ones (other signal points of the same structure). Variants: diffhep from this
checkout, diffhep from another source tree (``--baseline SRC``, e.g. a checkout of an older
commit: the same script, side by side in one run), pyhf 0.7 on its numpy backend (scipy's
optimiser, its default) and on JAX. Models: sbottom RegionA (``BkgOnly.json`` and the first
``--points`` signal patches by name, 64 parameters, 6 bins) and pyhf's 2-bin example (the
signal scaled per point).

Usage:
    python benchmarks/python_calls.py [--points 6] [--baseline SRC] [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _docs import write_section
from hypotest import extract_sbottom

ROOT = Path(__file__).parents[1]
HEADING = "## Python calls: hypotest point after point, without a jit of one's own"

#: Run in a child process: ``CHILD VARIANT POINTS_JSON`` prints the seconds of each call.
CHILD = r"""
import json, sys, time
variant, path = sys.argv[1], sys.argv[2]
points = json.load(open(path))
times = []
if variant.startswith("pyhf"):
    import jsonpatch, pyhf
    pyhf.set_backend("jax" if variant == "pyhf-jax" else "numpy")
    for spec, patch in points:
        ws = pyhf.Workspace(jsonpatch.apply_patch(spec, patch))
        model = ws.model()
        data = ws.data(model)
        t0 = time.perf_counter()
        obs, exp = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde",
                                       return_expected_set=True)
        cls = float(obs)
        times.append(time.perf_counter() - t0)
else:
    import diffhep
    diffhep.enable_x64()
    if variant == "diffhep-cached":
        diffhep.enable_cache()
    for spec, patch in points:
        ws = diffhep.Workspace(spec).patched(patch)
        model = ws.model()
        data = ws.data(model)
        t0 = time.perf_counter()
        r = diffhep.stats.hypotest.hypotest(1.0, model, data)
        cls = float(r.cls_obs)
        times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "cls": cls}))
"""


def _sbottom_points(n: int, tmp: Path) -> list:
    region = extract_sbottom(tmp) / "RegionA"
    spec = json.loads((region / "BkgOnly.json").read_text())
    patches = sorted(region.glob("patch.sbottom_*.json"))[:n]
    return [(spec, json.loads(p.read_text())) for p in patches]


def _small_points(n: int) -> list:
    from diffhep.stats.workspace import example_spec

    spec = example_spec()
    points = []
    for i in range(n):
        scale = 1.0 - 0.1 * i
        data = [scale * x for x in spec["channels"][0]["samples"][0]["data"]]
        patch = [{"op": "replace", "path": "/channels/0/samples/0/data", "value": data}]
        points.append((spec, patch))
    return points


def _run(variant: str, points_file: Path, src: Path | None) -> dict:
    env = dict(os.environ, DIFFHEP_CACHE_DIR=str(points_file.parent / "cache"))
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(points_file)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--baseline", type=Path, help="source tree of the diffhep to compare with")
    ap.add_argument("--baseline-label", default="baseline", help="its name in the table")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    variants = {"diffhep": ROOT / "src", "diffhep-cached": ROOT / "src"}
    if args.baseline is not None:
        variants[f"diffhep ({args.baseline_label})"] = args.baseline
    variants |= {"pyhf-numpy": None, "pyhf-jax": None}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, points in (
            ("sbottom RegionA", _sbottom_points(args.points, tmp)),
            ("2-bin example", _small_points(args.points)),
        ):
            path = tmp / "points.json"
            path.write_text(json.dumps(points))
            for variant, src in variants.items():
                if variant == "diffhep-cached":  # a session before this one filled the cache
                    _run(variant, path, src)
                res = _run(variant.split(" ")[0], path, src)
                t = res["times"]
                rows.append((label, variant, t[0], statistics.median(t[1:]), res["cls"]))
                print(rows[-1], flush=True)
    ref = {(lab, v): nxt for lab, v, _, nxt, _ in rows}
    lines = [
        HEADING,
        "",
        f"Produced by `python benchmarks/python_calls.py --points {args.points}"
        + (f" --baseline SRC --baseline-label {args.baseline_label}" if args.baseline else "")
        + f"` ({started}, {os.cpu_count()} CPU cores, each variant in a fresh process, one "
        "after the other). `hypotest(1.0, model, data)` (qtilde, expected band) from plain "
        "Python on one signal point after another: the first call, and the median of the next "
        f"{args.points - 1} (other points of the same structure). pyhf 0.7 with scipy's "
        "optimiser. `diffhep-cached`: with `diffhep.enable_cache()`, in a session after one "
        "that ran the same points (their compiled kernels on disk)."
        + (
            f" `diffhep ({args.baseline_label})`: the source tree given by `--baseline`."
            if args.baseline
            else ""
        ),
        "",
        "| model | variant | first call (s) | next calls, median (s) | pyhf numpy / this, next "
        "calls | CLs_obs of the last point |",
        "|---|---|---|---|---|---|",
    ]
    for lab, v, first, nxt, cls in rows:
        ratio = ref[(lab, "pyhf-numpy")] / nxt
        lines.append(f"| {lab} | {v} | {first:.3f} | {nxt:.4f} | {ratio:.3g}x | {cls:.6g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(args.output, HEADING, text)


if __name__ == "__main__":
    main()
