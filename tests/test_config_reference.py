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


def keys(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted key, rendered default) of every field, lists of sections as ``key[]``."""
    for name, f in model.model_fields.items():
        path = prefix + (f.alias or name)
        if f.is_required():
            default = "required"
        else:
            default = _render(f.default_factory() if f.default_factory else f.default)
        yield path, default
        subs = [
            b
            for a in (f.annotation, *typing.get_args(f.annotation))
            for b in (a, *typing.get_args(a))
            if isinstance(b, type) and issubclass(b, BaseModel)
        ]
        if subs:
            is_list = "list" in str(f.annotation)
            yield from keys(subs[0], path + ("[]." if is_list else "."))


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
