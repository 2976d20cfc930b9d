"""The search space of ``diffhep optimize``: parameters, their checks, grids and trial overrides.

A parameter is a dotted config path (as for ``--set``) with a range or choices, from the
config's ``search.params`` or ``--param NAME=LOW:HIGH[:log][:int]`` / ``NAME=A,B,C``.
:func:`check_space` refuses, before anything runs, what cannot be searched: an unknown path,
a section instead of a value, text without choices, a range whose centre or bounds give an
invalid config; every message names ``search.params[i]`` (or the ``--param`` option).

Example:
    >>> parse_param("training.optimizer.learning_rate=1e-4:0.1:log")
    {'name': 'training.optimizer.learning_rate', 'low': 0.0001, 'high': 0.1, 'log': True}
    >>> trial_overrides({"observable.hidden.0": 16, "observable.activation": "tanh"})
    ['observable.hidden.0=16', 'observable.activation="tanh"']
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import yaml

from ..runs.config import Config, ConfigError, SearchParamConfig, load_config
from ..runs.exact import is_leaf_path

__all__ = [
    "centre",
    "check_space",
    "distributions",
    "grid",
    "load_search_config",
    "parse_param",
    "trial_overrides",
]

_FORMS = "NAME=LOW:HIGH, NAME=LOW:HIGH:log, NAME=LOW:HIGH:int or NAME=A,B,C"


def parse_param(spec: str) -> dict:
    """A ``--param`` option as a ``search.params`` entry."""
    name, sep, text = spec.partition("=")
    name = name.strip()
    if not sep or not name or not text.strip():
        raise ConfigError(f"--param {spec}: not of the form {_FORMS}", where="--param")
    if ":" not in text:
        return {"name": name, "choices": [yaml.safe_load(v) for v in text.split(",")]}
    low, high, *flags = text.split(":")
    out: dict = {"name": name}
    try:
        out["low"], out["high"] = float(low), float(high)
    except ValueError:
        raise ConfigError(
            f"--param {spec}: LOW and HIGH must be numbers", where="--param", fix=f"use {_FORMS}"
        ) from None
    for f in flags:
        if f not in ("log", "int"):
            raise ConfigError(
                f"--param {spec}: unknown flag {f!r}", where="--param", fix="flags: log, int"
            )
        out[f] = True
    return out


def load_search_config(path, overrides=(), params: Sequence[str] = ()) -> Config:
    """The config with the ``--param`` entries merged into ``search.params`` (an entry of
    the same name is replaced)."""
    entries = [(parse_param(p), f"--param {p}") for p in params]

    def edit(doc):
        search = doc.setdefault("search", {}) or {}
        doc["search"] = search
        current = search.get("params") or []
        origins = []
        for entry, option in entries:
            names = [e.get("name") if isinstance(e, dict) else None for e in current]
            if entry["name"] in names:
                i = names.index(entry["name"])
                current[i] = entry
            else:
                current.append(entry)
                i = len(current) - 1
            origins.append((("search", "params", i), option))
        search["params"] = current
        return origins

    return load_config(path, overrides, edit=edit)


def _lookup(doc, path: str):
    node = doc
    for part in path.split("."):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise KeyError(f"{part!r} is not an index of a list of {len(node)}") from None
        elif isinstance(node, dict):
            if part not in node:
                raise KeyError(f"no key {part!r}")
            node = node[part]
        else:
            raise KeyError(f"{part!r} goes below a value ({node!r})")
    return node


def centre(p: SearchParamConfig):
    """The middle of a parameter's range (geometric for log; the first choice)."""
    if p.choices is not None:
        return p.choices[0]
    mid = math.sqrt(p.low * p.high) if p.log else 0.5 * (p.low + p.high)
    return round(mid) if p.integer else mid


def _bounds(p: SearchParamConfig) -> list:
    if p.choices is not None:
        return list(p.choices)
    return [int(p.low), int(p.high)] if p.integer else [p.low, p.high]


def trial_overrides(values: dict) -> list[str]:
    """``--set`` overrides giving the config at ``values``."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def check_space(path, overrides, cfg: Config) -> list[SearchParamConfig]:
    """The parameters of ``cfg.search``, checked against the config; errors exit 2."""
    file = str(path)
    space = cfg.search.params
    if not space:
        raise ConfigError(
            "no parameters to search",
            file=file,
            where="search.params",
            fix="add a search.params section, or --param NAME=LOW:HIGH",
        )
    doc = cfg.model_dump(mode="json", by_alias=True)
    for i, p in enumerate(space):
        where = f"search.params[{i}] ({p.name})"

        def fail(msg, fix, where=where):
            raise ConfigError(msg, file=file, where=where, fix=fix)

        if p.name.split(".")[0] == "search":
            fail("the search section cannot search itself", "name a key of another section")
        try:
            value = _lookup(doc, p.name)
        except KeyError as exc:
            fail(
                f"{p.name!r} is not a key of the config: {exc.args[0]}",
                "a dotted path as for --set, e.g. selection.cuts.0.init, observable.hidden.0, "
                "training.optimizer.learning_rate (docs/config.md lists every key)",
            )
        if isinstance(value, dict | list):
            fail(
                f"{p.name!r} is a {'section' if isinstance(value, dict) else 'list'}, not a value",
                "name one value in it (list items by index: observable.hidden.0)",
            )
        if p.choices is None and isinstance(value, str | bool):
            fail(f"{p.name!r} is not numeric (it is {value!r})", "give it choices: [...]")
        if not cfg.search.train and not is_leaf_path(p.name, cfg):
            fail(
                f"{p.name!r} needs training: with search.train false only cut thresholds "
                "(selection.cuts.<i>.init) and inner bin edges (analysis.channels.<i>.edges.<k>, "
                "0 < k < bins) can be searched",
                "set search.train: true (every trial trains), or search cuts and edges only",
            )
    middle = {p.name: centre(p) for p in space}
    _load_at(path, overrides, middle, None, "the centre of the search space")
    for i, p in enumerate(space):
        for b in _bounds(p):
            _load_at(path, overrides, middle | {p.name: b}, (i, p), f"{p.name} = {b!r}")
    return list(space)


def _load_at(path, overrides, values, param, what):
    try:
        load_config(path, [*overrides, *trial_overrides(values)])
    except ConfigError as exc:
        if param is not None and exc.where != param[1].name:
            return  # another field (e.g. edges in order): depends on the other values
        where = "search.params" if param is None else f"search.params[{param[0]}]"
        raise ConfigError(
            f"{what} gives an invalid config: {exc.message}",
            file=str(path),
            where=where,
            fix="narrow the range (or correct the config)",
        ) from None


def _grid_values(p: SearchParamConfig, steps: int) -> list:
    if p.choices is not None:
        return list(p.choices)
    steps = p.steps or steps
    v = np.geomspace(p.low, p.high, steps) if p.log else np.linspace(p.low, p.high, steps)
    if p.integer:
        return sorted({round(x) for x in v})
    return [float(x) for x in v]


def grid(space: Sequence[SearchParamConfig], budget: int) -> dict[str, list]:
    """The grid of the ``grid`` method: ``steps`` points per range (default: as many as the
    budget allows, at least 2), every choice."""
    fixed = math.prod(len(p.choices) if p.choices is not None else p.steps or 1 for p in space)
    free = sum(p.choices is None and p.steps is None for p in space)
    steps = max(2, math.floor((budget / fixed) ** (1 / free) + 1e-9)) if free else 2
    return {p.name: _grid_values(p, steps) for p in space}


def distributions(space: Sequence[SearchParamConfig]) -> dict:
    """Optuna distributions of the parameters."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out = {}
    for p in space:
        if p.choices is not None:
            out[p.name] = CategoricalDistribution(p.choices)
        elif p.integer:
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log)
    return out
