"""Reading a config: YAML from a file or text, overrides, validation against the schema,
and pydantic's errors turned into one :class:`ConfigError` naming the fields (and the
``--set`` option that wrote a field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import ConfigError
from .overrides import apply_overrides
from .schema import Config


def _origin(loc: tuple, paths) -> str | None:
    """The ``--set`` option that wrote the field at ``loc`` (or a section holding it)."""
    loc = tuple(str(x) for x in loc)
    for path, option in reversed(paths or ()):  # the last override of a key wins
        path = tuple(str(x) for x in path)
        if loc[: len(path)] == path or path[: len(loc)] == loc:
            return option
    return None


def _format(err: ValidationError, file: str | None, paths=()) -> ConfigError:
    lines, options = [], []
    for e in err.errors():
        parts = tuple(x for x in e["loc"] if not str(x).startswith(("function-", "<")))
        loc = ".".join(map(str, parts))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; docs/config.md lists every key)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        # a field a --set override wrote: name the option (the file does not contain it)
        option = _origin(parts, paths) if e["type"] != "missing" else None
        if option is not None:
            msg += f" (from {option})"
            options.append(option)
        lines.append(f"{loc or '<top>'}: {msg}")
    first = err.errors()[0]
    where = ".".join(str(x) for x in first["loc"] if not str(x).startswith(("function-", "<")))
    fix = "correct the field(s) above"
    if options:
        fix += f" in the file or in {', '.join(dict.fromkeys(options))}"
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines),
        file=file,
        where=where or None,
        fix=fix,
    )


def load_config(
    path: str | Path | None = None, overrides=(), *, text: str | None = None, edit=None
) -> Config:
    """Read, override and validate a YAML config (from ``path`` or ``text``).

    ``edit``, if given, changes the raw document after the overrides (``edit(doc)``) and
    returns ``[(path, option), ...]``: the fields it wrote and the option they come from,
    named in validation errors (``diffhep optimize --param``).
    """
    file = str(path) if path is not None else None
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", file=file) from None
    try:
        doc: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    if not isinstance(doc, dict):
        raise ConfigError("the config must be a mapping of sections", file=file)
    paths: list = []
    doc = apply_overrides(doc, overrides, file, paths=paths)
    if edit is not None:
        paths += list(edit(doc) or ())
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise _format(exc, file, paths) from None
