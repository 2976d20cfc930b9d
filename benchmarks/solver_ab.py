"""A/B benchmark of issue 20's solver changes: one warm hypotest (mu = 1, qtilde) with the
log-coordinate Newton candidate and the reflection restart (today's default) against the
solver without them (their masks emptied: no log candidate, no reflection fit, no second
probe restart), interleaved in one process so that both run under the same load.

``AB_WITHOUT=factors`` or ``AB_WITHOUT=global_shift`` removes one of the two only;
``AB_ORDER=without-first`` compiles the variant without them first.

Usage (from the repository root, with ``PYTHONPATH=src:benchmarks``):
    python benchmarks/solver_ab.py sbottom_A [repeats]
    python benchmarks/solver_ab.py model_50 [repeats]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import hypotest as bench


def main(case: str, repeats: int) -> None:
    from diffhep.stats import fit, hypotest

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_enable_compilation_cache", False)  # honest compile times
    sbottom = bench.extract_sbottom(Path(tempfile.mkdtemp(prefix="diffhep-bench-")))
    model, data, _ = bench.diffhep_model_and_data(case, sbottom)
    data = jax.numpy.asarray(data)

    def compiled():
        run = jax.jit(lambda m, d: hypotest.hypotest(1.0, m, d))
        t = time.perf_counter()
        out = jax.block_until_ready(run(model, data))
        return run, out, time.perf_counter() - t

    # without the log candidate and the reflection (read from these functions when traced)
    none = lambda config: np.zeros(config.npars, bool)  # noqa: E731
    names = [f"_{n}" for n in os.environ.get("AB_WITHOUT", "factors,global_shift").split(",")]
    saved = {n: getattr(fit, n) for n in names}

    def without():
        for n in names:
            setattr(fit, n, none)
        try:
            return compiled()
        finally:
            for n, f in saved.items():
                setattr(fit, n, f)

    if os.environ.get("AB_ORDER") == "without-first":  # the second compilation's share
        old, r_old, c_old = without()
        new, r_new, c_new = compiled()
    else:
        new, r_new, c_new = compiled()
        old, r_old, c_old = without()
    print(f"{case}: CLs_obs {float(r_new.cls_obs):.12g} (without {float(r_old.cls_obs):.12g})")
    print(f"{case}: converged {bool(r_new.converged)} (without {bool(r_old.converged)})")
    print(f"{case}: first call (compile + run) {c_new:.2f} s (without {c_old:.2f} s)")
    t_new, t_old = [], []
    for _ in range(repeats):
        for run, times in ((new, t_new), (old, t_old)):
            t = time.perf_counter()
            jax.block_until_ready(run(model, data))
            times.append(time.perf_counter() - t)
    a, b = np.median(t_new), np.median(t_old)
    print(f"{case}: warm median {1e3 * a:.2f} ms (without {1e3 * b:.2f} ms): {a / b:.2f}x")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
