"""Benchmark: peak memory of ``diffhep apply`` for inputs 1x and 10x the chunk size.

A run directory is exported (``model.onnx`` + ``preprocess.json``; an MLP 64-64 on 10
features with two cuts and two channels, untrained: memory does not depend on the weights),
parquet and ROOT inputs of 1x, 3x and 10x the chunk size are written, and each is scored in a
fresh process; the peak resident set size during ``apply_run`` (sampled every 2 ms) is
compared with the one after imports and model loading. The 10x input read in a single chunk
is the unbounded reference (what reading the whole file would cost). Target: the peak for
10x stays within 10% of the peak for 1x. Writes a section of docs/benchmarks.md.

Usage: python benchmarks/apply_memory.py [--chunk 200000] [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _docs import publish

HEADING = "## Memory of `diffhep apply` (`benchmarks/apply_memory.py`)"
NFEAT = 10

CHILD = r"""
import json, resource, sys, threading, time
from diffhep.io.apply import apply_run
from diffhep.io.scoring import load_export
from pathlib import Path
run, file, out, step = sys.argv[1:5]
load_export(Path(run))  # imports and model loading, as apply does
def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
base, peak, done = rss_kb(), [0], threading.Event()
def sample():  # the peak during apply alone (ru_maxrss also holds the import peak)
    while not done.is_set():
        peak[0] = max(peak[0], rss_kb())
        time.sleep(0.002)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
res = apply_run(run, [file], out, step_size=int(step), tree="events")
done.set()
thread.join()
peak[0] = max(peak[0], rss_kb())
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak[0], "maxrss_kb": maxrss,
                  "events": res[0]["events"]}))
"""


def _export(run_dir: Path) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from diffhep.analysis.cuts import CutSpec
    from diffhep.analysis.pipeline import Events, Pipeline
    from diffhep.analysis.spec import Analysis, Channel
    from diffhep.io.onnx.export import export_onnx

    names = tuple(f"f{i}" for i in range(NFEAT))
    rng = np.random.default_rng(0)
    ev = {n: Events(rng.normal(size=(1000, NFEAT)).astype("f4"), np.ones(1000)) for n in "sb"}
    chans = (Channel("SR", 8), Channel("CR", 4, "f1", (-2.0, -1.0, 0.0, 1.0, 2.0)))
    pipe = Pipeline(Analysis(("s", "b"), "s", chans), names)
    cuts = [CutSpec("f0", ">", init=-1.0), CutSpec("f2", "window", init=(-2.0, 2.0))]
    params = pipe.init_params(ev, key=jax.random.key(0), hidden=(64, 64), cuts=cuts)
    export_onnx(run_dir, pipe, params)


def _inputs(d: Path, n: int, tag: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import uproot

    rng = np.random.default_rng(1)
    paths = {"parquet": d / f"{tag}.parquet", "ROOT": d / f"{tag}.root"}
    writer, tree = None, None
    with uproot.recreate(paths["ROOT"]) as f:
        for start in range(0, n, 250_000):
            m = min(250_000, n - start)
            cols = {f"f{i}": rng.normal(size=m).astype("f4") for i in range(NFEAT)}
            cols["evt"] = np.arange(start, start + m, dtype=np.int64)
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(paths["parquet"], table.schema)
                tree = f.mktree("events", {k: v.dtype for k, v in cols.items()})
            writer.write_table(table)
            tree.extend(cols)
        writer.close()
    return paths


def _measure(run_dir, file, out, step) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(run_dir), str(file), str(out), str(step)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=200_000)
    ap.add_argument("--output", default="docs/benchmarks.md")
    args = ap.parse_args()
    chunk = args.chunk
    rows, peaks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _export(d)
        inputs = {
            "1x": _inputs(d, chunk, "one"),
            "3x": _inputs(d, 3 * chunk, "three"),
            "10x": _inputs(d, 10 * chunk, "ten"),
        }
        cases = [("1x", chunk), ("3x", chunk), ("10x", chunk), ("10x", 10 * chunk)]
        for kind in ("parquet", "ROOT"):
            for size, step in cases:
                file = inputs[size][kind]
                r = _measure(d, file, d / f"out_{kind}_{size}_{step}", step)
                mb = os.path.getsize(file) / 2**20
                label = "whole file in one chunk (unbounded reference)" if step > chunk else ""
                peaks[(kind, size, step)] = r["peak_kb"] / 1024
                rows.append(
                    f"| {kind} | {size} | {r['events']:,} | {mb:.0f} MB | {step:,} | "
                    f"{r['base_kb'] / 1024:.0f} MB | {r['peak_kb'] / 1024:.0f} MB | "
                    f"{(r['peak_kb'] - r['base_kb']) / 1024:.0f} MB | "
                    f"{r['maxrss_kb'] / 1024:.0f} MB | {label} |"
                )
                print(rows[-1], flush=True)
    verdicts = []
    for kind in ("parquet", "ROOT"):
        one, ten = peaks[(kind, "1x", chunk)], peaks[(kind, "10x", chunk)]
        verdicts.append(f"{kind}: {ten:.0f} MB vs {one:.0f} MB ({ten / one:.2f}x)")
    ok = all(peaks[(k, "10x", chunk)] <= 1.1 * peaks[(k, "1x", chunk)] for k in ("parquet", "ROOT"))
    publish(
        args.output,
        HEADING,
        [
            "",
            f"`diffhep apply` on inputs of 1x, 3x and 10x the chunk size ({chunk:,} events of "
            f"{NFEAT} float32 features and an int64 event number), each in a fresh process: "
            "resident set size after imports and model loading, and its peak while `apply_run` "
            "runs (sampled every 2 ms; `ru_maxrss` of the process also holds the import "
            "peak). The model: an MLP 64-64 with two cuts and two channels (ONNX Runtime, "
            f"one thread). Machine: {os.cpu_count()} CPUs, {platform.machine()}.",
            "",
            "| input | size | events | file | chunk | RSS after imports | peak RSS in apply | "
            "increase | process peak (ru_maxrss) | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Target peak RSS (10x) <= 1.1 x peak RSS (1x): **{'met' if ok else 'NOT met'}** "
            f"({'; '.join(verdicts)}).",
            "",
        ],
    )


if __name__ == "__main__":
    main()
