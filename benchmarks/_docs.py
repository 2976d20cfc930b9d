"""Shared by the benchmark scripts: the blobs analysis they train, interleaved timing, and one
section of docs/benchmarks.md printed and replaced (or appended)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np


def blob_analysis():
    """The demo's analysis of the neos blobs: signal and background, one 4-bin channel, a
    shape systematic on the background (the diffhep modules load on the first call)."""
    from diffhep.analysis.spec import Analysis, Channel, ShapeSystematic

    return Analysis(
        samples=("signal", "background"),
        signal="signal",
        channels=(Channel("SR", 4),),
        shape_systematics=(
            ShapeSystematic("bkg_shape", "background", "background_up", "background_down"),
        ),
    )


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(runs: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """``{name: [seconds per call]}``: the runs called in turn, ``repeats`` rounds (so that no
    variant profits from a quieter machine or caches another filled)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return times


def median_iqr_ms(times: Sequence[float]) -> str:
    """``"<median> ms | <25th>-<75th> ms"``: the median and interquartile range of a table."""
    q25, q50, q75 = np.percentile(times, [25, 50, 75]) * 1e3
    return f"{q50:.1f} ms | {q25:.1f}-{q75:.1f} ms"


def write_section(output, heading: str, text: str) -> None:
    """Replace the section that starts with ``heading`` in ``output`` by ``text`` (appended
    when absent; the file is created with a title), written atomically."""
    path = Path(output)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = text.rstrip("\n") + "\n"
    pattern = re.compile(re.escape(heading) + r".*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda m: section + ("\n" if m.end() < len(old) else ""), old)
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def publish(output, heading: str, lines: Sequence[str]) -> str:
    """The section ``heading`` + ``lines``, printed and written to ``output`` (if given)."""
    text = "\n".join([heading, *lines])
    print(text)
    if output:
        write_section(output, heading, text)
    return text
