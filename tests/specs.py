"""pyhf model specs for the tests: modifier, sample and channel builders, and the models
that several test files check (against pyhf) in the same form.

Example:
    >>> s = model_spec(channel("SR", sample("signal", [5, 8], normfactor("mu"))))
    >>> s["channels"][0]["samples"][0]["data"], s["parameters"]
    ([5.0, 8.0], [])
"""

from __future__ import annotations

import json
from pathlib import Path

import pyhf

CODES_1 = {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}
CODES_4 = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


# --------------------------------------------------------------------------- builders
def normfactor(name="mu"):
    return {"name": name, "type": "normfactor", "data": None}


def shapefactor(name):
    return {"name": name, "type": "shapefactor", "data": None}


def lumi():
    return {"name": "lumi", "type": "lumi", "data": None}


def normsys(name, lo, hi):
    return {"name": name, "type": "normsys", "data": {"lo": lo, "hi": hi}}


def histosys(name, lo, hi):
    return {
        "name": name,
        "type": "histosys",
        "data": {"lo_data": [float(x) for x in lo], "hi_data": [float(x) for x in hi]},
    }


def shapesys(name, unc):
    return {"name": name, "type": "shapesys", "data": [float(x) for x in unc]}


def staterror(name, unc):
    return {"name": name, "type": "staterror", "data": [float(x) for x in unc]}


def sample(name, data, *modifiers):
    return {"name": name, "data": [float(x) for x in data], "modifiers": list(modifiers)}


def channel(name, *samples):
    return {"name": name, "samples": list(samples)}


def model_spec(*channels, parameters=()):
    return {"channels": list(channels), "parameters": [dict(p) for p in parameters]}


def bounded_poi_workspace(observed, mu_bounds=(0.0, 10.0)):
    """A workspace of signal x mu over a background with a normalisation and a shape
    systematic (2 bins), the POI's bounds given: its best fit at a bound for suitable
    ``observed`` (the ranking's note of a POI at its bound)."""
    bkg = sample("bkg", [50.0, 30.0], normsys("bkg_norm", 0.9, 1.1),
                 histosys("bkg_shape", [48.0, 33.0], [52.0, 27.0]))  # fmt: skip
    return {
        "version": "1.0.0",
        "channels": [channel("SR", sample("signal", [5.0, 10.0], normfactor()), bkg)],
        "observations": [{"name": "SR", "data": [float(x) for x in observed]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": [
            {"name": "mu", "bounds": [list(mu_bounds)]}]}}],
    }  # fmt: skip


# --------------------------------------------------------------------------- shared models
def simple_uncorrelated():
    return pyhf.simplemodels.uncorrelated_background(
        signal=[12.0, 11.0], bkg=[50.0, 52.0], bkg_uncertainty=[3.0, 7.0]
    ).spec


def simple_correlated():
    return pyhf.simplemodels.correlated_background(
        signal=[12.0, 11.0], bkg=[50.0, 52.0], bkg_up=[45.0, 57.0], bkg_down=[55.0, 47.0]
    ).spec


def normfactors():
    """Three samples, two free normalisations."""
    return model_spec(
        channel(
            "SR",
            sample("signal", [5.0, 10.0, 3.0], normfactor("mu")),
            sample("bkg", [50.0, 40.0, 20.0], normfactor("bkgnorm")),
            sample("other", [4.0, 4.0, 1.0]),
        )
    )


def shapesys_model():
    """One shapesys (a gamma per bin) on the background."""
    return model_spec(
        channel(
            "SR",
            sample("signal", [5.0, 8.0, 2.0], normfactor("mu")),
            sample("bkg", [40.0, 30.0, 12.0], shapesys("bkg_unc", [4.0, 6.0, 1.5])),
        )
    )


def lumi_model(lumi_config):
    """Signal and background scaled by the luminosity (configured by ``lumi_config``)."""
    return model_spec(
        channel(
            "SR",
            sample("signal", [5.0, 8.0], normfactor("mu"), lumi()),
            sample("bkg", [40.0, 30.0], lumi()),
        ),
        parameters=[lumi_config],
    )


def combined(lumi_config, staterror_name):
    """Every modifier type, two channels with 3 and 2 bins."""
    return model_spec(
        channel(
            "SR",
            sample(
                "signal",
                [5.0, 8.0, 2.0],
                normfactor("mu"),
                lumi(),
                normsys("sig_theory", 0.9, 1.08),
                staterror(staterror_name, [0.5, 0.6, 0.3]),
            ),
            sample(
                "ttbar",
                [40.0, 30.0, 12.0],
                lumi(),
                normfactor("mu_ttbar"),
                normsys("jes", 0.93, 1.06),
                histosys("jes", [37.0, 29.0, 11.0], [43.0, 31.5, 12.5]),
                staterror(staterror_name, [2.0, 3.0, 1.2]),
            ),
            sample(
                "wjets",
                [10.0, 6.0, 3.0],
                shapesys("wjets_mcstat", [1.5, 1.0, 0.9]),
                histosys("wjets_shape", [9.0, 6.5, 3.2], [11.5, 5.8, 2.6]),
            ),
        ),
        channel(
            "CR",
            sample(
                "ttbar", [200.0, 150.0], lumi(), normfactor("mu_ttbar"), normsys("jes", 0.95, 1.04)
            ),
            sample("wjets", [60.0, 40.0], shapefactor("wjets_cr_sf")),
            sample("signal", [0.5, 0.2], normfactor("mu"), lumi()),
        ),
        parameters=[lumi_config],
    )


def three_channels(names, signal_b, staterror_name):
    """Channels ``names`` with 2, 1 and 4 bins (sorted by name: 1, 2, 4 when the names say
    so); samples absent from some channels; ``signal_b`` is the signal in the first."""
    b, a, c = names
    return model_spec(
        channel(
            b,
            sample("bkg1", [20.0, 15.0], normsys("bkg1_xsec", 0.9, 1.1)),
            sample("signal", list(signal_b), normfactor("mu")),
        ),
        channel(
            a,
            sample("bkg2", [7.0], normsys("bkg2_xsec", 0.8, 1.3), staterror(staterror_name, [0.7])),
        ),
        channel(
            c,
            sample("signal", [1.0, 3.0, 3.0, 1.0], normfactor("mu")),
            sample(
                "bkg2",
                [10.0, 8.0, 6.0, 4.0],
                normsys("bkg2_xsec", 0.85, 1.2),
                histosys("bkg2_shape", [9.0, 8.0, 6.3, 4.6], [11.0, 8.1, 5.6, 3.5]),
            ),
            sample("bkg3", [3.0, 3.0, 3.0, 3.0], shapesys("bkg3_stat", [0.3, 0.6, 0.9, 1.2])),
        ),
    )


#: The templates of a model that ``Model.with_yields`` swaps (keyword names).
YIELD_TEMPLATES = (
    "nominal",
    "histosys_lo",
    "histosys_hi",
    "normsys_lo",
    "normsys_hi",
    "staterror_uncrt",
    "shapesys_uncrt",
)


# --------------------------------------------------------------------------- measurements
def lumi_parameter(sigma, bounds, init=1.0):
    """The ``lumi`` entry of a measurement's parameters (auxiliary datum 1)."""
    return {
        "name": "lumi",
        "auxdata": [1.0],
        "sigmas": [sigma],
        "inits": [init],
        "bounds": [[float(b) for b in bounds]],
    }


def measurement(name, poi, *parameters):
    """A measurement: its name, POI and parameter configurations."""
    return {"name": name, "config": {"poi": poi, "parameters": list(parameters)}}


# --------------------------------------------------------------------------- patchsets
def make_sbottom_patchset(region: Path, points) -> tuple[dict, dict]:
    """``(background-only workspace, patchset)`` of the published sbottom likelihoods of
    ``region`` (a RegionA/B/C folder) with the signal ``points`` (``sbottom_<m>_<m>_<m>``),
    as pyhf's PatchSet format has them; pyhf verifies the patchset against the workspace."""
    bkg = json.loads((region / "BkgOnly.json").read_text())
    patchset = {
        "metadata": {
            "name": f"sbottom_{region.name}",
            "description": "signal patchset for the SUSY multi-b-jet sbottom analysis",
            "digests": {"sha256": pyhf.utils.digest(bkg, "sha256")},
            "labels": ["m_sb", "m_N2", "m_N1"],
            "references": {"hepdata": "ins1748602"},
        },
        "patches": [
            {
                "metadata": {"name": p, "values": [float(x) for x in p.split("_")[1:]]},
                "patch": json.loads((region / f"patch.{p}.json").read_text()),
            }
            for p in points
        ],
        "version": "1.0.0",
    }
    pyhf.PatchSet(patchset).verify(bkg)  # a valid patchset for this workspace, says pyhf
    return bkg, patchset
