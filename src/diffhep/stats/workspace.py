"""pyhf JSON workspaces: read, validate, patch, write.

The workspace is the contract with the rest of the HEP world: diffhep reads and writes exactly
the documents `pyhf <https://pyhf.readthedocs.io>`_ does, validated against pyhf's published
JSON schema (version 1.0.0, shipped in ``diffhep/schemas``). Schema violations become a
:class:`~diffhep.errors.SchemaError` that names the file, the JSON path and what to fix.

Example:
    >>> import diffhep
    >>> ws = diffhep.Workspace(diffhep.stats.workspace.example_spec())
    >>> ws.channel_names
    ['singlechannel']
    >>> model = ws.model()
    >>> model.config.par_names
    ['mu', 'uncorr_bkguncrt[0]', 'uncorr_bkguncrt[1]']
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import re
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import referencing

from ..errors import DiffhepError, SchemaError, format_json_path
from ..writers import write_atomic
from .model import Model
from .validation import check_workspace

__all__ = [
    "Workspace",
    "apply_patch",
    "digest",
    "example_spec",
    "load_json",
    "load_patch",
    "validate",
    "verify_patchset",
]

SCHEMA_VERSION = "1.0.0"


def load_json(path: str | Path, *, schema=None) -> tuple[Any, str]:
    """Read a JSON document from a file (``.json`` or ``.json.gz``) or from stdin (``-``).

    Args:
        path: The file, or ``-``.
        schema: Validate the document against this schema (:func:`validate`), or a function
            of the document giving the schema (``None``: no validation). A document whose
            text was validated before against the same schema is not validated again when
            the kernel store is on (a marker named by the digest of the text, the schema and
            the validator, in ``<store>/../validated``): a large workspace takes ~0.2 s.

    Returns:
        The parsed document and the display name of its source.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        if name == "<stdin>":
            text = sys.stdin.read()
        elif name.endswith(".gz"):
            text = gzip.decompress(Path(path).read_bytes()).decode()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DiffhepError(
            "file not found", file=name, fix="check the path (use '-' to read standard input)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DiffhepError(f"cannot read the file ({err})", file=name) from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise DiffhepError(
            "the JSON document is nested too deeply to read",
            file=name,
            fix="a workspace or patch is nested a few levels deep; check how the file was made",
        ) from None
    except json.JSONDecodeError as err:
        raise DiffhepError(
            f"invalid JSON: {err.msg}",
            file=name,
            where=f"line {err.lineno}, column {err.colno}",
            fix="the file must be a JSON document (a pyhf workspace or a JSON patch)",
        ) from None
    schema = schema(doc) if callable(schema) else schema
    if schema is not None:
        _validate_text(doc, schema, name, text)
    return doc, name


@cache
def _validator_digest() -> bytes:
    """What a validation result depends on besides the document: pyhf's schemas as shipped
    and the version of jsonschema."""
    from importlib.metadata import version

    h = hashlib.sha256(f"{SCHEMA_VERSION}|jsonschema {version('jsonschema')}".encode())
    root = resources.files("diffhep") / "schemas" / SCHEMA_VERSION
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        h.update(entry.name.encode())
        h.update(entry.read_bytes())
    return h.digest()


def _validate_text(doc, schema: str, name: str, text: str) -> None:
    """:func:`validate`, skipped when this text passed this schema before (see
    :func:`load_json`); only successes are remembered."""
    from . import exported

    store = exported.cache_dir()
    if store is None:
        validate(doc, schema, file=name)
        return
    h = hashlib.sha256(_validator_digest())
    h.update(schema.encode() + b"\0")
    h.update(text.encode())
    marker = store.parent / "validated" / h.hexdigest()
    if marker.exists():
        return
    validate(doc, schema, file=name)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache: validate every time
        pass


@cache
def _registry() -> referencing.Registry:
    root = resources.files("diffhep") / "schemas" / SCHEMA_VERSION
    registry = referencing.Registry()
    for entry in root.iterdir():
        if entry.name.endswith(".json"):
            contents = json.loads(entry.read_text())
            resource = referencing.Resource.from_contents(
                contents, default_specification=referencing.jsonschema.DRAFT6
            )
            registry = registry.with_resource(contents["$id"], resource)
    return registry.crawl()


def _schema(name: str) -> dict:
    # pyhf's top-level schemas are a bare "$ref" (draft 6 ignores a sibling "$id"), so refer
    # to them by absolute URI and let the registry resolve relative references from there.
    return {"$ref": f"https://scikit-hep.org/pyhf/schemas/{SCHEMA_VERSION}/{name}"}


_SAMPLE_PATH = re.compile(r"^/channels/\d+/samples/(\d+|-)$")
_CHANNEL_PATH = re.compile(r"^/channels/\d+$")


def _local_op(op) -> bool:
    """A patch operation whose effect on schema validity is checked by its value alone."""
    if not isinstance(op, dict):
        return False
    kind, path = op.get("op"), str(op.get("path"))
    if kind in ("add", "replace"):
        return bool(_SAMPLE_PATH.match(path)) and "value" in op
    return kind == "remove" and bool(_SAMPLE_PATH.match(path) or _CHANNEL_PATH.match(path))


_FIXES = {
    "required": "add the missing key",
    "additionalProperties": "remove or rename the unexpected key (check its spelling)",
    "type": "change the value to the expected type",
    "minItems": "the list must not be empty",
    "const": "use the expected value",
    "enum": "use one of the allowed values",
}


def validate(doc: Any, schema: str = "workspace.json", *, file: str | None = None) -> None:
    """Validate ``doc`` against one of pyhf's schemas; raise a readable error if it fails.

    Args:
        doc: The JSON document.
        schema: Schema file name: ``workspace.json``, ``model.json``, ``measurement.json``,
            ``patchset.json`` or ``jsonpatch.json``.
        file: Name of the source, used in the error message.

    Raises:
        SchemaError: With the JSON path of the offending element and a fix.
    """
    validator = jsonschema.Draft6Validator(_schema(schema), registry=_registry())
    try:
        errors = list(validator.iter_errors(doc))
    except RecursionError:
        raise SchemaError(
            f"does not follow the pyhf {schema} schema: the document is nested too deeply",
            file=file,
            fix="a workspace or patch is nested a few levels deep; check how the file was made",
        ) from None
    if not errors:
        return
    err, modtype = _deepest(errors)
    message = err.message if modtype is None else f"{modtype} modifier: {err.message}"
    if (
        err.validator in ("oneOf", "anyOf")
        and isinstance(err.instance, dict)
        and "type" in err.instance
    ):
        message = f"modifier of type {err.instance['type']!r} is malformed or unknown"
        fix = (
            "modifier types are normfactor, shapefactor, lumi, normsys, histosys, shapesys, "
            "staterror; check the 'data' field required by the type"
        )
    else:
        fix = _FIXES.get(err.validator)
    if len(message) > 300:
        message = message[:300] + " ..."
    raise SchemaError(
        f"does not follow the pyhf {schema} schema: {message}",
        file=file,
        where=format_json_path(err.absolute_path),
        fix=fix,
    )


def _deepest(errors):
    """The most specific error. pyhf's modifiers are an ``anyOf`` over modifier types: when
    exactly one branch accepts the modifier's ``type``, report that branch's own error (e.g.
    ``modifiers[2].data``) instead of the generic "not valid under any of the schemas"."""
    best = jsonschema.exceptions.best_match(errors)
    if best.validator in ("oneOf", "anyOf") and isinstance(best.instance, dict) and best.context:
        branches: dict = {}
        for sub in best.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        matching = [
            errs
            for errs in branches.values()
            if not any(list(e.relative_path)[:1] == ["type"] for e in errs)
        ]
        if len(matching) == 1:
            return jsonschema.exceptions.best_match(matching[0]), best.instance.get("type")
    return best, None


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
    doc, fname = load_json(path, schema=patch_schema)
    if isinstance(doc, list):
        if name is not None:
            raise DiffhepError(
                f"--patch-name {name!r} given, but the file is a single JSON patch, not a patchset",
                file=fname,
                where="--patch-name",
                fix="drop --patch-name, or give a patchset file",
            )
        return doc
    if verify_against is not None:
        verify_patchset(doc, verify_against, file=fname)
    patches = {p["metadata"]["name"]: p["patch"] for p in doc["patches"]}
    if name is None and len(patches) == 1:
        return next(iter(patches.values()))
    if name not in patches:
        raise DiffhepError(
            f"patch {name!r} is not in this patchset"
            if name
            else "the patchset has several patches",
            file=fname,
            where="patches[*].metadata.name",
            fix=f"choose one with --patch-name; available: {', '.join(sorted(patches)[:10])}"
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
        raise DiffhepError(
            f"the patch does not apply: {err}",
            file=file,
            fix="the patch must be made for this workspace (check channel/sample indices)",
        ) from None


class Workspace:
    """A validated pyhf workspace.

    Args:
        spec: The workspace document (a dict following pyhf's ``workspace.json`` schema).
        file: Where it came from, for error messages.
        validate_schema: Validate against the schema (default ``True``).
        checked_samples: ``id`` of the sample objects of ``spec`` whose content was checked
            already (see :func:`~diffhep.stats.validation.check_workspace`).
    """

    def __init__(
        self,
        spec: dict,
        *,
        file: str | None = None,
        validate_schema: bool = True,
        checked_samples: frozenset[int] = frozenset(),
    ):
        if validate_schema:
            validate(spec, "workspace.json", file=file)
        self.spec = spec
        self.file = file
        self._check_consistency(checked_samples)

    @classmethod
    def load(cls, path: str | Path, patches=()) -> Workspace:
        """Read a workspace file (``-`` for stdin) and apply JSON patches (lists of ops)."""
        spec, name = load_json(path, schema="workspace.json")
        for patch in patches:
            spec = apply_patch(spec, patch, file=name)
        return cls(spec, file=name)

    def _check_consistency(self, checked_samples=frozenset()):
        check_workspace(self.spec, self.file, checked_samples=checked_samples)
        obs = {o["name"] for o in self.spec["observations"]}
        for i, channel in enumerate(self.spec["channels"]):
            nbins = len(channel["samples"][0]["data"])
            if channel["name"] not in obs:
                raise DiffhepError(
                    f"channel {channel['name']!r} has no observation",
                    file=self.file,
                    where="observations",
                    fix=f"add {{'name': {channel['name']!r}, 'data': [...]}} to observations",
                )
            for j, sample in enumerate(channel["samples"]):
                if len(sample["data"]) != nbins:
                    raise DiffhepError(
                        f"sample {sample['name']!r} has {len(sample['data'])} bins, "
                        f"the channel has {nbins}",
                        file=self.file,
                        where=f"channels[{i}].samples[{j}].data",
                        fix="every sample of a channel needs one number per bin",
                    )
        for k, o in enumerate(self.spec["observations"]):
            ch = next((c for c in self.spec["channels"] if c["name"] == o["name"]), None)
            if ch is not None and len(o["data"]) != len(ch["samples"][0]["data"]):
                raise DiffhepError(
                    f"observation {o['name']!r} has {len(o['data'])} bins, the channel has "
                    f"{len(ch['samples'][0]['data'])}",
                    file=self.file,
                    where=f"observations[{k}].data",
                )

    @property
    def channel_names(self) -> list[str]:
        """Channel names, sorted as pyhf orders them in the model."""
        return sorted({c["name"] for c in self.spec["channels"]})

    @property
    def measurement_names(self) -> list[str]:
        return [m["name"] for m in self.spec["measurements"]]

    def measurement(self, name: str | None = None) -> dict:
        """The measurement called ``name`` (the first one if ``None``)."""
        if name is None:
            return self.spec["measurements"][0]
        for m in self.spec["measurements"]:
            if m["name"] == name:
                return m
        raise DiffhepError(
            f"no measurement named {name!r}",
            file=self.file,
            where="measurements",
            fix=f"use one of: {', '.join(self.measurement_names)}",
        )

    def model(
        self,
        measurement: str | None = None,
        *,
        modifier_settings: dict | None = None,
        poi_name: str | None = None,
    ) -> Model:
        """Build the HistFactory :class:`~diffhep.stats.model.Model` of a measurement.

        Args:
            measurement: Measurement name (default: the first).
            modifier_settings: Interpolation codes per modifier type, as in pyhf, e.g.
                ``{"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}}``.
                Default: pyhf's (``code4`` and ``code4p``).
            poi_name: Override the measurement's POI.
        """
        meas = self.measurement(measurement)
        model_spec = {
            "channels": self.spec["channels"],
            "parameters": meas["config"].get("parameters", []),
        }
        return Model.from_spec(
            model_spec,
            poi_name=meas["config"]["poi"] if poi_name is None else poi_name,
            modifier_settings=modifier_settings,
            file=self.file,
        )

    def data(self, model: Model, include_auxdata: bool = True) -> list[float]:
        """Observed data in the model's bin order, followed by its auxiliary data."""
        obs = {o["name"]: o["data"] for o in self.spec["observations"]}
        data = [x for c in model.config.channels for x in obs[c]]
        if include_auxdata:
            data += [float(x) for x in model.config.auxdata]
        return data

    def patched(self, patch: list[dict]) -> Workspace:
        """A new workspace with a JSON patch applied.

        When every operation adds or replaces a sample, or removes a sample or a channel
        (what published signal patches do), only the new samples are validated against the
        schema, and the lists that lost an item must not be empty: the rest of the document
        was valid and stays so. Otherwise, or if a sample is invalid, the whole document is
        (so that errors name their place in it).
        """
        doc = apply_patch(self.spec, patch, file=self.file)
        local = all(_local_op(op) for op in patch) and all(
            c.get("samples") for c in doc.get("channels") or [{}]
        )
        try:
            for op in patch if local else ():
                if op["op"] != "remove":
                    validate(op["value"], "defs.json#/definitions/sample")
        except SchemaError:
            local = False
        # the samples shared with this (checked) workspace need no second content check
        shared = frozenset(id(s) for c in self.spec["channels"] for s in c["samples"])
        return Workspace(doc, file=self.file, validate_schema=not local, checked_samples=shared)

    def to_json(self) -> str:
        return json.dumps(self.spec, indent=2, sort_keys=True)

    def write(self, path: str | Path) -> None:
        """Write the workspace as JSON (validated before writing)."""
        validate(self.spec, "workspace.json", file=str(path))
        write_atomic(Path(path), self.to_json() + "\n")

    def copy(self) -> Workspace:
        return Workspace(copy.deepcopy(self.spec), file=self.file, validate_schema=False)


def example_spec() -> dict:
    """pyhf's ``uncorrelated_background`` example as a workspace (2 bins, shapesys)."""
    return {
        "version": SCHEMA_VERSION,
        "channels": [
            {
                "name": "singlechannel",
                "samples": [
                    {
                        "name": "signal",
                        "data": [12.0, 11.0],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": [50.0, 52.0],
                        "modifiers": [
                            {"name": "uncorr_bkguncrt", "type": "shapesys", "data": [3.0, 7.0]}
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "singlechannel", "data": [51.0, 48.0]}],
        "measurements": [{"name": "Measurement", "config": {"poi": "mu", "parameters": []}}],
    }


def builtin_example(name: str = "sbottom_RegionA") -> tuple[dict, list[dict]]:
    """A real published likelihood shipped with diffhep (ATLAS sbottom, ins1748602).

    Returns:
        The background-only workspace and the signal patch for (1300, 850, 60) GeV.
    """
    root = resources.files("diffhep") / "data"
    spec = json.loads(gzip.decompress((root / f"{name}_BkgOnly.json.gz").read_bytes()))
    patch = json.loads(gzip.decompress((root / f"{name}_patch_1300_850_60.json.gz").read_bytes()))
    return spec, patch
