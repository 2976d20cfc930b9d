"""Exclusion over a grid of signal points: the CLs of every patch of a background-only
workspace, computed in ``vmap``-ed batches (the library behind ``diffhep exclusion``).

Every point is the workspace with one JSON patch applied (a file holding a JSON patch, or
each patch of a pyhf patchset). Points whose models share one structure (the same static
tables and template shapes: every signal patch of a published analysis, as a rule) are
stacked and go through one compiled, vectorised :func:`~diffhep.stats.hypotest.hypotest`;
a batch holds at most ``batch_size`` points (memory is bounded by it), and a short last
batch is padded with copies of its last point so that every batch of a structure reuses
one compilation. Each point gives the same numbers as a single ``diffhep cls`` call.

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
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError
from . import exported
from .fit import DEFAULT_MAX_STEPS
from .hypotest import hypotest
from .workspace import Workspace, apply_patch, load_json, validate, verify_patchset

__all__ = ["batches", "expand_paths", "load_points", "run_batch"]


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


def load_points(spec: dict, patterns, *, digest_check: bool = True) -> list[tuple[str, list]]:
    """``(name, JSON patch)`` of every signal point in ``patterns`` (paths or globs).

    A pyhf patchset gives all its patches (named by ``metadata.name``; its digest is checked
    against ``spec`` unless ``digest_check`` is false), a JSON patch file gives one point
    named after the file (``patch.NAME.json`` -> ``NAME``). Point names must be unique.
    """
    points: list[tuple[str, list]] = []
    seen: dict[str, str] = {}
    for path in expand_paths(patterns):
        doc, fname = load_json(path)
        if isinstance(doc, list):
            validate(doc, "jsonpatch.json", file=fname)
            found = [(_point_name(path), doc)]
        elif isinstance(doc, dict) and "patches" in doc:
            validate(doc, "patchset.json", file=fname)
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


def batches(points: list, batch_size: int) -> list[list]:
    """``points`` in consecutive batches of at most ``batch_size``."""
    if batch_size < 1:
        raise DiffhepError(
            f"batch size {batch_size} < 1", where="--batch-size", fix="give a positive size"
        )
    return [points[i : i + batch_size] for i in range(0, len(points), batch_size)]


def _structure(model, data):
    leaves, treedef = jax.tree.flatten(eqx.filter(model, eqx.is_array))
    return treedef, tuple((x.shape, x.dtype) for x in leaves), data.shape


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
    """
    if not jax.config.jax_enable_x64:
        raise DiffhepError(
            "the statistical layer needs float64",
            fix="call diffhep.enable_x64() before building models",
        )
    built = []
    for name, ops in points:
        doc = _canonical_samples(spec, apply_patch(spec, ops, file=name))
        ws = Workspace(doc, file=name, validate_schema=False)
        model = ws.model(measurement, modifier_settings=modifier_settings)
        lo, hi = model.config.bounds[model.config.poi_index]
        if not lo <= poi_value <= hi:
            raise DiffhepError(
                f"POI value {poi_value:g} is outside the bounds [{lo:g}, {hi:g}] of the POI "
                f"{model.config.poi_name!r}",
                file=name,
                where="--poi-value",
                fix="test a value inside the bounds",
            )
        built.append((model, jnp.asarray(ws.data(model), dtype=jnp.float64)))
    groups: dict[Any, list[int]] = {}
    for i, (model, data) in enumerate(built):
        groups.setdefault(_structure(model, data), []).append(i)
    size = max(pad_to or 0, len(points))
    out: list[dict[str, Any] | None] = [None] * len(points)
    for idx in groups.values():
        padded = idx + [idx[-1]] * (size - len(idx))
        models = [built[i][0] for i in padded]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *models)
        data = jnp.stack([built[i][1] for i in padded])
        cls_obs, cls_exp, converged = exported.call(
            _batched,
            stacked,
            jnp.asarray(poi_value, dtype=jnp.float64),
            data,
            test_stat=test_stat,
            max_steps=max_steps,
        )
        cls_obs, cls_exp, converged = map(np.asarray, (cls_obs, cls_exp, converged))
        for k, i in enumerate(idx):
            ok = bool(converged[k])
            out[i] = {
                "point": points[i][0],
                "CLs_obs": float(cls_obs[k]) if ok else None,
                "CLs_exp": [float(x) for x in cls_exp[k]] if ok else None,
                "converged": ok,
            }
    return out  # type: ignore[return-value]
