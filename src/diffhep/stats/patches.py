"""JSON patches and pyhf patchsets: load one patch, check a patchset's digests, apply a
patch to a workspace document (sharing the samples a signal patch leaves untouched).

Example:
    >>> from diffhep.stats import patches
    >>> doc = {"channels": [{"name": "c", "samples": [{"name": "b", "data": [1.0]}]}]}
    >>> op = {"op": "add", "path": "/channels/0/samples/-", "value": {"name": "s", "data": [2.0]}}
    >>> [s["name"] for s in patches.apply_patch(doc, [op])["channels"][0]["samples"]]
    ['b', 's']
    >>> len(doc["channels"][0]["samples"])  # the input is unchanged
    1
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonpatch

from ..errors import DiffhepError, SchemaError
from .schema import load_json

__all__ = [
    "PatchError",
    "apply_patch",
    "digest",
    "load_patch",
    "misfit_patch_error",
    "patch_schema",
    "verify_patchset",
]

_SAMPLE_PATH = re.compile(r"^/channels/\d+/samples/(\d+|-)$")
_CHANNEL_PATH = re.compile(r"^/channels/\d+$")


class PatchError(DiffhepError):
    """A JSON patch that does not apply to a workspace (a path it names is not there)."""


def misfit_patch_error(err: DiffhepError, patch: str) -> DiffhepError:
    """``err``, raised by applying the patch ``patch`` (its file, or point name) to a valid
    workspace or by the workspace it made, reworded to blame the patch. A document the
    schema refuses keeps the schema's fix (a malformed patch, e.g. a sample without
    ``modifiers``), with the other possibility after it."""
    when = "with" if isinstance(err, PatchError) else "after applying"  # (then: it applied)
    other = "the patch may belong to another workspace (e.g. another region)"
    if isinstance(err, SchemaError) and err.fix:
        fix = f"{err.fix} in the patch; or {other}"
    else:
        fix = f"{other}: apply it to the background-only workspace it was made for"
    return DiffhepError(f"{when} the patch {patch}: {err.message}", file=err.file,
                        where=err.where, fix=fix)  # fmt: skip


def _local_op(op) -> bool:
    """A patch operation whose effect on schema validity is checked by its value alone."""
    if not isinstance(op, dict):
        return False
    kind, path = op.get("op"), str(op.get("path"))
    if kind in ("add", "replace"):
        return bool(_SAMPLE_PATH.match(path)) and "value" in op
    return kind == "remove" and bool(_SAMPLE_PATH.match(path) or _CHANNEL_PATH.match(path))


def digest(obj: Any, algorithm: str = "sha256") -> str:
    """Digest of a JSON document as pyhf computes it (``pyhf.utils.digest``): the hash of its
    JSON with sorted keys."""
    try:
        h = hashlib.new(algorithm)
    except ValueError:
        raise DiffhepError(
            f"unknown digest algorithm {algorithm!r}",
            where="metadata.digests",
            fix="use sha256 (or another hashlib algorithm), or skip with --no-digest-check",
        ) from None
    h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf8"))
    return h.hexdigest()


def verify_patchset(doc: dict, spec: dict, *, file: str | None = None) -> None:
    """Check a patchset's ``metadata.digests`` against the background-only workspace ``spec``
    (as pyhf's ``Patchset.verify``); raise :class:`DiffhepError` on a mismatch."""
    for algorithm, expected in doc["metadata"]["digests"].items():
        got = digest(spec, algorithm)
        if got != expected:
            raise DiffhepError(
                f"the patchset was made for another background-only workspace: its {algorithm} "
                f"digest is {expected}, the workspace's is {got}",
                file=file,
                where=f"metadata.digests.{algorithm}",
                fix="apply it to the workspace it was published with (the same HEPData record); "
                "--no-digest-check applies it anyway",
            )


def patch_schema(doc) -> str:
    """The schema of a patch file: a JSON patch (a list of operations) or a patchset."""
    return "jsonpatch.json" if isinstance(doc, list) else "patchset.json"


def _patch_schema(doc, source) -> str:
    """:func:`patch_schema`, after telling a workspace given in a patch's place (its schema
    error lists the workspace's keys as unexpected)."""
    if isinstance(doc, dict) and "channels" in doc and "patches" not in doc:
        raise DiffhepError(
            "this is a HistFactory workspace, not a patch or patchset",
            file="<stdin>" if str(source) == "-" else str(source),
            fix="give it as WORKSPACE, and with -p a signal patch (e.g. patch.NAME.json) or a "
            "patchset",
        )
    return patch_schema(doc)


def load_patch(
    path: str | Path, name: str | None = None, *, verify_against: dict | None = None
) -> list[dict]:
    """Read a JSON patch (a list of operations) or one patch of a pyhf patchset.

    Args:
        path: File with a JSON patch, or a pyhf patchset (``{"metadata":..., "patches":[...]}``).
        name: Name of the patch inside a patchset (needed if it holds more than one).
        verify_against: The background-only workspace the patchset is applied to: its
            digest must match the patchset's ``metadata.digests`` (``None``: no check).
    """
    return _load_patch(path, name, verify_against, option="name=")


def _load_patch(path, name, verify_against, option: str) -> list[dict]:
    """:func:`load_patch`; its messages call ``name`` ``option``: ``"name="`` (the Python
    argument) or ``"--patch-name"`` (the command line's)."""
    arg = f"{option}{name!r}" if option.endswith("=") else f"{option} {name!r}"
    doc, fname = load_json(path, schema=lambda doc: _patch_schema(doc, path))
    if isinstance(doc, list):
        if name is not None:
            raise DiffhepError(
                f"{arg} given, but the file is a single JSON patch, not a patchset",
                file=fname,
                where=option.rstrip("="),
                fix=f"drop {option}, or give a patchset file",
            )
        return doc
    if verify_against is not None:
        verify_patchset(doc, verify_against, file=fname)
    patches = {p["metadata"]["name"]: p["patch"] for p in doc["patches"]}
    if name is None and len(patches) == 1:
        return next(iter(patches.values()))
    if name not in patches:
        choose = f"{option}NAME" if option.endswith("=") else option
        raise DiffhepError(
            f"patch {name!r} is not in this patchset"
            if name
            else "the patchset has several patches",
            file=fname,
            where="patches[*].metadata.name",
            fix=f"choose one with {choose}; available: {', '.join(sorted(patches)[:10])}"
            + (" ..." if len(patches) > 10 else ""),
        )
    return patches[name]


def _copy_json(x):
    """A deep copy of a JSON document (dicts, lists and immutable leaves), ~5x faster than
    :func:`copy.deepcopy`."""
    if isinstance(x, dict):
        return {k: _copy_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_copy_json(v) for v in x)
    return x


def apply_patch(spec: dict, patch: list[dict], *, file: str | None = None) -> dict:
    """Apply a JSON patch to a workspace document and return the new document.

    ``spec`` is left unchanged. A patch that only adds, replaces or removes samples or
    channels (a signal point) shares the untouched samples with ``spec`` instead of copying
    the whole document; treat both documents as read-only.
    """
    try:
        if isinstance(patch, list) and all(_local_op(op) for op in patch):
            doc = dict(spec)
            doc["channels"] = [dict(c, samples=list(c["samples"])) for c in spec["channels"]]
            return jsonpatch.JsonPatch(_copy_json(patch)).apply(doc, in_place=True)
        return jsonpatch.JsonPatch(patch).apply(spec)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise PatchError(
            f"the patch does not apply: {err}",
            file=file,
            fix="the patch must be made for this workspace (check channel/sample indices)",
        ) from None
