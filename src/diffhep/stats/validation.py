"""Checks of a workspace's content that pyhf's JSON schema does not make.

The schema checks types and required keys; it does not check that a modifier's ``data`` has one
number per bin, that names are unique, that the numbers are usable (finite, not absurdly
large, non-negative where they must be) or that a measurement configures parameters the model
has. Without these checks a workspace is silently misread (a duplicate channel drops the first,
a wrong-length shapesys reads past its bins) or fails much later as "a fit did not converge".
:func:`check_workspace` runs when a :class:`~diffhep.stats.workspace.Workspace` is created (after
every patch), and raises :class:`WorkspaceContentError` naming the JSON path and the fix.

Choices:
    * A sample may have negative yields in some bins (published likelihoods have small negative
      bins from negative-weight generators, and pyhf accepts them); a bin whose *total* nominal
      yield (the sum of all samples) is negative is an error: its Poisson term is undefined.
    * Numbers above :data:`MAX_YIELD` in absolute value (1e15, where float64 can no longer
      count single events) are refused as absurd, as are NaN and infinities.
    * A measurement's parameter configuration must name a parameter of the model, and must not
      fix the POI (the fit would ignore it).

Example:
    >>> from diffhep.stats.workspace import example_spec
    >>> spec = example_spec()
    >>> spec["observations"][0]["data"][0] = -1.0
    >>> try:
    ...     check_workspace(spec)
    ... except WorkspaceContentError as err:
    ...     print(err.where)
    observations[0].data[0]
"""

from __future__ import annotations

import math
from collections import Counter

from ..errors import DiffhepError

__all__ = ["MAX_YIELD", "WorkspaceContentError", "check_samples", "check_workspace", "count"]

MAX_YIELD = 1e15


class WorkspaceContentError(DiffhepError):
    """A workspace whose content is invalid (bad numbers, lengths, duplicate names)."""


def count(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1: ``count(1, "bin") == "1 bin"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _bad_number(x, *, nonneg=False, positive=False) -> str | None:
    """Why ``x`` is not a usable number (None if it is)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return f"{x!r} is not a number"
    if math.isnan(x):
        return "NaN is not a number"
    if math.isinf(x):
        return f"{x} is infinite (JSON numbers such as 1e400 overflow)"
    if abs(x) > MAX_YIELD:
        return f"{x:g} is absurdly large (above {MAX_YIELD:g} in absolute value)"
    if positive and x <= 0:
        return f"{x:g} must be positive"
    if nonneg and x < 0:
        return f"{x:g} must not be negative"
    return None


def _check_numbers(values, where, what, fix, file, **kind):
    for b, x in enumerate(values):
        why = _bad_number(x, **kind)
        if why:
            raise WorkspaceContentError(f"{what}: {why}", file=file, where=f"{where}[{b}]", fix=fix)


def _check_length(values, nbins, where, what, file):
    if len(values) != nbins:
        raise WorkspaceContentError(
            f"{what} has {count(len(values), 'number')}, the channel has {count(nbins, 'bin')}",
            file=file,
            where=where,
            fix="give one number per bin of the channel",
        )


def _unique(items, where, what, file, fix):
    seen = {}
    for k, name in enumerate(items):
        if name in seen:
            raise WorkspaceContentError(
                f"two {what} are named {name!r} ({where(seen[name])} and {where(k)}): one "
                "would silently replace the other",
                file=file,
                where=where(k),
                fix=fix,
            )
        seen[name] = k


def _check_modifier(m, nbins, path, file):
    t, data = m["type"], m.get("data")
    if t in ("shapesys", "staterror"):
        _check_length(data, nbins, f"{path}.data", f"{t} {m['name']!r}", file)
        _check_numbers(data, f"{path}.data", f"{t} {m['name']!r} uncertainty",
                       "give absolute uncertainties (>= 0) per bin", file, nonneg=True)  # fmt: skip
    elif t == "histosys":
        for key in ("hi_data", "lo_data"):
            _check_length(data[key], nbins, f"{path}.data.{key}", f"histosys {key}", file)
            _check_numbers(data[key], f"{path}.data.{key}", f"histosys {m['name']!r} {key}",
                           "give the varied yields of the sample per bin", file)  # fmt: skip
    elif t == "normsys":
        for key in ("hi", "lo"):
            why = _bad_number(data[key], positive=True)
            if why:
                raise WorkspaceContentError(
                    f"normsys {m['name']!r} {key}: {why}",
                    file=file,
                    where=f"{path}.data.{key}",
                    fix="hi and lo are multiplicative factors > 0 (e.g. 1.1 and 0.9)",
                )


def _check_sample(s, n, path, file):
    """The numbers of a sample and its modifiers (``n`` bins)."""
    _check_numbers(s["data"], f"{path}.data", f"yield of sample {s['name']!r}",
                   "give finite expected yields per bin", file)  # fmt: skip
    for k, m in enumerate(s["modifiers"]):
        _check_modifier(m, n, f"{path}.modifiers[{k}]", file)


def check_samples(spec: dict, file: str | None = None) -> frozenset[int]:
    """Check the numbers and modifiers of every sample of a schema-valid workspace (each
    against its own number of bins) and return the ``id`` of each sample checked, for
    :func:`check_workspace`'s ``checked_samples``: the samples a signal patch leaves as they
    are (shared with the background-only document, see
    :func:`~diffhep.stats.workspace.apply_patch`) are not checked again at every point."""
    ids = []
    for i, ch in enumerate(spec["channels"]):
        for j, s in enumerate(ch["samples"]):
            _check_sample(s, len(s["data"]), f"channels[{i}].samples[{j}]", file)
            ids.append(id(s))
    return frozenset(ids)


def _channel_bins(samples, observed: int | None) -> int:
    """A channel's number of bins: the length most of its samples and its observation have
    (the first sample's on a tie), so that a length error names the odd one out (e.g. the
    sample a patch made for another workspace added)."""
    votes = Counter(len(s["data"]) for s in samples)
    if observed is not None:
        votes[observed] += 1
    return max(votes, key=votes.__getitem__)  # (the first of equal counts)


def _check_channels(spec, file, checked=frozenset()) -> dict:
    channels = spec["channels"]
    _unique([c["name"] for c in channels], lambda k: f"channels[{k}].name", "channels", file,
            "give every channel a unique name")  # fmt: skip
    observed = {o["name"]: len(o["data"]) for o in reversed(spec.get("observations", []))}
    nbins = {}
    for i, ch in enumerate(channels):
        if not ch["samples"]:  # (the schema says so; a patched document is not checked again)
            raise DiffhepError(
                f"channel {ch['name']!r} has no sample",
                file=file,
                where=f"channels[{i}].samples",
                fix="check that the patch was made for this workspace (a channel keeps at "
                "least one sample)",
            )
        n = _channel_bins(ch["samples"], observed.get(ch["name"]))
        nbins[ch["name"]] = n
        _unique(
            [s["name"] for s in ch["samples"]],
            lambda k, i=i: f"channels[{i}].samples[{k}].name",
            f"samples of channel {ch['name']!r}",
            file,
            "give every sample of a channel a unique name",
        )
        total = [0.0] * n
        for j, s in enumerate(ch["samples"]):
            path = f"channels[{i}].samples[{j}]"
            _check_length(s["data"], n, f"{path}.data", f"sample {s['name']!r}", file)
            if id(s) not in checked:  # (checked: its numbers and modifiers for n bins)
                _check_sample(s, n, path, file)
            total = [t + x for t, x in zip(total, s["data"], strict=True)]
        for b, t in enumerate(total):
            if t < 0:
                negative = [
                    f"{s['name']} ({s['data'][b]:g})" for s in ch["samples"] if s["data"][b] < 0
                ]
                raise WorkspaceContentError(
                    f"the total expected yield of channel {ch['name']!r} is negative in bin {b} "
                    f"({t:g}; negative samples: {', '.join(negative)}): its Poisson term is "
                    "undefined",
                    file=file,
                    where=f"channels[{i}].samples[*].data[{b}]",
                    fix="negative yields of single samples are allowed, but the sum over the "
                    "samples of a bin must be >= 0; check the histograms",
                )
    return nbins


def _check_observations(spec, nbins, file):
    obs = spec["observations"]
    _unique([o["name"] for o in obs], lambda k: f"observations[{k}].name",
            "observations", file, "give one observation per channel")  # fmt: skip
    for k, o in enumerate(obs):
        _check_numbers(o["data"], f"observations[{k}].data", f"observed count in {o['name']!r}",
                       "observed counts are finite and >= 0", file, nonneg=True)  # fmt: skip


def _modifier_names(spec) -> set:
    return {m["name"] for ch in spec["channels"] for s in ch["samples"] for m in s["modifiers"]}


def _check_measurements(spec, file):
    meas = spec["measurements"]
    _unique([m["name"] for m in meas], lambda k: f"measurements[{k}].name", "measurements",
            file, "give every measurement a unique name")  # fmt: skip
    names = _modifier_names(spec)
    for k, m in enumerate(meas):
        poi = m["config"]["poi"]
        for p, par in enumerate(m["config"].get("parameters", []) or []):
            where = f"measurements[{k}].config.parameters[{p}]"
            if par["name"] not in names:
                raise WorkspaceContentError(
                    f"measurement {m['name']!r} configures parameter {par['name']!r}, which no "
                    "modifier of the workspace has",
                    file=file,
                    where=f"{where}.name",
                    fix="remove the configuration or correct the name; the model's parameters: "
                    + ", ".join(sorted(names)[:15])
                    + (" ..." if len(names) > 15 else ""),
                )
            if par["name"] == poi and par.get("fixed"):
                raise WorkspaceContentError(
                    f"the POI {poi!r} of measurement {m['name']!r} is fixed: the hypothesis "
                    "test and the fit need it free",
                    file=file,
                    where=f"{where}.fixed",
                    fix='remove "fixed": true (to test one value use cls --poi-value)',
                )
            for b, bound in enumerate(par.get("bounds", []) or []):
                lo, hi = bound
                if _bad_number(lo) or _bad_number(hi) or lo > hi:
                    raise WorkspaceContentError(
                        f"bounds {bound} of parameter {par['name']!r} are not an interval",
                        file=file,
                        where=f"{where}.bounds[{b}]",
                        fix="give finite [lower, upper] with lower <= upper",
                    )


def check_workspace(
    spec: dict, file: str | None = None, *, checked_samples: frozenset[int] = frozenset()
) -> None:
    """Check a schema-valid workspace's content.

    Args:
        spec: The workspace document (already valid against pyhf's schema).
        file: Its source, for the messages.
        checked_samples: ``id`` of sample objects whose numbers and modifiers were checked
            already (:func:`check_samples`, or a workspace checked before that shares them);
            their lengths, names and the channel totals are still checked.

    Raises:
        WorkspaceContentError: The first problem found, with its JSON path and a fix.
    """
    nbins = _check_channels(spec, file, checked_samples)
    _check_observations(spec, nbins, file)
    _check_measurements(spec, file)
