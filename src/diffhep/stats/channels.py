"""Templates from a pyhf ``channels`` list whose ``data`` may be JAX arrays, and the
symmetrised variations of a spec.

:func:`with_channels` is the by-name route from a pyhf-shaped dict to a model's template
arrays (:meth:`diffhep.Model.with_channels`); a training step uses the static
:class:`~diffhep.stats.layout.Layout` instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["symmetric_parameters", "with_channels"]


def with_channels(model, channels):
    """The model with templates read from ``channels`` (see :meth:`diffhep.Model.with_channels`)."""
    cfg = model.config
    slices = cfg.channel_slices
    sidx = {s: i for i, s in enumerate(cfg.samples)}
    dtype = model.nominal.dtype
    nominal = model.nominal
    by_sample: dict = {}  # (type, modifier, sample) -> [(slice, data)]
    normsys: dict = {}
    for ci, ch in enumerate(channels):
        if ch["name"] not in slices:
            raise ValueError(f"channels[{ci}]: channel {ch['name']!r} is not in the model")
        sl = slices[ch["name"]]
        for si, sample in enumerate(ch["samples"]):
            where = f"channels[{ci}].samples[{si}]"
            if sample["name"] not in sidx:
                raise ValueError(f"{where}: sample {sample['name']!r} is not in the model")
            data = jnp.asarray(sample["data"], dtype=dtype)
            if data.shape != (sl.stop - sl.start,):
                raise ValueError(
                    f"{where}.data has shape {data.shape}, expected ({sl.stop - sl.start},)"
                )
            nominal = nominal.at[sidx[sample["name"]], sl].set(data)
            for m in sample.get("modifiers", []):
                if m["type"] == "normsys":
                    normsys[(m["name"], ch["name"], sample["name"])] = m["data"]
                elif m["type"] in ("histosys", "staterror"):
                    key = (m["type"], m["name"], sample["name"])
                    by_sample.setdefault(key, []).append((sl, m["data"]))

    def assemble(row, pieces, field=None):
        for sl, d in pieces:
            values = jnp.asarray(d if field is None else d[field], dtype=dtype)
            if values.shape != (sl.stop - sl.start,):
                what = "staterror data" if field is None else f"histosys {field}"
                raise ValueError(
                    f"{what} has shape {values.shape}, expected ({sl.stop - sl.start},)"
                )
            row = row.at[sl].set(values)
        return row

    histosys_lo, histosys_hi = model.histosys_lo, model.histosys_hi
    if cfg.histosys_keys:
        found = [by_sample.get(("histosys", n, s), []) for n, s in cfg.histosys_keys]
        starts = [nominal[sidx[s]] for _, s in cfg.histosys_keys]
        pairs = list(zip(starts, found, strict=True))
        histosys_lo = jnp.stack([assemble(a, p, "lo_data") for a, p in pairs])
        histosys_hi = jnp.stack([assemble(a, p, "hi_data") for a, p in pairs])
    normsys_lo, normsys_hi = model.normsys_lo, model.normsys_hi
    if cfg.normsys_keys:
        d = [normsys.get(k) for k in cfg.normsys_keys]
        normsys_lo = jnp.stack(
            [
                model.normsys_lo[k] if x is None else jnp.asarray(x["lo"], dtype)
                for k, x in enumerate(d)
            ]
        )
        normsys_hi = jnp.stack(
            [
                model.normsys_hi[k] if x is None else jnp.asarray(x["hi"], dtype)
                for k, x in enumerate(d)
            ]
        )
    staterror = model.staterror_uncrt
    if cfg.staterror_keys:
        zeros = jnp.zeros(nominal.shape[1], dtype=dtype)
        staterror = jnp.stack(
            [assemble(zeros, by_sample.get(("staterror", n, s), [])) for n, s in cfg.staterror_keys]
        )
    new = model.with_yields(
        nominal=nominal,
        histosys_lo=histosys_lo,
        histosys_hi=histosys_hi,
        normsys_lo=normsys_lo,
        normsys_hi=normsys_hi,
        staterror_uncrt=staterror,
    )
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(channels)):
        return new  # traced templates (a training step) keep this model's symmetrised set
    symmetric = symmetric_parameters({"channels": channels})
    return dataclasses.replace(new, config=dataclasses.replace(cfg, symmetric=symmetric))


def _values(data) -> list:
    """Bin contents as a list of floats (from a JSON list or an array)."""
    return [float(x) for x in (data.tolist() if hasattr(data, "tolist") else data)]


def symmetric_parameters(spec) -> tuple:
    """Names of the histosys/normsys parameters with at least one symmetrised variation
    (up and down shift the yields the same way: ``hi_data == lo_data``, or ``hi == lo`` for
    normsys, not nominal). Experiments symmetrise one-sided systematics (e.g. jet energy
    resolution) so; the likelihood is then (nearly) even in the parameter, with mirror-image
    minima at +-alpha, and a fit started at 0, where its gradient vanishes, may reach either
    (see :func:`diffhep.stats.fit.fit`)."""
    names = set()
    for channel in spec.get("channels", []):
        for sample in channel["samples"]:
            nominal = None
            for m in sample.get("modifiers", []):
                if m["type"] == "histosys":
                    # lists compared as lists (numpy per modifier cost ~15 ms of each model
                    # build on sbottom RegionA, paid by every point of a grid)
                    hi, lo = _values(m["data"]["hi_data"]), _values(m["data"]["lo_data"])
                    if hi != lo:
                        continue
                    nominal = _values(sample["data"]) if nominal is None else nominal
                    if hi != nominal:
                        names.add(m["name"])
                elif m["type"] == "normsys":
                    hi, lo = float(m["data"]["hi"]), float(m["data"]["lo"])
                    if hi == lo != 1.0:
                        names.add(m["name"])
    return tuple(sorted(names))
