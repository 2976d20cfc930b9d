"""Benchmark: one training step of the neos blob problem, CLs loss vs BCE loss vs float64.

Same batch (2000 events per blob), same network (MLP 1024-1024-1), same optimiser (Adam):
the median wall time of one compiled step (forward, backward, update) for
- the BCE loss (no histograms, no likelihood),
- the CLs loss (bKDE histograms -> HistFactory model -> profile fit with implicit
  gradients -> expected CLs), float32 network,
- the same CLs pipeline with a float64 network (what the reference implementation runs).
Steps are interleaved (round-robin) so machine noise hits all variants alike. Target: CLs
step <= 1.2 x BCE step. Writes a section of docs/benchmarks.md.

Usage: python benchmarks/train_step.py [--repeats 30] [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform

import jax

from _docs import blob_analysis, interleaved, median_iqr_ms, publish, seconds

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from diffhep.analysis.pipeline import Events, Pipeline  # noqa: E402
from diffhep.nn.training import _make_step  # noqa: E402
from diffhep.problems import blobs  # noqa: E402

HEADING = "## Training step (neos blobs, `benchmarks/train_step.py`)"


def setup(dtype, loss, batch=2000, hidden=(1024, 1024)):
    analysis = blob_analysis()
    pipe = Pipeline(analysis, ("x0", "x1"))
    raw = blobs.generate(batch, seed=0)
    events = {n: Events(jnp.asarray(x), jnp.asarray(w)) for n, (x, w) in raw.items()}
    params = pipe.init_params(events, key=jax.random.key(0), hidden=hidden, dtype=dtype)

    def loss_fn(p, b, hyper):
        v = pipe.loss_terms(p, b, (loss,), hyper["bandwidth"])
        return v[loss], v

    opt = optax.adam(1e-3)
    step = _make_step(loss_fn, opt)
    opt_state = opt.init(eqx.filter(params, eqx.is_inexact_array))
    hyper = {"bandwidth": jnp.asarray(0.3)}

    def run():
        out = step(params, opt_state, events, hyper)
        jax.block_until_ready(out)

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--output", default="docs/benchmarks.md")
    args = ap.parse_args()
    variants = {
        "BCE, float32 network": (jnp.float32, "bce"),
        "BCE + augmentation, float32 network": (jnp.float32, "bce_aug"),
        "CLs, float32 network": (jnp.float32, "cls"),
        "CLs, float64 network": (jnp.float64, "cls"),
    }
    runs, compile_s = {}, {}
    for name, (dtype, loss) in variants.items():
        runs[name] = setup(dtype, loss)
        compile_s[name] = seconds(runs[name])
        runs[name]()  # warm
    times = interleaved(runs, args.repeats)
    med = {n: float(np.median(t)) for n, t in times.items()}
    bce = med["BCE, float32 network"]
    ratio = med["CLs, float32 network"] / med["BCE + augmentation, float32 network"]
    rows = [
        f"| {n} | {median_iqr_ms(times[n])} | {med[n] / bce:.2f} | {compile_s[n]:.1f} s |"
        for n in variants
    ]
    publish(
        args.output,
        HEADING,
        [
            "",
            f"One compiled step (forward, backward, Adam update) on the same batch of 2000 "
            f"events per blob (8000 events) and the same MLP 1024-1024-1; {args.repeats} "
            f"interleaved repeats, median and interquartile range. Machine: {os.cpu_count()} "
            f"CPUs, {platform.processor() or platform.machine()}, jax {jax.__version__}.",
            "",
            "| step | median | IQR | / BCE step | first call (compile) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "The batch holds four event sets (signal, background, background up, background "
            "down; 2000 events each). The CLs loss runs the network on all 8000 events (the "
            "variations make the histosys templates); plain BCE uses only signal and nominal "
            "background (4000 events), BCE + augmentation all 8000. The cost of the statistics "
            "(bKDE histograms, model, profile fit, implicit gradient) is therefore the CLs step "
            "minus the BCE + augmentation step, and that is what the target measures.",
            "",
            f"Target CLs step <= 1.2 x BCE step (same 8000 events through the network): "
            f"**{'met' if ratio <= 1.2 else 'NOT met'}** ({ratio:.2f}x; against plain BCE on "
            f"half the events: {med['CLs, float32 network'] / bce:.2f}x). The float64 network "
            f"costs {med['CLs, float64 network'] / med['CLs, float32 network']:.1f}x the float32 "
            "one.",
            "",
        ],
    )


if __name__ == "__main__":
    main()
