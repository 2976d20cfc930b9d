# ruff: noqa: E501
"""Peak memory and events/s of streamed training (training.chunk_events) against the number
of events on disk (issue 23): writes docs/benchmarks-training-memory.md.

For each size the built-in Z' -> ttbar generator writes ROOT files into a temporary directory
(its own peak RSS measured with /usr/bin/time -v), then ``diffhep train`` runs one epoch of the
reduced config below (3 samples, one feature-level JES variation read again from the files,
weight variations, 2 channels) with ``training.chunk_events`` under /usr/bin/time -v: the peak
RSS of the whole process (data, JAX, compiled programs) and the training events/s of the epoch
(the run's metrics.jsonl). The directory is deleted afterwards unless --keep.

    nice -n 5 python benchmarks/training_memory.py --sizes 100000 1000000
    python benchmarks/training_memory.py --sizes 10000000 --data 10000000=/path/to/generated
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESEL = "sum(Jet_pt > 30) >= 4 && sum(Muon_pt > 30) + sum(Electron_pt > 30) == 1 && MET_pt > 20"
W = "genWeight * btagWeight_DeepCSVB"
CONFIG = f"""seed: 0
data:
  tree: Events
  features: [MET_pt, "Muon_pt[0] + Electron_pt[0]", "sum(Jet_pt * (Jet_pt > 30))", "sum(Jet_pt > 30)",
             "sum((Jet_pt > 30) & (Jet_btagDeepFlavB > 0.3))"]
analysis:
  samples:
    - {{name: zprime_1500, role: signal, files: ["zprime_1500_*.root"], weight: "{W}", filter: "{PRESEL}"}}
    - {{name: ttbar, role: background, files: ["ttbar_*.root"], weight: "{W}", filter: "{PRESEL}"}}
    - {{name: wjets, role: background, files: ["wjets_*.root"], weight: "{W}", filter: "{PRESEL}"}}
  normfactors: [{{name: k_ttbar, samples: [ttbar], nominal: 1.0, bounds: [0.0, 5.0]}}]
  shape_systematics:
    - {{name: jes_absolute, samples: [zprime_1500, ttbar, wjets],
       up: {{columns: {{Jet_pt: Jet_pt_jesAbsoluteUp}}}}, down: {{columns: {{Jet_pt: Jet_pt_jesAbsoluteDown}}}}}}
    - {{name: btag_b, samples: [zprime_1500, ttbar, wjets],
       up: {{weight: "genWeight * btagWeight_DeepCSVB_bUp"}}, down: {{weight: "genWeight * btagWeight_DeepCSVB_bDown"}}}}
    - {{name: top_pt, sample: ttbar, up: {{weight: "{W} * exp(0.0615 - 0.0005 * LHE_HT / 2)"}}}}
  norm_systematics: [{{name: lumi, samples: [zprime_1500, ttbar, wjets], lo: 0.975, hi: 1.025}}]
  mc_stat: true
  channels:
    - {{name: SR, bins: 4, filter: "sum((Jet_pt > 30) & (Jet_btagDeepFlavB > 0.3)) >= 2"}}
    - {{name: CR_ttbar, bins: 3, observable: "sum(Jet_pt * (Jet_pt > 30))", edges: [120, 400, 700, 3000],
       filter: "sum((Jet_pt > 30) & (Jet_btagDeepFlavB > 0.3)) == 1"}}
observable: {{hidden: [16], kind: mlp}}
training: {{loss: cls, epochs: 1, batch_size: 20000, chunk_events: 50000}}
report: {{diagnostics: false}}
"""


def _timed(cmd, env=None) -> tuple[float, float, float]:
    """(peak RSS MB, wall s, CPU s) of a command under /usr/bin/time -v."""
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    err = res.stderr
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", err).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", err).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err).group(1)
    parts = [float(p) for p in wall.split(":")]
    wall_s = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return rss, wall_s, user + sys_


DOC = ROOT / "docs" / "benchmarks-training-memory.md"


def write_markdown(rows, path=DOC, note="") -> None:
    """The table of the rows (one per size) and what they show."""
    lines = [
        "# Streamed training: peak memory against the number of events",
        "",
        "`python benchmarks/training_memory.py` (this file is written from its JSON,",
        "`docs/benchmarks-training-memory.json`). One epoch of the benchmark's reduced",
        "Z' -> ttbar config (zprime_1500, ttbar, wjets; a feature-level JES variation re-read",
        "from the files, b-tag and top-pT weight variations; SR with the trained observable,",
        "CR_ttbar in HT bins; 20,000 events per event set and step) with",
        "`training.chunk_events: 50000`, on ROOT files of the built-in generator.",
        "Peak RSS: of the whole `diffhep train` process (/usr/bin/time -v), i.e. Python,",
        "JAX, its compilation (each size with a fresh compilation cache: the same compile",
        "work) and its compiled programs (the CLs fits) included; it does not depend on the",
        "machine's load. Events/s: events read into the training batches of the epoch per",
        "second of the epoch (reading, features, optimiser steps, the first step's",
        "compilation), under the load given (shared 2-core machine, `nice -n 5`): it depends",
        "on the load; CPU-seconds are the comparable cost.",
        "",
        "| events on disk | training events (3 samples) | peak RSS train (MB) | wall (s) | "
        "CPU (s) | epoch events/s | generator peak RSS (MB) | load (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gen = r.get("generate_peak_rss_mb") or (r["generate"][0] if r.get("generate") else None)
        t = r["train"]
        eps = r["epoch_events_per_second"]
        lines.append(
            f"| {r['events']:,} | {r['training_events']:,} | {t['peak_rss_mb']:.0f} | "
            f"{t['wall_s']:.0f} | {t['cpu_s']:.0f} | {eps:,.0f} | "
            f"{'-' if gen is None else f'{gen:.0f}'} | {r['uptime'][0]:.1f} |"
        )
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        ratio = hi["train"]["peak_rss_mb"] / lo["train"]["peak_rss_mb"]
        lines += [
            "",
            f"From {lo['events']:,} to {hi['events']:,} events on disk "
            f"({hi['events'] / lo['events']:.0f}x) the peak RSS of training changes by "
            f"{ratio:.2f}x.",
        ]
        lines += ["", _verdict(rows)]
    if note:
        lines += ["", note]
    path.write_text("\n".join(lines) + "\n")


#: Peak RSS counts as independent of the event count within this relative change.
TOLERANCE = 0.05


def _verdict(rows) -> str:
    """Whether the peak RSS is independent of the event count: every size from 1e6 events on
    (where the batches have reached ``batch_size``) within ``TOLERANCE`` of the 1e6 one."""
    full = [r for r in rows if r["events"] >= 1_000_000]
    if len(full) < 2:
        return "Verdict: needs two sizes of >= 1,000,000 events."
    base = full[0]["train"]["peak_rss_mb"]
    worst = max(abs(r["train"]["peak_rss_mb"] / base - 1) for r in full[1:])
    ok = worst <= TOLERANCE
    return (
        f"Verdict: from {full[0]['events']:,} to {full[-1]['events']:,} events the peak RSS "
        f"changes by at most {100 * worst:.1f}% (criterion: within {100 * TOLERANCE:.0f}%): "
        + ("independent of the event count." if ok else "NOT independent of the event count.")
    )


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--data", nargs="*", default=[], help="SIZE=DIR of generated files to reuse")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-training-memory.json"))
    ap.add_argument("--markdown", action="store_true", help="only write the markdown from --out")
    ap.add_argument("--note", default="", help="a paragraph appended to the markdown")
    args = ap.parse_args(argv)
    if args.markdown:
        write_markdown(json.loads(Path(args.out).read_text()), note=args.note)
        return
    given = {int(k): v for k, v in (d.split("=") for d in args.data)}
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DIFFHEP_REPORT_DIAGNOSTICS="0")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="diffhep-training-memory-"))
    try:
        (tmp / "config.yaml").write_text(CONFIG)
        for n in args.sizes:
            row = {"events": n, "uptime": os.getloadavg()}
            if n in given:
                files = Path(given[n])
            else:
                files = tmp / f"gen_{n}"
                row["generate"] = _timed([py, "-m", "diffhep", "generate", "ttbar-resonance",
                                          "--events", str(n), "--out", str(files),
                                          "--no-progress", "--no-data"], env)  # fmt: skip
            run = tmp / f"run_{n}"
            t0 = time.time()
            # a fresh compilation cache: every size compiles its programs (the same work)
            cache = tmp / f"cache_{n}"
            rss, wall, cpu = _timed([py, "-m", "diffhep", "train", str(tmp / "config.yaml"),
                                     "--out", str(run), "--set", f"data.base_dir={files}",
                                     "--no-progress"], env | {"DIFFHEP_CACHE_DIR": str(cache)})  # fmt: skip
            summary = json.loads((run / "summary.json").read_text())
            (epoch,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            s = summary["streamed"]
            row |= {
                "train": {"peak_rss_mb": rss, "wall_s": wall, "cpu_s": cpu},
                "training_events": sum(
                    s["training_events"][k] for k in ("zprime_1500", "ttbar", "wjets")
                ),
                "events_per_step": s["events_per_step"],
                "epoch_events_per_second": epoch["events_per_second"],
                "expected_cls": summary["expected_cls"],
                "started": time.strftime("%H:%M:%S", time.gmtime(t0)),
                "uptime_after": os.getloadavg(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            if n not in given and not args.keep:
                shutil.rmtree(files, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    write_markdown(rows, note=args.note)


if __name__ == "__main__":
    main()
