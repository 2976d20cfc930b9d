"""A/B benchmark: one warm hypotest (mu = 1, qtilde) with the rate-Jacobian Hessian and the
Cholesky shortcut (today's default) against the generic Hessian (Hessian-vector products)
with eigh-only solves, interleaved in one process so that both run under the same load.

Usage (from the repository root):
    python benchmarks/hessian_ab.py sbottom_A [repeats]
    python benchmarks/hessian_ab.py model_50 [repeats]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import hypotest as bench


def main(case: str, repeats: int) -> None:
    from diffhep.stats import hessian, hypotest, linalg

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

    new, r_new, c_new = compiled()
    hessian._MIN_DIRECTIONS = linalg._CHOLESKY_FROM = 10**9  # the generic way
    old, r_old, c_old = compiled()
    print(f"{case}: CLs_obs {float(r_new.cls_obs):.12g} (generic {float(r_old.cls_obs):.12g})")
    print(f"{case}: first call (compile + run) {c_new:.2f} s (generic {c_old:.2f} s)")
    t_new, t_old = [], []
    for _ in range(repeats):
        for run, times in ((new, t_new), (old, t_old)):
            t = time.perf_counter()
            jax.block_until_ready(run(model, data))
            times.append(time.perf_counter() - t)
    a, b = np.median(t_new), np.median(t_old)
    print(f"{case}: warm median {1e3 * a:.2f} ms (generic {1e3 * b:.2f} ms): {b / a:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
