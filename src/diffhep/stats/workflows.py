"""Workspace-level workflows: the Python API behind ``diffhep cls|fit|upper-limit|demo``.

Each function takes file paths (or documents), runs the statistical core and returns plain
JSON-able dictionaries, raising :class:`~diffhep.errors.DiffhepError` on bad input or a fit
that does not converge.

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> from diffhep.stats import workflows
    >>> spec, patch = diffhep.stats.workspace.builtin_example()
    >>> out = workflows.cls(spec, patches=[patch])
    >>> sorted(out)
    ['CLs_exp', 'CLs_obs']
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from ..errors import DiffhepError, FitError, require_x64
from . import exported
from .fit import DEFAULT_MAX_STEPS
from .fit import fit as _fit
from .hypotest import hypotest as _hypotest
from .limits import LIMIT_NAMES, check_level
from .limits import poi_bounds as _poi_bounds
from .limits import upper_limit as _upper_limit
from .model import POISSON_FLOOR
from .patches import _load_patch, misfit_patch_error
from .schema import load_json, validate
from .uncertainties import undetermined_names
from .workspace import Workspace

__all__ = ["cls", "demo", "fit", "load_workspace", "toys", "upper_limit"]

log = logging.getLogger(__name__)


def load_workspace(workspace, patches=(), patch_name=None, digest_check=True) -> Workspace:
    """A workspace from a path (``-`` = stdin), a dict or a :class:`Workspace` (taken as it
    is: validated when it was made), with patches (paths or op lists).

    A patchset's ``metadata.digests`` are checked against the workspace it is applied to
    (as pyhf's ``Patchset.verify``) unless ``digest_check`` is false.
    """
    if isinstance(workspace, Workspace) and not patches:
        return workspace
    if isinstance(workspace, Workspace):
        spec, name = workspace.spec, workspace.file
    elif isinstance(workspace, dict):
        spec, name = workspace, None
        validate(spec, "workspace.json", file=name)
    else:
        spec, name = load_json(workspace, schema=lambda doc: _workspace_schema(doc, workspace))
    if patch_name is not None and not patches:
        raise DiffhepError(
            f"--patch-name {patch_name!r} given without a patchset",
            where="--patch-name",
            fix="give the patchset with -p PATCHSET.json, or drop --patch-name",
        )
    ws = Workspace(spec, file=name, validate_schema=False)
    for patch in patches:
        if isinstance(patch, list):
            ws = ws.patched(patch)
            continue
        ops = _load_patch(patch, patch_name, ws.spec if digest_check else None,
                          option="--patch-name")  # fmt: skip
        try:
            ws = ws.patched(ops)
        except DiffhepError as err:  # the workspace was valid: the patch does not fit it
            label = str(patch) + (f" (patch {patch_name!r})" if patch_name else "")
            raise misfit_patch_error(err, label) from None
    return ws


def _workspace_schema(doc, source) -> str:
    """The schema a workspace read from ``source`` is checked against (for
    :func:`load_json`), after telling patches and patchsets given in its place (their schema
    errors dump the document)."""
    name = "<stdin>" if str(source) == "-" else str(source)
    fix = "give the background-only workspace as WORKSPACE and this file with -p"
    if isinstance(doc, list) and doc and all(isinstance(op, dict) and "op" in op for op in doc):
        raise DiffhepError("this is a JSON patch (a list of operations), not a workspace",
                           file=name, fix=fix)  # fmt: skip
    if isinstance(doc, dict) and "patches" in doc and "channels" not in doc:
        raise DiffhepError("this is a pyhf patchset, not a workspace", file=name,
                           fix=fix + " (and --patch-name for one of its patches)")  # fmt: skip
    return "workspace.json"


def _f64(x) -> jax.Array:
    """``jnp.asarray(x, dtype=float64)`` without the jit that stages it (a compilation or a
    persistent-cache read per shape, tens of ms each)."""
    return jax.device_put(np.asarray(x, dtype=np.float64))


def _model_and_data(ws: Workspace, measurement=None, modifier_settings=None):
    require_x64()
    try:
        model = ws.model(measurement, modifier_settings=modifier_settings)
    except DiffhepError as err:
        raise _background_only(err, ws, measurement) from None
    return model, _f64(ws.data(model))


def _background_only(err: DiffhepError, ws: Workspace, measurement) -> DiffhepError:
    """``err``, with a hint when it says the measurement's POI is missing from the workspace
    (no sample has a modifier of its name): without a patch, a background-only workspace
    given without its signal patch (pyhf's ``cls`` takes it with ``--patch``); with one, a
    patch that adds no signal (RegionB's published patch.sbottom_1500_1495_60 only removes a
    channel)."""
    if err.where != "measurements[].config.poi":
        return err
    poi = ws.measurement(measurement)["config"]["poi"]
    if any(m["name"] == poi for c in ws.spec["channels"] for s in c["samples"]
           for m in s["modifiers"]):  # fmt: skip
        return err  # (it is there, but not a scalar)
    if ws.applied_patches:
        fix = (f"the patch applied adds no sample with a modifier {poi!r} (no signal): check "
               "that it is this workspace's signal patch")  # fmt: skip
    else:
        fix = ("this looks like a background-only workspace: apply a signal patch, -p PATCH "
               f"(and --patch-name for a patchset) as pyhf cls --patch; or {err.fix}")  # fmt: skip
    return type(err)(err.message, file=err.file, where=err.where, fix=fix)


def _warn_clipped(n, where):
    if int(n) > 0:
        log.warning(
            "%s: %d bin(s) with expected yield <= %g were clipped to that floor in the Poisson "
            "term (the model's interpolation drives them to zero or below)",
            where,
            int(n),
            POISSON_FLOOR,
        )


def _cls_kernel(model, poi_value, data, *, test_stat, max_steps=DEFAULT_MAX_STEPS):
    """The kernel of ``diffhep cls`` (and of every point of ``diffhep exclusion`` on CPU)."""
    r = _hypotest(poi_value, model, data, test_stat=test_stat, max_steps=max_steps)
    return {
        "cls_obs": r.cls_obs,
        "cls_exp": r.cls_exp,
        "converged": r.converged,
        "n_clipped": r.n_clipped,
    }


def cls(
    workspace,
    patches=(),
    *,
    patch_name=None,
    digest_check=True,
    measurement=None,
    poi_value=1.0,
    test_stat="qtilde",
    modifier_settings=None,
) -> dict:
    """Observed and expected CLs, shaped as ``pyhf cls`` prints them."""
    if test_stat not in ("qtilde", "q"):
        raise DiffhepError(
            f"unknown test statistic {test_stat!r}", where="--test-stat", fix="use 'qtilde' or 'q'"
        )
    ws = load_workspace(workspace, patches, patch_name, digest_check)
    model, data = _model_and_data(ws, measurement, modifier_settings)
    _check_poi_value(model, ws, poi_value)
    r = exported.call(_cls_kernel, model, _f64(poi_value), data, test_stat=test_stat)
    if not bool(r["converged"]):
        raise FitError(
            "a fit of the hypothesis test did not converge (or its free fit ended above a "
            "fit of the same data with the POI fixed, also after a fit from there)",
            file=ws.file,
            fix="check the model (e.g. with 'diffhep fit'); parameters at bounds or empty bins "
            "are common causes",
        )
    _warn_clipped(r["n_clipped"], ws.file or "workspace")
    return {"CLs_obs": float(r["cls_obs"]), "CLs_exp": [float(x) for x in np.asarray(r["cls_exp"])]}


def _check_poi_value(model, ws, poi_value):
    lo, hi = model.config.bounds[model.config.poi_index]
    if not lo <= poi_value <= hi:  # a fit would test the bound instead (also rejects NaN)
        raise DiffhepError(
            f"POI value {poi_value:g} is outside the bounds [{lo:g}, {hi:g}] of the POI "
            f"{model.config.poi_name!r}: a fit cannot test it",
            file=ws.file,
            where="--poi-value",
            fix="test a value inside the bounds, or widen them in the measurement's "
            f'parameter config ({{"name": "{model.config.poi_name}", "bounds": [[lo, hi]]}})',
        )


def toys(
    workspace,
    patches=(),
    *,
    patch_name=None,
    digest_check=True,
    measurement=None,
    poi_value=1.0,
    test_stat="qtilde",
    modifier_settings=None,
    ntoys=1000,
    seed=0,
    first=0,
    progress=None,
    **options,
):
    """Toy-based test (:func:`diffhep.stats.toys.toys`) of a workspace: a
    :class:`~diffhep.stats.toys.ToyResult` (``cls_json()`` / ``significance_json()``).

    ``test_stat="q0"`` is the discovery test (``poi_value`` is not used); ``progress`` is
    called with the number of toys done; ``options`` go to :func:`~diffhep.stats.toys.toys`
    (``chunk``, ``batch``).
    """
    from . import toys as _toys

    ws = load_workspace(workspace, patches, patch_name, digest_check)
    model, data = _model_and_data(ws, measurement, modifier_settings)
    if model.config.poi_index is None:
        raise DiffhepError("the model has no parameter of interest", file=ws.file,
                           where="measurements[].config.poi",
                           fix="name the POI in the measurement")  # fmt: skip
    if test_stat != "q0":
        _check_poi_value(model, ws, poi_value)
    try:
        return _toys.toys(poi_value, model, data, ntoys=ntoys, seed=seed, first=first,
                          test_stat=test_stat, progress=progress, **options)  # fmt: skip
    except FitError as err:
        raise FitError(err.message, file=ws.file, where=err.where, fix=err.fix) from None


def fit(
    workspace,
    patches=(),
    *,
    patch_name=None,
    digest_check=True,
    measurement=None,
    modifier_settings=None,
) -> dict:
    """Global maximum-likelihood fit: best-fit values and uncertainties by parameter name.

    Also pyhf's ``mle_parameters`` (values by parameter set) and ``twice_nll``. Where the
    Hessian at the best fit is singular or indefinite (e.g. two normfactors of one sample),
    the uncertainties of the parameters involved are ``None``, ``uncertainty_ok`` is False
    and ``undetermined`` names them: the fit converged, the uncertainties do not exist.
    """
    ws = load_workspace(workspace, patches, patch_name, digest_check)
    model, data = _model_and_data(ws, measurement, modifier_settings)
    r = _fit(model, data)  # compiled once per model structure (stats.exported.compiled)
    names = model.config.par_names
    if not bool(r.converged):
        raise FitError(
            f"the fit did not converge: {r.message}",
            file=ws.file,
            fix="check parameter bounds and inits in the measurement",
        )
    _warn_clipped(r.n_clipped, ws.file or "workspace")
    best, unc = np.asarray(r.bestfit), np.asarray(r.uncertainty)
    ok = np.asarray(r.uncertainty_ok, bool)
    out = {
        "bestfit": dict(zip(names, map(float, best), strict=True)),
        "uncertainty": {n: float(u) if k else None for n, u, k in zip(names, unc, ok, strict=True)},
        "uncertainty_ok": bool(ok.all()),
        # pyhf's `pyhf fit` fields: values by parameter set, -2 log L at the best fit
        "mle_parameters": {
            n: best[model.config.par_slice(n)].tolist() for n in model.config.par_order
        },
        "twice_nll": float(r.twice_nll),
        "converged": True,
        "message": r.message,
        "n_steps": int(r.n_steps),
    }
    if not ok.all():
        out["undetermined"] = undetermined_names(model.config, ok)
    return out


def upper_limit(
    workspace,
    patches=(),
    *,
    patch_name=None,
    digest_check=True,
    measurement=None,
    level=0.05,
    test_stat="qtilde",
    modifier_settings=None,
    scan=None,
    poi_bounds=None,
) -> dict:
    """Observed and expected upper limits on the POI at CL = 1 - level.

    Args:
        scan: POI values to test (the limits are interpolated on them, as pyhf's
            ``linear_grid_scan``); default: a scan of the POI's bounds refined by root finding.
        poi_bounds: ``(lo, hi)`` overriding the measurement's POI bounds.

    Returns:
        ``observed`` and ``expected`` (five, -2 sigma first): a number, or ``None`` when the
        limit lies outside the tested POI range; ``outside_range`` says where for each
        (``"above"``/``"below"``, ``None`` when found) and ``poi_range`` is that range
        (from ``max(lower bound, 0)``: CLs tests mu >= 0); ``poi_bounds`` are the POI's
        bounds in the fits.
    """
    check_level(level)  # before the (slow) work
    ws = load_workspace(workspace, patches, patch_name, digest_check)
    model, data = _model_and_data(ws, measurement, modifier_settings)
    res = _upper_limit(model, data, scan, level, test_stat=test_stat, bounds=poi_bounds)
    lo, hi = res.poi_range
    for side in ("above", "below"):  # one warning per side (the band's five limits often
        at = [i for i, s in enumerate(res.outside) if s == side]  # leave it together)
        if not at:
            continue
        bound, row = (hi, res.cls[-1]) if side == "above" else (lo, res.cls[0])
        names = " and ".join(", ".join(LIMIT_NAMES[i] for i in at).rsplit(", ", 1))
        cls_at = ", ".join(f"{row[i]:.3g}" for i in at)
        log.warning(
            "the %s limit%s %s %s the tested POI range [%g, %g] (CLs = %s at %s = %g, level "
            "%g): reported as null; widen the range with --poi-bounds or --scan",
            names, "s" if len(at) > 1 else "", "are" if len(at) > 1 else "is", side, lo, hi,
            cls_at, model.config.poi_name, bound, level,
        )  # fmt: skip
    return {
        "observed": res.observed,
        "expected": res.expected,
        "outside_range": {"observed": res.outside[0], "expected": res.outside[1:]},
        "poi_range": [lo, hi],
        "poi_bounds": list(_poi_bounds(model, poi_bounds)),
        "level": level,
        "poi": model.config.poi_name,
    }


def demo() -> dict:
    """CLs of a real published likelihood (ATLAS sbottom search, RegionA, one mass point)."""
    from .workspace import builtin_example

    spec, patch = builtin_example()
    out = cls(spec, patches=[patch])
    out["workspace"] = "ATLAS sbottom multi-b (ins1748602) RegionA, sbottom_1300_850_60"
    return out
