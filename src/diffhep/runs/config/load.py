"""Reading a config: YAML from a file or text, overrides, validation against the schema,
and pydantic's errors turned into one :class:`ConfigError` naming the fields (and the
``--set`` option that wrote a field)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import ConfigError
from .overrides import apply_overrides
from .schema import Config

_PATH = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*): ")


def _path(text: str) -> tuple:
    """``data.features[2]`` as ``("data", "features", "2")``."""
    return tuple(x for x in re.split(r"[.\[\]]", text) if x)


def _exists(doc, loc: tuple) -> bool:
    """Whether the raw document ``doc`` has a field at ``loc``."""
    for part in loc:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return False
    return True


def _origin(loc: tuple, paths, original) -> str | None:
    """The ``--set`` option that wrote the field at ``loc``: the overridden key or a key
    under it, or a field the file does not have that an override under it created."""
    loc = tuple(str(x) for x in loc)
    for path, option in reversed(paths or ()):  # the last override of a key wins
        path = tuple(str(x) for x in path)
        if loc[: len(path)] == path:
            return option
        if path[: len(loc)] == loc and not _exists(original, loc):
            return option
    return None


def _line(text: str | None, loc: tuple) -> int | None:
    """The line of the field at ``loc`` in the YAML ``text`` (of its key), if it is there."""
    if not text or not loc:
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == part), None)
            if entry is None:
                return None
            if i == len(loc) - 1:
                return entry[0].start_mark.line + 1
            node = entry[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            return None
    return node.start_mark.line + 1


def _format(
    err: ValidationError, file: str | None, paths=(), original=None, text=None
) -> ConfigError:
    lines, options, in_file = [], [], False
    where = None
    for e in err.errors():
        parts = tuple(str(x) for x in e["loc"] if not str(x).startswith(("function-", "<")))
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        named = _PATH.match(msg)  # a validator's message naming the field it is about
        if named and _path(named.group(1))[: len(parts)] == parts:
            parts, loc, msg = _path(named.group(1)), named.group(1), msg[named.end() :]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; docs/config.md lists every key)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        # a field a --set override wrote: name the option (the file does not contain it)
        option = _origin(parts, paths, original) if e["type"] != "missing" else None
        if option is not None:
            msg += f" (from {option})"
            options.append(option)
        else:
            in_file = True
            line = _line(text, parts) if file else None
            if line is not None:
                msg += f" (line {line})"
        where = where or loc
        lines.append(f"{loc or '<top>'}: {msg}")
    places = ([file or "the config"] if in_file else []) + list(dict.fromkeys(options))
    fix = "correct the field(s) above in " + " or ".join(places)
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
    original = copy.deepcopy(doc)
    doc = apply_overrides(doc, overrides, file, paths=paths)
    if edit is not None:
        paths += list(edit(doc) or ())
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise _format(exc, file, paths, original, text) from None
