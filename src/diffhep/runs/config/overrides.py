"""``--set key=value`` overrides: a dotted path into the raw config document, the value
parsed as YAML; every error names the option it comes from."""

from __future__ import annotations

from typing import Any

import yaml

from .base import ConfigError


def apply_overrides(
    doc: dict, overrides, file: str | None = None, *, paths: list | None = None
) -> dict:
    """Apply ``key.sub=value`` overrides to a raw config dict.

    A key is a dotted path; a part that is an integer indexes a list (``analysis.samples.0
    .filter``, ``-1`` for the last item). The value is parsed as YAML. Every error names the
    ``--set`` option it comes from. ``paths``, if given, receives ``(path, option)`` for each
    override, the path with list indices resolved (for :func:`load_config`'s messages).

    Example:
        >>> apply_overrides({"a": {"b": [{"c": 1}]}}, ["a.b.0.c=[2, 3]"])
        {'a': {'b': [{'c': [2, 3]}]}}
    """
    for item in overrides or ():
        option = f"--set {item}"
        if "=" not in item:
            raise ConfigError(
                f"{option}: not of the form key=value",
                file=file,
                fix="e.g. --set training.epochs=3",
            )
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(
                f"{option}: empty key part in {key.strip()!r}",
                file=file,
                fix="give a dotted path, e.g. --set analysis.samples.0.filter='x > 1'",
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"{option}: the value {text!r} is not valid YAML ({problem})",
                file=file,
                where=key.strip(),
                fix="quote the value or close its brackets, e.g. --set observable.hidden=[64,64]",
            ) from None
        node: Any = doc
        resolved: list = []
        for i, p in enumerate(parts):
            here = ".".join(parts[:i]) or "the config"
            last = i == len(parts) - 1
            if isinstance(node, list):
                try:
                    idx = int(p)
                except ValueError:
                    raise ConfigError(
                        f"{option}: {p!r} is not an index of {here} (a list)",
                        file=file,
                        fix=f"use an index 0 to {len(node) - 1}",
                    ) from None
                if not -len(node) <= idx < len(node):
                    raise ConfigError(
                        f"{option}: index {idx} is out of range ({here} has {len(node)} items)",
                        file=file,
                        fix=f"use an index 0 to {len(node) - 1}, or set the whole list",
                    )
                resolved.append(idx % len(node))
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                resolved.append(p)
                if last:
                    node[p] = value
                else:
                    if node.get(p) is None:
                        node[p] = {}
                    node = node[p]
            else:
                raise ConfigError(
                    f"{option}: {here} is not a section or list (it is {node!r})", file=file
                )
        if paths is not None:
            paths.append((tuple(resolved), option))
    return doc
