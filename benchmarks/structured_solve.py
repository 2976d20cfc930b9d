"""Newton step cost: dense Hessian + dense solve versus diffhep's structured Hessian + solve.

Measured side by side in one run on pyhf's ``uncorrelated_background`` model (one POI plus one
shapesys gamma per bin) for several bin counts. Writes the section
"## Newton step (benchmarks/structured_solve.py)" of ``docs/benchmarks.md``.

Usage: ``python benchmarks/structured_solve.py [--quick]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import diffhep  # noqa: E402
from _docs import write_section  # noqa: E402
from diffhep.stats.fit import nll, structure_of  # noqa: E402
from diffhep.stats.linalg import _masked, _solve, hessian_parts  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADING = "## Newton step (benchmarks/structured_solve.py)"


def model_with_bins(nbins: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sig, bkg = rng.uniform(2, 10, nbins), rng.uniform(40, 60, nbins)
    spec = {
        "channels": [
            {
                "name": "c",
                "samples": [
                    {
                        "name": "signal",
                        "data": sig.tolist(),
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": bkg.tolist(),
                        "modifiers": [
                            {"name": "unc", "type": "shapesys", "data": (0.1 * bkg).tolist()}
                        ],
                    },
                ],
            }
        ]
    }
    model = diffhep.Model.from_spec(spec)
    data = jnp.asarray(list(rng.poisson(bkg).astype(float)) + list(model.config.auxdata))
    return model, data


def timed(fn, *args, repeat=20):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(bins, repeat):
    return [measure(nbins, repeat) for nbins in bins]


def measure(nbins, repeat):
    model, data = model_with_bins(nbins)
    x = jnp.asarray(model.config.init)
    st = structure_of(model.config)
    free = jnp.ones(x.shape[0], bool)

    @jax.jit
    def dense(x, model, data):
        H = jax.hessian(nll)(x, (model, data))
        g = jax.grad(nll)(x, (model, data))
        return jnp.linalg.solve(H, g)

    @jax.jit
    def structured(x, model, data):
        parts = hessian_parts(lambda y: jax.grad(nll)(y, (model, data)), x, st)
        g = jax.grad(nll)(x, (model, data))
        return _solve(_masked(parts, free, st, 0.0)[0], g, st)

    @jax.jit
    def structured_solve_only(parts, g):
        return _solve(_masked(parts, free, st, 0.0)[0], g, st)

    parts = jax.jit(lambda x, m, d: hessian_parts(lambda y: jax.grad(nll)(y, (m, d)), x, st))(
        x, model, data
    )
    g = jax.grad(nll)(x, (model, data))
    np.testing.assert_allclose(dense(x, model, data), structured(x, model, data), rtol=1e-8)
    t_dense = timed(dense, x, model, data, repeat=max(3, repeat // 4))
    t_struct = timed(structured, x, model, data, repeat=repeat)
    t_solve = timed(structured_solve_only, parts, g, repeat=repeat)
    print(
        f"{nbins:5d} bins: dense {t_dense * 1e3:9.2f} ms  structured {t_struct * 1e3:7.3f} ms"
        f"  (solve only {t_solve * 1e3:.3f} ms)",
        flush=True,
    )
    return (nbins, x.shape[0], t_dense, t_struct, t_solve)


def write(rows):
    lines = [
        HEADING,
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, jax {jax.__version__}. One Newton "
        "step (Hessian + gradient + linear solve) on pyhf's uncorrelated_background model "
        "(POI + one shapesys gamma per bin), median of repeated warm calls.",
        "",
        "| bins | parameters | dense Hessian + solve | structured Hessian + solve | "
        "structured solve only | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for nbins, npars, td, ts, tso in rows:
        lines.append(
            f"| {nbins} | {npars} | {td * 1e3:.2f} ms | {ts * 1e3:.3f} ms | "
            f"{tso * 1e3:.3f} ms | {td / ts:.0f}x |"
        )
    lines.append("")
    section = "\n".join(lines) + "\n"
    write_section(DOC, HEADING, section)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    bins = [10, 100, 1000] if args.quick else [10, 100, 1000, 2000]
    write(run(bins, 5 if args.quick else 20))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
