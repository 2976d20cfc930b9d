"""pyhf JSON in: read a document (file, ``.gz`` or stdin) and validate it against pyhf's schemas.

diffhep validates exactly as pyhf does, against pyhf's published JSON schema (version 1.0.0,
shipped in ``diffhep/schemas``). Violations become a :class:`~diffhep.errors.SchemaError`
naming the file, the JSON path and what to fix; a text validated before is not validated
again when the kernel store is on.

Example:
    >>> from diffhep.errors import SchemaError
    >>> from diffhep.stats import schema, workspace
    >>> schema.validate(workspace.example_spec(), "workspace.json")  # valid: returns None
    >>> try:
    ...     schema.validate({"version": "1.0.0"}, "workspace.json")
    ... except SchemaError as err:
    ...     print(err.fix)
    add the missing key
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DiffhepError, SchemaError, format_json_path

__all__ = ["SCHEMA_VERSION", "load_json", "validate"]

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
    except IsADirectoryError:
        found = sorted(p.name for p in Path(path).glob("*.json*"))
        some = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise DiffhepError(
            "this is a directory, not a JSON file",
            file=name,
            fix="give the path of a JSON file in it" + (f" (it has {some})" if found else ""),
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DiffhepError(
            f"cannot read the file ({err})",
            file=name,
            fix="give a readable JSON file (UTF-8 .json, or gzip-compressed .json.gz)",
        ) from None
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
def _registry():  # -> referencing.Registry
    import referencing  # (jsonschema's; both only where a document is validated)

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
    import jsonschema  # lazily: a text validated before (a warm command) needs none of it

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
    import jsonschema

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
