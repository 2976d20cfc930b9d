"""docs/config.md documents every key of the YAML config with the default the code uses."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from diffhep.runs.config import Config

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _render(value) -> str:
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, BaseModel) for v in value) and value:
        return "(see below)"
    return str(value).replace("'", "")


def _sections(annotation, suffix=""):
    """(section model, path suffix) inside an annotation: through unions and ``Annotated``,
    ``[]`` for a list item, ``.<term>`` for a value of a dict keyed by name."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, suffix
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        args = args[:1]
    elif origin is list:
        suffix += "[]"
    elif origin is dict:  # a section keyed by name (e.g. a loss term's parameter)
        suffix, args = suffix + ".<term>", args[1:]
    for a in args:
        yield from _sections(a, suffix)


def keys(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted key, rendered default) of every field, lists of sections as ``key[]``, the
    sections valued by a dict's keys as ``key.<term>``."""
    for name, f in model.model_fields.items():
        path = prefix + (f.alias or name)
        if f.is_required():
            default = "required"
        else:
            default = _render(f.default_factory() if f.default_factory else f.default)
        yield path, default
        seen = []  # a dict value that is a section or a list of them: documented once
        for sub, suffix in _sections(f.annotation):
            suffix = suffix.removesuffix("[]") if suffix.endswith(".<term>[]") else suffix
            if (sub, suffix) not in seen:
                seen.append((sub, suffix))
                yield from keys(sub, path + suffix + ".")


def _documented() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*`?([^|`]*?)`?\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_every_key_documented_with_its_default():
    doc = _documented()
    missing = [k for k, _ in keys() if k not in doc]
    wrong = [f"{k}: doc says {doc[k]!r}, code {d!r}" for k, d in keys() if k in doc and doc[k] != d]
    unknown = sorted(set(doc) - {k for k, _ in keys()})
    assert not (missing or wrong or unknown), (
        f"docs/config.md is out of date\nmissing: {missing}\nwrong: {wrong}\nunknown: {unknown}"
    )
