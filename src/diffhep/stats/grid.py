"""Exclusion over a grid of signal points: the CLs of every patch of a background-only
workspace, computed in ``vmap``-ed batches (the library behind ``diffhep exclusion``).

Every point is the workspace with one JSON patch applied (a file holding a JSON patch, or
each patch of a pyhf patchset). One point at a time (:func:`run_points`, the default on CPU),
each point runs the kernel of a single ``diffhep cls`` call (the same compilation, shared
with it through :mod:`~diffhep.stats.exported`), and the next point's model is built while
the kernel of the previous one runs. In batches (:func:`run_batch` with ``pad_to > 1``),
points whose models share one structure (:func:`~diffhep.stats.exported.structure_key`:
the same static tables, configuration and template shapes; every signal patch of a
published analysis, as a rule) are stacked and go through one compiled,
vectorised :func:`~diffhep.stats.hypotest.hypotest`; a batch holds at most ``batch_size``
points (memory is bounded by it), and a short last batch is padded with copies of its last
point so that every batch of a structure reuses one compilation. Each point gives the same
numbers as a single ``diffhep cls`` call.

:func:`run_batch` takes plain data (the workspace document and the patches), so batches can
be sent to other processes (``diffhep exclusion --workers``) as they are.

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> from diffhep.stats import grid
    >>> spec, patch = diffhep.stats.workspace.builtin_example()
    >>> [r["point"] for r in grid.run_batch(spec, [("p", patch)])]
    ['p']
"""

from __future__ import annotations

import glob
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError, require_x64
from . import exported
from .fit import DEFAULT_MAX_STEPS
from .hypotest import hypotest
from .patches import apply_patch, misfit_patch_error, verify_patchset
from .schema import load_json
from .validation import check_samples
from .workflows import _check_poi_value, _cls_kernel, _f64
from .workspace import Workspace

__all__ = ["batches", "check_measurement", "expand_paths", "load_points", "run_batch", "run_points"]


def expand_paths(patterns) -> list[str]:
    """File names from paths and glob patterns, in the given order (each pattern sorted); a
    pattern matching nothing is an error naming it."""
    out: list[str] = []
    for pattern in patterns:
        if glob.has_magic(str(pattern)):
            found = sorted(glob.glob(str(pattern)))
            if not found:
                raise DiffhepError(
                    "no file matches this pattern", file=str(pattern), fix="check the glob"
                )
            out.extend(found)
        else:
            out.append(str(pattern))
    return out


def _point_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name.removeprefix("patch.")


def _point_schema(doc) -> str | None:
    if isinstance(doc, list):
        return "jsonpatch.json"
    return "patchset.json" if isinstance(doc, dict) and "patches" in doc else None


def load_points(spec: dict, patterns, *, digest_check: bool = True) -> list[tuple[str, list]]:
    """``(name, JSON patch)`` of every signal point in ``patterns`` (paths or globs).

    A pyhf patchset gives all its patches (named by ``metadata.name``; its digest is checked
    against ``spec`` unless ``digest_check`` is false), a JSON patch file gives one point
    named after the file (``patch.NAME.json`` -> ``NAME``). Point names must be unique.
    """
    points: list[tuple[str, list]] = []
    seen: dict[str, str] = {}
    for path in expand_paths(patterns):
        doc, fname = load_json(path, schema=_point_schema)
        if isinstance(doc, list):
            found = [(_point_name(path), doc)]
        elif isinstance(doc, dict) and "patches" in doc:
            if digest_check:
                verify_patchset(doc, spec, file=fname)
            found = [(p["metadata"]["name"], p["patch"]) for p in doc["patches"]]
        else:
            raise DiffhepError(
                "not a JSON patch (a list of operations) nor a pyhf patchset",
                file=fname,
                where="(document root)",
                fix="give JSON patch files or a patchset ({'metadata':..., 'patches': [...]})",
            )
        for name, ops in found:
            if name in seen:
                raise DiffhepError(
                    f"point {name!r} is given twice (also in {seen[name]})",
                    file=fname,
                    fix="give each signal point once",
                )
            seen[name] = fname
            points.append((name, ops))
    return points


def check_measurement(spec: dict, measurement: str | None, *, file: str | None = None) -> None:
    """That the background-only workspace ``spec`` has the measurement named ``measurement``
    (``None``: its first): an option of every point, checked once, before them."""
    names = [m["name"] for m in spec.get("measurements", [])]
    if measurement is not None and measurement not in names:
        raise DiffhepError(
            f"no measurement named {measurement!r}",
            file=file,
            where="--measurement",
            fix=f"use one of: {', '.join(names)}",
        )


def batches(points: list, batch_size: int) -> list[list]:
    """``points`` in consecutive batches of at most ``batch_size``."""
    if batch_size < 1:
        raise DiffhepError(
            f"batch size {batch_size} < 1", where="--batch-size", fix="give a positive size"
        )
    return [points[i : i + batch_size] for i in range(0, len(points), batch_size)]


def _stack(models):
    """One model whose arrays are those of ``models`` stacked (models of one structure key:
    their static parts differ at most in what the compiled programs read from arrays,
    ``config.symmetric``, which the stacked model takes from each point's
    ``symmetric_pars``, as :func:`diffhep.stats.exported.call` does)."""
    arrays, rest = eqx.partition(models[0], eqx.is_array)
    treedef = jax.tree.structure(arrays)
    columns = zip(*(jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in models), strict=True)
    stacked = [jnp.stack(xs) for xs in columns]
    return eqx.combine(jax.tree.unflatten(treedef, stacked), rest)


def _batched(models, poi_value, data, *, test_stat, max_steps):
    def one(model, d):
        r = hypotest(poi_value, model, d, test_stat=test_stat, max_steps=max_steps)
        return r.cls_obs, r.cls_exp, r.converged

    return eqx.filter_vmap(one)(models, data)


def _canonical_samples(spec: dict, doc: dict) -> dict:
    """``doc`` with the samples a patch added renamed ``__signal__0``, ``__signal__1``, ...
    per channel: the signal sample is named after its point in published patchsets, and
    the names are part of the model's static structure, so that points otherwise identical
    would each compile. Numbers do not depend on sample names."""
    known = {(c["name"], s["name"]) for c in spec.get("channels", []) for s in c.get("samples", [])}
    for channel in doc.get("channels", []):
        k = 0
        for sample in channel.get("samples", []):
            if (channel["name"], sample["name"]) not in known:
                sample["name"] = f"__signal__{k}"
                k += 1
    return doc


def _workspace(doc, name, checked) -> Workspace:
    return Workspace(doc, file=name, validate_schema=False, checked_samples=checked)


def _model_of(ws, poi_value, measurement, modifier_settings):
    model = ws.model(measurement, modifier_settings=modifier_settings)
    _check_poi_value(model, ws, poi_value)  # the check and message of `diffhep cls`
    return model, _f64(ws.data(model))


def _model_and_data(doc, name, poi_value, measurement, modifier_settings, checked):
    # (benchmarks/kernel_ab.py calls it in every revision it compares)
    return _model_of(_workspace(doc, name, checked), poi_value, measurement, modifier_settings)


def _row(name, cls_obs, cls_exp, converged) -> dict[str, Any]:
    ok = bool(converged)
    return {
        "point": name,
        "CLs_obs": float(cls_obs) if ok else None,
        "CLs_exp": [float(x) for x in np.asarray(cls_exp)] if ok else None,
        "converged": ok,
    }


def _failed(name, err: DiffhepError) -> dict[str, Any]:
    """The row of a point whose model could not be built (bad input of its own: a published
    patch that adds no signal sample, a patch of another workspace): reported with its
    error, not the end of the grid."""
    return {**_row(name, None, None, False), "error": str(err)}


#: What a patched document that was not checked against the schema (a point checks only
#: what its patch adds) can raise where it is not valid: such a point is checked as
#: ``diffhep cls -p`` checks it (:func:`_checked`)
_UNCHECKED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def _build(spec, name, ops, poi_value, measurement, modifier_settings, checked, canonical):
    """The model and data of point ``name`` (``spec`` with its patch ``ops`` applied), or
    the :class:`DiffhepError` that says why there is none: the workspace is valid, so the
    point's patch does not fit it, or adds no signal. The checks come before the renaming of
    the added samples (``canonical``), so that messages name the patch's samples."""
    try:
        doc = apply_patch(spec, ops, file=name)
        ws = _workspace(doc, name, checked)
    except DiffhepError as err:
        return misfit_patch_error(err, "of this point")
    except _UNCHECKED as err:
        return _checked(spec, ops, name, err)
    if canonical:
        _canonical_samples(spec, doc)  # (in place: the workspace's document)
    try:
        return _model_of(ws, poi_value, measurement, modifier_settings)
    except DiffhepError as err:
        return _without_signal(err, doc)
    except _UNCHECKED as err:
        return _checked(spec, ops, name, err)


def _checked(spec, ops, name, err: Exception) -> DiffhepError:
    """The error of a point whose patched document failed on the fast path with ``err``: what
    the checks of ``diffhep cls -p`` say (the schema's JSON path and fix; a patch adding a
    sample without ``modifiers`` raised a KeyError here), else ``err`` as the point's error."""
    try:
        Workspace(spec, file=name, validate_schema=False).patched(ops)
    except DiffhepError as found:
        return misfit_patch_error(found, "of this point")
    return DiffhepError(
        f"the patched workspace cannot be built ({type(err).__name__}: {err})",
        file=name,
        fix="check this point's patch, e.g. with 'diffhep cls WORKSPACE -p PATCH'",
    )


def _without_signal(err: DiffhepError, doc: dict) -> DiffhepError:
    """``err`` with a fix for a point whose patched workspace has no sample with the
    measurement's POI (RegionB's published patch.sbottom_1500_1495_60 only removes a
    channel)."""
    if err.where != "measurements[].config.poi":
        return err
    names = {m["name"] for c in doc["channels"] for s in c["samples"] for m in s["modifiers"]}
    if any(m["config"]["poi"] in names for m in doc.get("measurements", [])):
        return err  # (there, but not a scalar)
    return type(err)(
        err.message,
        file=err.file,
        where=err.where,
        fix="this point's patch adds no signal sample (no modifier of that name): leave the "
        "point out, or check its patch",
    )


def run_points(
    spec: dict,
    points,
    *,
    poi_value: float = 1.0,
    test_stat: str = "qtilde",
    measurement: str | None = None,
    modifier_settings: dict | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    ahead: int = 2,
) -> Iterator[dict[str, Any]]:
    """CLs of each point, one at a time, yielded in order as :func:`run_batch` gives them.

    Each point runs the compiled kernel of ``diffhep cls`` (the numbers of a single call;
    one compilation per structure, shared with ``cls`` through the store of
    :mod:`~diffhep.stats.exported`). JAX dispatches a kernel and returns at once, so the
    models of up to ``ahead`` further points are built (in Python) while it runs.
    """
    require_x64()
    static = {"test_stat": test_stat}
    if max_steps != DEFAULT_MAX_STEPS:  # the default: the very kernel of `diffhep cls`
        static["max_steps"] = max_steps
    poi = _f64(poi_value)
    checked = check_samples(spec)  # once: a point checks only the samples its patch adds
    pending: deque = deque()

    def done(name, r):
        if isinstance(r, DiffhepError):
            return _failed(name, r)
        return _row(name, r["cls_obs"], r["cls_exp"], r["converged"])

    for name, ops in points:
        built = _build(spec, name, ops, poi_value, measurement, modifier_settings, checked,
                       canonical=False)  # fmt: skip
        if not isinstance(built, DiffhepError):
            built = exported.call(_cls_kernel, built[0], poi, built[1], **static)
        pending.append((name, built))
        if len(pending) > ahead:
            yield done(*pending.popleft())
    while pending:
        yield done(*pending.popleft())


def run_batch(
    spec: dict,
    points: list[tuple[str, list]],
    *,
    pad_to: int | None = None,
    poi_value: float = 1.0,
    test_stat: str = "qtilde",
    measurement: str | None = None,
    modifier_settings: dict | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> list[dict[str, Any]]:
    """CLs of each point of one batch (float64 must be enabled).

    Args:
        spec: The background-only workspace document.
        points: ``(name, JSON patch)`` pairs.
        pad_to: Pad every vectorised call to this many points (default: the batch's size),
            so that batches of one structure share one compilation.
        poi_value, test_stat: As ``diffhep cls``.
        max_steps: Newton iteration cap of each fit.

    Returns:
        One dict per point, in order: ``point``, ``CLs_obs``, ``CLs_exp`` (five values, the
        order of ``pyhf cls``) and ``converged``; the CLs are ``None`` when not converged.
        A point whose own patch or model is bad input (the patch adds no signal sample,
        belongs to another workspace, ...) has ``converged`` false and ``error``, the
        message; the other points are computed.
    """
    require_x64()
    if (pad_to or len(points)) <= 1:  # one point at a time: the kernel of `diffhep cls`
        return list(run_points(spec, points, poi_value=poi_value, test_stat=test_stat,
                               measurement=measurement, modifier_settings=modifier_settings,
                               max_steps=max_steps))  # fmt: skip
    checked = check_samples(spec)
    built = [_build(spec, name, ops, poi_value, measurement, modifier_settings, checked,
                    canonical=True) for name, ops in points]  # fmt: skip
    out: list[dict[str, Any] | None] = [None] * len(points)
    groups: dict[Any, list[int]] = {}
    for i, b in enumerate(built):
        if isinstance(b, DiffhepError):
            out[i] = _failed(points[i][0], b)
        else:
            groups.setdefault(exported.structure_key(*b), []).append(i)
    size = max(pad_to or 0, len(points))
    for idx in groups.values():
        padded = idx + [idx[-1]] * (size - len(idx))
        models = [built[i][0] for i in padded]
        stacked = _stack(models)
        data = jnp.stack([built[i][1] for i in padded])
        cls_obs, cls_exp, converged = exported.call(
            _batched,
            stacked,
            _f64(poi_value),
            data,
            test_stat=test_stat,
            max_steps=max_steps,
        )
        cls_obs, cls_exp, converged = map(np.asarray, (cls_obs, cls_exp, converged))
        for k, i in enumerate(idx):
            out[i] = _row(points[i][0], cls_obs[k], cls_exp[k], converged[k])
    return out  # type: ignore[return-value]
