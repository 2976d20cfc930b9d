"""Adversarial HistFactory workspaces for the fit oracle tests (issue 20).

:func:`generate` draws a pyhf workspace (JSON spec) from a seed: 1-8 channels of 1-50 bins,
2-10 samples per channel, every modifier type (normfactor, normsys, histosys, shapesys,
staterror, shapefactor, lumi), shapesys widths from 1e-6 to 10 relative (tau = 1/width^2
from 1e-2 to 1e12), sample yields from 1e-6 to 1e6, staterror on bins whose MC yield is
near zero, and histosys/normsys variations coupled across samples and channels, some
symmetrised (up and down on the same side of the nominal), which make the profile
likelihood bimodal. 10 to 300 parameters. ``small=True`` draws small workspaces of the
same kinds (1-3 channels, 1-6 bins, 2-4 samples) for the default test run.

The same seed always gives the same workspace (numpy's ``default_rng``).
"""

from __future__ import annotations

import numpy as np

from specs import lumi_parameter, measurement

MAX_PARS = 300
MIN_PARS = 10


def _yields(rv, nbins, lo_exp, hi_exp):
    scale = 10.0 ** rv.uniform(lo_exp, hi_exp)
    return scale * rv.lognormal(0.0, 0.7, nbins)


def _npars(spec) -> int:
    """Parameters of a spec, as pyhf counts them (per-bin modifiers: one per bin)."""
    seen = {}
    for ch in spec["channels"]:
        for s in ch["samples"]:
            for m in s["modifiers"]:
                per_bin = m["type"] in ("shapesys", "staterror", "shapefactor")
                seen[m["name"]] = len(s["data"]) if per_bin else 1
    return sum(seen.values())


def generate(seed: int, small: bool = False, values_seed: int | None = None) -> dict:
    """A workspace spec drawn from ``seed`` (see the module's docstring).

    The structure (channels, bins, samples, modifiers and which are symmetrised) is drawn
    from ``seed``, the numbers (yields, variations, widths, counts) from ``values_seed``
    (default: ``seed``): workspaces of one structure share diffhep's compiled fits.
    """
    rng = np.random.default_rng(seed)  # structure
    rv = np.random.default_rng(seed if values_seed is None else (seed, values_seed))
    if small:
        nch, max_bins, max_samples = int(rng.integers(1, 4)), 6, 4
    else:
        nch, max_bins, max_samples = int(rng.integers(1, 9)), 50, 10
    n_hs = int(rng.integers(1, 4))  # histosys names shared across samples and channels
    n_ns = int(rng.integers(1, 4))
    symmetrised = rng.random(n_hs) < 0.5  # up and down on the same side: even response
    same_side = rng.random(n_ns) < 0.25
    channels, observations = [], []
    budget = MAX_PARS - 1 - n_hs - n_ns - 3  # mu, the shared systematics, lumi, k, xsec
    for c in range(nch):
        left = max(budget // (nch - c), 1)
        nbins = int(rng.integers(1, max_bins + 1))
        nsamples = int(rng.integers(2, max_samples + 1))
        per_bin_mods = 1 + (nsamples - 1) + 1  # staterror, shapesys per background, shapefactor
        nbins = max(1, min(nbins, left // per_bin_mods if left >= per_bin_mods else 1))
        samples, used = [], 0
        for j in range(nsamples):
            if j == 0:
                nom = _yields(rv, nbins, -1, 2)
                mods = [{"name": "mu", "type": "normfactor", "data": None}]
                if rng.random() < 0.5:
                    mods.append({"name": "lumi", "type": "lumi", "data": None})
                if rng.random() < 0.5:
                    hi = 1.0 + rv.uniform(0.02, 0.3)
                    mods.append(
                        {"name": "xsec", "type": "normsys", "data": {"hi": hi, "lo": 2.0 - hi}}
                    )
            else:
                nom = _yields(rv, nbins, -6, 6)
                if rng.random() < 0.3:  # near-zero MC in some bins
                    nom = np.where(rv.random(nbins) < 0.5, 10.0 ** rv.uniform(-6, -3), nom)
                mods = []
                if rng.random() < 0.3:
                    mods.append({"name": "lumi", "type": "lumi", "data": None})
                if j == 1 and rng.random() < 0.3:
                    mods.append({"name": "k_bkg", "type": "normfactor", "data": None})
            for k in range(n_hs):
                if rng.random() < 0.6:
                    d = rv.uniform(0.02, 0.6) * rv.choice([-1.0, 1.0], nbins)
                    hi = nom * (1.0 + d)
                    if symmetrised[k]:
                        lo = nom * (1.0 + np.abs(d) * rv.uniform(0.5, 1.0, nbins))
                        hi = nom * (1.0 + np.abs(d))
                    else:
                        lo = nom * (1.0 - d * rv.uniform(0.3, 1.2, nbins))
                    mods.append(
                        {
                            "name": f"hs{k}",
                            "type": "histosys",
                            "data": {"hi_data": hi.tolist(), "lo_data": lo.tolist()},
                        }
                    )
            for k in range(n_ns):
                if rng.random() < 0.4:
                    hi = 1.0 + rv.uniform(0.01, 0.5) * rv.choice([-1.0, 1.0]) * 0.9
                    if same_side[k]:  # both on one side
                        lo = 1.0 + (hi - 1.0) * rv.uniform(0.2, 0.9)
                    else:
                        lo = 1.0 - (hi - 1.0) * rv.uniform(0.5, 1.5)
                    mods.append({"name": f"ns{k}", "type": "normsys", "data": {"hi": hi, "lo": lo}})
            if j > 0 and rng.random() < 0.6 and used + nbins <= left:
                rel = 10.0 ** rv.uniform(-6, 1, nbins)  # tau = 1 / rel^2: 1e-2 .. 1e12
                mods.append(
                    {"name": f"ss_{c}_{j}", "type": "shapesys", "data": (nom * rel).tolist()}
                )
                used += nbins
            if j > 0 and rng.random() < 0.7:
                mods.append(
                    {
                        "name": f"stat_{c}",
                        "type": "staterror",
                        "data": (np.maximum(nom, 1e-6) * rv.uniform(0.01, 1.0, nbins)).tolist(),
                    }
                )
            samples.append({"name": f"s{j}", "data": nom.tolist(), "modifiers": mods})
        if rng.random() < 0.15 and used + nbins <= left:
            samples[-1]["modifiers"].append(
                {"name": f"sf_{c}", "type": "shapefactor", "data": None}
            )
        # staterror: the same name across a channel's samples is one parameter per bin
        budget -= used + nbins * 2
        total = np.sum([s["data"] for s in samples], axis=0)
        counts = rv.poisson(np.maximum(total * rv.lognormal(0.0, 0.1, nbins), 0.0))
        channels.append({"name": f"c{c}", "samples": samples})
        observations.append({"name": f"c{c}", "data": counts.astype(float).tolist()})
    spec = {
        "channels": channels,
        "observations": observations,
        "measurements": [measurement("meas", "mu", lumi_parameter(0.02, (0.5, 1.5)))],
        "version": "1.0.0",
    }
    # at least MIN_PARS parameters: more normsys on the first background
    extra = 0
    while _npars(spec) < MIN_PARS:
        hi = 1.0 + rv.uniform(0.05, 0.3)
        spec["channels"][0]["samples"][1]["modifiers"].append(
            {"name": f"extra{extra}", "type": "normsys", "data": {"hi": hi, "lo": 1.0 / hi}}
        )
        extra += 1
    _drop_unused_lumi(spec)
    return spec


def _drop_unused_lumi(spec) -> None:
    """pyhf rejects a parameter configuration of a modifier that no sample has."""
    has_lumi = any(
        m["type"] == "lumi"
        for ch in spec["channels"]
        for s in ch["samples"]
        for m in s["modifiers"]
    )
    if not has_lumi:
        spec["measurements"][0]["config"]["parameters"] = []


def features(spec) -> dict:
    """What a workspace has, for coverage checks: modifier ``types``; shapesys ``taus``
    (``(nominal / width)^2`` per bin); ``near_zero_staterror`` (a staterror on a bin whose MC
    yield is below 1e-3); ``symmetrised_histosys`` and ``same_side_normsys`` (up and down
    variations on the same side of the nominal in every bin: an even response, a profile
    with two minima); ``coupled`` (a histosys or normsys name on more than one sample);
    ``npars``."""
    types, taus, near_zero, sym, same_side, users = set(), [], False, False, False, {}
    for ch in spec["channels"]:
        for s in ch["samples"]:
            nom = np.asarray(s["data"], dtype=float)
            for m in s["modifiers"]:
                types.add(m["type"])
                if m["type"] == "shapesys":
                    taus += list((nom / np.asarray(m["data"], dtype=float)) ** 2)
                elif m["type"] == "staterror":
                    near_zero |= bool(np.any(nom < 1e-3))
                elif m["type"] == "histosys":
                    up = np.asarray(m["data"]["hi_data"]) - nom
                    dn = np.asarray(m["data"]["lo_data"]) - nom
                    sym |= bool(np.all(up * dn > 0))
                elif m["type"] == "normsys":
                    same_side |= (m["data"]["hi"] - 1.0) * (m["data"]["lo"] - 1.0) > 0
                if m["type"] in ("histosys", "normsys"):
                    users[m["name"]] = users.get(m["name"], 0) + 1
    return {
        "types": types,
        "taus": taus,
        "near_zero_staterror": near_zero,
        "symmetrised_histosys": sym,
        "same_side_normsys": bool(same_side),
        "coupled": any(n > 1 for n in users.values()),
        "npars": _npars(spec),
    }
