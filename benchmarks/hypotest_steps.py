"""Where a warm hypothesis test's time goes: Newton steps per fit and the time per step.

The models of ``benchmarks/hypotest.py`` (default: sbottom RegionA and the 50-bin model),
``hypotest(1.0, model, data)`` jitted as there, and the ``n_steps`` of its fits (each
with the steps of its restarts) read from the same compiled program. Prints one line per
model; run it pinned (``taskset -c 1``) to compare with the CLI, which runs on one core.
With ``--without-restarts`` every fit runs once from its start, without the search for
several minima (``restarts.may_restart`` patched to False): what that search costs (it is
not an option of diffhep: published likelihoods need it, issue 20).

Usage:
    PYTHONPATH=src python benchmarks/hypotest_steps.py [--without-restarts] [sbottom_A ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main(keys: list[str], without_restarts: bool = False) -> None:
    import jax
    import jax.numpy as jnp

    import diffhep
    from diffhep.stats import hypotest as ht
    from hypotest import diffhep_model_and_data, extract_sbottom

    diffhep.enable_x64()
    scan, captured = jax.lax.scan, {}

    def keep_fits(f, init, xs, **kw):  # hypotest's scan over its fits (the outermost,
        # so the last to return)
        carry, fits = scan(f, init, xs, **kw)
        captured["n_steps"] = fits.n_steps
        return carry, fits

    from diffhep.stats import restarts

    def run(m, d):
        with mock.patch.object(jax.lax, "scan", keep_fits):
            if without_restarts:
                with mock.patch.object(restarts, "may_restart", lambda model: False):
                    res = ht.hypotest(1.0, m, d)
            else:
                res = ht.hypotest(1.0, m, d)
        return res.cls_obs, captured["n_steps"]

    with tempfile.TemporaryDirectory() as tmp:
        sbottom = extract_sbottom(Path(tmp))
        for key in keys:
            model, data, _ = diffhep_model_and_data(key, sbottom)
            fn = jax.jit(run)
            data = jnp.asarray(data)
            cls, steps = jax.block_until_ready(fn(model, data))
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(model, data))
                times.append(time.perf_counter() - t0)
            ms = 1e3 * np.median(times)
            total = int(np.sum(steps))
            print(f"{key}: warm median {ms:.2f} ms (min {1e3 * min(times):.2f}); Newton steps "
                  f"per fit {np.asarray(steps).tolist()}, {total} in all; "
                  f"{1e3 * ms / total:.0f} us per step; CLs_obs {float(cls):.9g}")  # fmt: skip


if __name__ == "__main__":
    flag = "--without-restarts"
    names = [a for a in sys.argv[1:] if a != flag]
    main(names or ["sbottom_A", "model_50"], without_restarts=flag in sys.argv[1:])
