"""A small analysis with everything the pipeline supports, for the sharding and chunking tests.

Three channels (the network's score in a region, a one-bin count region, a feature
histogram), cuts (one-sided and a window), signed weights, a shape systematic (histosys), a
normalisation systematic, MC statistics (staterror), every event set with a different number
of events that is not a multiple of 4; everything in float64.

Run as a script (``python scaling_case.py``) it does the multi-device checks in a process
started with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and prints the numbers
as JSON for ``test_scaling.py`` to compare.
"""

from __future__ import annotations

import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffhep.analysis.cuts import CutSpec
from diffhep.analysis.pipeline import Events, Pipeline
from diffhep.analysis.spec import Analysis, Channel, NormSystematic, ShapeSystematic

FEATURES = ("x0", "x1", "x2")
SIZES = {"signal": 301, "background": 410, "bkg_up": 399, "bkg_down": 405, "other": 203}
MEANS = {
    "signal": (1.0, 0.5, 0.2),
    "background": (-0.5, 0.0, 0.0),
    "bkg_up": (-0.3, 0.1, 0.0),
    "bkg_down": (-0.7, -0.1, 0.0),
    "other": (0.0, -0.5, 0.3),
}
YIELDS = {"signal": 20.0, "background": 200.0, "bkg_up": 200.0, "bkg_down": 200.0, "other": 50.0}
#: A combined loss touching every kind of sum (histograms and fit, cross-entropy, soft yields,
#: selected fraction).
TERMS = {"sigma_mu": 1.0, "bce_aug": 0.1, "z_asimov": 0.01, "skim": 0.1}
#: A lighter one for the small case (compile time).
TERMS_SMALL = {"sigma_mu": 1.0, "bce": 0.1, "skim": 0.1}
#: With the expected CLs (a profile fit inside the loss): slower to compile.
TERMS_CLS = {"cls": 1.0, "bce_aug": 0.1, "z_asimov": 0.01, "skim": 0.1}
HYPER = {"bandwidth": 0.4, "slope": 3.0}


def make_pipeline(small=False) -> Pipeline:
    """The full case, or (``small``) signal and background with a histosys, a network
    channel and a count channel."""
    if small:
        analysis = Analysis(
            samples=("signal", "background"),
            signal="signal",
            channels=(
                Channel("SR", 2, "nn", region=(("x2", -1.0, 10.0),)),
                Channel("CR", 1, "count", region=(("x2", -10.0, -1.0),)),
            ),
            shape_systematics=(ShapeSystematic("shape", "background", "bkg_up", "bkg_down"),),
        )
        return Pipeline(analysis, FEATURES)
    analysis = Analysis(
        samples=("signal", "background", "other"),
        signal="signal",
        channels=(
            Channel("SR", 3, "nn", region=(("x2", -1.0, 10.0),)),
            Channel("CR", 1, "count", region=(("x2", -10.0, -1.0),)),
            Channel("VR", 2, "x1", edges=(-3.0, 0.0, 3.0)),
        ),
        shape_systematics=(ShapeSystematic("shape", "background", "bkg_up", "bkg_down"),),
        norm_systematics=(NormSystematic("norm", ("other",), 0.9, 1.1),),
        mc_stat=True,
    )
    return Pipeline(analysis, FEATURES)


def make_events(pipe, seed=0) -> dict:
    """Float64 events with signed weights (about 10% negative in the backgrounds)."""
    out = {}
    for i, (name, n) in enumerate(SIZES.items()):
        if name not in pipe.analysis.event_sets:
            continue
        rng = np.random.default_rng([seed, i])
        x = rng.normal(MEANS[name], 1.0, (n, 3))
        sign = np.where(rng.random(n) < (0.0 if name == "signal" else 0.1), -1.0, 1.0)
        w = sign * YIELDS[name] / np.sum(sign)
        out[name] = Events(x, w)
    return out


def make_params(pipe, events, hidden=(8, 8)):
    cuts = [CutSpec("x0", ">", init=-1.5), CutSpec("x1", "window", init=(-2.5, 2.6))]
    if len(pipe.analysis.channels) < 3:
        cuts = cuts[:1]
    params = pipe.init_params(
        events, key=jax.random.key(1), hidden=hidden, dtype=jnp.float64, cuts=cuts
    )

    def f64(a):
        return a.astype(jnp.float64) if eqx.is_inexact_array(a) else a

    return jax.tree.map(f64, params)


def loss_fn(pipe, terms=TERMS):
    def loss(params, batch, hyper):
        values = pipe.loss_terms(params, batch, tuple(terms), hyper["bandwidth"], hyper["slope"])
        return sum(w * values[t] for t, w in terms.items()), values

    return loss


def flat(tree) -> list:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in leaves]).tolist()


def as_jax(events):
    return {n: Events(jnp.asarray(e.x), jnp.asarray(e.w)) for n, e in events.items()}


def _value_and_grad(pipe, params, events, hyper, terms):
    (value, aux), grads = eqx.filter_jit(
        eqx.filter_value_and_grad(loss_fn(pipe, terms), has_aux=True)
    )(params, events, hyper)
    return {"loss": float(value), "terms": {k: float(v) for k, v in aux.items()}}, flat(grads)


def main(terms=TERMS_SMALL, small=True) -> dict:
    """The multi-device checks (run in a process with 4 simulated devices)."""
    import optax

    from diffhep.analysis import chunked
    from diffhep.nn import sharding
    from diffhep.nn.training import train

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    pipe = make_pipeline(small)
    events = make_events(pipe)
    params = make_params(pipe, events)
    hyper = {k: jnp.asarray(v) for k, v in HYPER.items()}
    out = {"devices": jax.device_count(), "sizes": {n: len(e.w) for n, e in events.items()}}

    # 1. one step: single device vs the event axis split over 4 devices
    single, g_single = _value_and_grad(pipe, params, as_jax(events), hyper, terms)
    mesh = sharding.make_mesh(4)
    placed = sharding.shard_events(events, mesh)
    out["padded"] = {n: int(e.w.shape[0]) for n, e in placed.items()}
    out["shard_devices"] = len(placed["signal"].w.sharding.device_set)
    sharded, g_sharded = _value_and_grad(
        pipe, sharding.replicate(params, mesh), placed, hyper, terms
    )
    out["single"], out["sharded"] = single, sharded
    out["grad_single"], out["grad_sharded"] = g_single, g_sharded

    # a histogram of sharded events is an all-reduce of per-device sums once compiled
    from diffhep.analysis.histograms import soft_histogram

    ev = placed["signal"]
    edges = jnp.linspace(-2.0, 2.0, 4)
    compiled = jax.jit(lambda x, w: soft_histogram(x[:, 0], edges, 0.3, w)).lower(ev.x, ev.w)
    out["all_reduce"] = "all-reduce" in compiled.compile().as_text()

    # 2. the chunked two-pass gradient, chunks sharded over the 4 devices
    (value, aux), grads = chunked.gradient(
        pipe, params, events, terms, chunk_size=128, mesh=mesh, **HYPER
    )
    out["chunked"] = {"loss": float(value), "terms": {k: float(v) for k, v in aux.items()}}
    out["grad_chunked"] = flat(grads)

    # 3. the same trained model after N steps (batches of 150 events: padded to 152)
    from diffhep.io.datasets import batches

    def run(place, start):
        state = train(
            start,
            loss_fn(pipe, terms),
            optax.adam(1e-2),
            epochs=2,
            batches=lambda e: [place(b) for b in batches(events, 150, 0, e)],
            hyper=lambda e: dict(HYPER),
            progress=False,
        )
        return state

    one = run(as_jax, params)
    four = run(lambda b: sharding.shard_events(b, mesh), sharding.replicate(params, mesh))
    out["steps"] = one.step
    out["initial"] = flat(params)
    out["trained_single"], out["trained_sharded"] = flat(one.params), flat(four.params)
    out["history_single"] = [h["loss"] for h in one.history]
    out["history_sharded"] = [h["loss"] for h in four.history]
    return out


if __name__ == "__main__":
    cls = sys.argv[1:] == ["cls"]
    json.dump(main(TERMS_CLS, small=False) if cls else main(), sys.stdout)
