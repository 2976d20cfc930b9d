"""Fit diagnostics of a trained run: pulls, the impact ranking and the pre-/post-fit yields
of the trained analysis (its ``workspace.json``), with their figures.

The numbers are those of :mod:`diffhep.stats.covariance` and :mod:`diffhep.stats.diagnostics`
(the library behind ``diffhep pulls``, ``ranking`` and ``yields``; same JSON), applied to the
model of the run's ``workspace.json`` and to the run's data:

- with a data sample (``role: data``), the **observed data**: ``workspace.json``'s
  observations (``diffhep pulls workspace.json`` gives the same numbers);
- otherwise the **Asimov data at the nominal parameters** (POI at its initial value 1,
  constrained parameters at their auxiliary data: cabinetry's ``asimov=True``), the data of
  the training. ``workspace.json``'s observations are then the background-only Asimov data,
  on which the POI sits at its lower bound 0 and the ranking's refits are cut off there; at
  ``mu = 1`` the post-fit uncertainties are those the training optimised (the POI's is the
  summary's ``sigma_mu``).

They are computed when the run's report is written (``diffhep train``/``evaluate``) and kept
in ``diagnostics.json`` (atomically) with ``plots/pulls.png``, ``plots/ranking.png`` and
``plots/yields_fit.png``, so that :func:`diffhep.load_run` reads them without JAX.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import DiffhepError, FitError
from ..writers import write_atomic

log = logging.getLogger(__name__)

__all__ = ["DIAGNOSTICS_FORMAT", "ENV_SWITCH", "PLOTS", "compute", "enabled", "write_diagnostics"]

#: ``DIFFHEP_REPORT_DIAGNOSTICS=0`` skips the diagnostics of every run, whatever its
#: ``report.diagnostics`` (the test suite does: their fits compile for ~13 s of CPU per model
#: structure and process, in every test that trains).
ENV_SWITCH = "DIFFHEP_REPORT_DIAGNOSTICS"

DIAGNOSTICS_FORMAT = "diffhep-diagnostics/1"

#: The figures of :func:`write_diagnostics` in ``plots/`` (file name -> what they show).
PLOTS = {
    "pulls.png": "post-fit pulls and constraints",
    "ranking.png": "impacts on the POI (pre-/post-fit, up/down) with the pulls",
    "yields_fit.png": "pre- and post-fit yields with their uncertainties",
}

#: What the data of the diagnostics are (``diagnostics.json``'s ``data_description``).
DATA_DESCRIPTIONS = {
    "asimov": "Asimov data of the trained analysis at its nominal parameters (POI at its "
    "initial value, constrained parameters at their auxiliary data)",
    "observed": "observed data (workspace.json's observations: the hard histograms of the "
    "data sample)",
}


def enabled(config_switch: bool) -> bool:
    """Whether a run's report gets the diagnostics: ``report.diagnostics`` and not
    ``DIFFHEP_REPORT_DIAGNOSTICS=0``."""
    import os

    return bool(config_switch) and os.environ.get(ENV_SWITCH, "1") != "0"


def compute(spec: dict, observed: bool = False) -> dict:
    """Pulls, ranking and yields of a workspace on its observations or its Asimov data.

    Args:
        spec: A pyhf workspace (a run's ``workspace.json``).
        observed: Fit the workspace's observations (a run with a data sample); otherwise
            the Asimov data at the nominal parameters.

    Returns:
        ``{"format", "data" ("asimov" or "observed"), "data_description", "poi_value" (the
        Asimov data's POI; ``None`` for observed data), "pulls", "ranking", "yields"}``:
        ``pulls`` as :func:`diffhep.stats.diagnostics.pulls`; ``ranking`` as ``diffhep
        ranking``'s JSON (``{"poi", "poi_bestfit", "poi_uncertainty", "method", "ranking":
        [...]}``); ``yields`` as ``diffhep yields``' (``{"prefit", "postfit"}``).

    Raises:
        DiffhepError: float64 is not enabled; :class:`~diffhep.errors.FitError` if the fit
            does not converge. An impact refit that does not converge makes the ranking the
            linear (covariance) one, with a note: the pulls and yields are kept.
    """
    import jax

    from ..stats import covariance, diagnostics
    from ..stats.workspace import Workspace

    if not jax.config.jax_enable_x64:
        raise DiffhepError(
            "the fit diagnostics need float64",
            fix="call diffhep.enable_x64() before training or evaluating",
        )
    ws = Workspace(spec)
    model = ws.model()
    poi = covariance.require_poi(model)
    pars = covariance.nominal_parameters(model)
    if observed:
        data = np.asarray(ws.data(model), dtype=float)
    else:
        data = np.asarray(model.expected_data(pars), dtype=float)
    post = covariance.postfit(model, data)
    method, fallback = "refit", []
    try:
        r = diagnostics.ranking(model, data, post, method="refit")
    except FitError as err:  # an impact refit did not converge: the linear impacts, said so
        method = "covariance"  # (the pulls and yields are not lost with it)
        fallback = [f"{err.message}: the ranking gives the linear (covariance) impacts instead"]
        log.warning("fit diagnostics: %s", fallback[0])
        r = diagnostics.ranking(model, data, post, method=method)
    kind = "observed" if observed else "asimov"
    return {
        "format": DIAGNOSTICS_FORMAT,
        "data": kind,
        "data_description": DATA_DESCRIPTIONS[kind],
        "poi_value": None if observed else float(pars[poi]),
        "pulls": diagnostics.pulls(model, post),
        "ranking": {
            "poi": r.poi,
            "poi_bestfit": r.poi_bestfit,
            "poi_uncertainty": r.poi_uncertainty,
            "poi_at_bound": r.poi_at_bound,
            "method": method,
            "notes": fallback + list(r.notes),
            "ranking": r.to_list(),
        },
        "yields": {
            "prefit": covariance.prefit_yields(model, data),
            "postfit": covariance.postfit_yields(model, data, post),
        },
    }


def write_diagnostics(run_dir, plot_dir, style=None, observed: bool = False) -> dict:
    """Write ``diagnostics.json`` (:func:`compute` of ``run_dir/workspace.json``; on its
    observations if ``observed``) and its figures in ``plot_dir``.

    A stale ``diagnostics.json`` is removed first, so a failure leaves none. Nothing raises:
    what fails is logged and returned.

    Returns:
        ``{artefact: "<error>"}`` of what failed (``diagnostics.json``, ``plots/<file>``).
    """
    from ..plotting import diagnostics as figures

    run_dir, plot_dir = Path(run_dir), Path(plot_dir)
    path = run_dir / "diagnostics.json"
    path.unlink(missing_ok=True)
    try:
        doc = compute(json.loads((run_dir / "workspace.json").read_text()), observed)
        write_atomic(path, json.dumps(doc, indent=1))
    except Exception as exc:  # a failed diagnostic must not lose the run
        log.error("fit diagnostics failed: %s: %s", type(exc).__name__, exc)
        return {"diagnostics.json": f"{type(exc).__name__}: {exc}"}
    failed = {}
    draws = {
        "pulls.png": (figures.plot_pulls, (doc["pulls"],), {}),
        "ranking.png": (
            figures.plot_ranking,
            (doc["ranking"]["ranking"], doc["pulls"]),
            {
                "poi": doc["ranking"]["poi"],
                "poi_at_bound": doc["ranking"]["poi_at_bound"],
                "method": doc["ranking"]["method"],
            },
        ),
        "yields_fit.png": (
            figures.plot_yields,
            (doc["yields"]["prefit"], doc["yields"]["postfit"]),
            {"data_label": "data" if observed else "Asimov data"},
        ),
    }
    for name, (fn, args, kwargs) in draws.items():
        try:
            fn(*args, path=plot_dir / name, style=style, **kwargs)
        except Exception as exc:
            failed[f"plots/{name}"] = f"{type(exc).__name__}: {exc}"
            log.error("plot %s failed: %s: %s", name, type(exc).__name__, exc)
    return failed
