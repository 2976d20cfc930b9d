"""Where every histogram of an analysis goes in the HistFactory model: computed once.

A training step turns per-channel histograms of every event set into a
:class:`~diffhep.Model`. Rather than writing them into a pyhf JSON dict and parsing it back
by name on every trace, :meth:`Layout.build` reads the analysis and the template model once
and records, for each ``(channel, event set)`` histogram, which template array it fills
(nominal row of a sample, histosys lo/hi row, staterror row from ``sqrt(sumw2)``) and at
which bins of the concatenated channels; normsys factors are constants of the analysis.
:meth:`Layout.fill` then builds the new templates with one gather:

    source = [sumw of every histogram, sqrt(sumw2) of every nominal histogram,
              the model's nominal, 0]
    templates = source[index]     (nominal, histosys lo, histosys hi, staterror, flattened)

Cells that no histogram fills keep the model's nominal (histosys: the new nominal of their
sample, staterror: 0), as :meth:`~diffhep.Model.with_channels` does. The layout is static
(hashable, compared and pickled by value), so a :class:`~diffhep.analysis.pipeline.Pipeline` holding
it compiles its step once; concrete and traced histograms give the same model, and JSON is
written only for ``workspace.json`` (:meth:`~diffhep.analysis.spec.Analysis.workspace`).

Example:
    >>> import jax.numpy as jnp
    >>> from diffhep import Model
    >>> from diffhep.analysis.spec import Analysis, Channel
    >>> a = Analysis(("sig", "bkg"), "sig", (Channel("SR", 2),))
    >>> ones = {("SR", n): ([1.0, 1.0], [1.0, 1.0]) for n in a.event_sets}
    >>> template = Model.from_spec(a.workspace(ones))
    >>> layout = Layout.build(a, template)
    >>> h = {("SR", "sig"): (jnp.array([1.0, 2.0]), jnp.zeros(2)),
    ...      ("SR", "bkg"): (jnp.array([5.0, 5.0]), jnp.zeros(2))}
    >>> layout.fill(template, h).expected_actualdata([1.0]).tolist()
    [6.0, 7.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from .numerics import safe_sqrt

__all__ = ["Layout"]

_ARRAYS = ("nominal", "histosys_lo", "histosys_hi", "staterror_uncrt")


@dataclass(frozen=True, eq=False)
class Layout:
    """The static map from an analysis' histograms to a model's template arrays.

    Attributes:
        sumw_keys: ``(channel, event set)`` whose ``sumw`` enter the source vector, in order.
        sumw2_keys: ``(channel, sample)`` whose ``sqrt(sumw2)`` (staterror) follow them.
        channel_bins: ``(channel, bins)`` of every channel of the analysis.
        shapes: Shapes of ``nominal``, ``histosys_lo``/``hi`` and ``staterror_uncrt``.
        index: Position in the source vector of every template cell (the four arrays
            flattened and concatenated).
        normsys_lo, normsys_hi: Factors of each normsys entry (``normsys_set`` where the
            analysis gives one; the others keep the model's).
        normsys_set: Whether the analysis sets each normsys entry.
        symmetric: Parameters with a symmetrised variation by construction (a shape
            systematic whose up and down are one event set; a normsys with ``lo == hi``).
    """

    sumw_keys: tuple
    sumw2_keys: tuple
    channel_bins: tuple
    shapes: tuple
    index: np.ndarray
    normsys_lo: tuple
    normsys_hi: tuple
    normsys_set: tuple
    symmetric: tuple

    def __post_init__(self):
        index = np.array(self.index, dtype=np.int32)
        index.setflags(write=False)
        object.__setattr__(self, "index", index)
        state = tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "index")
        object.__setattr__(self, "_hash", hash((state, index.tobytes())))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Layout) or hash(self) != hash(other):
            return False
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if f.name == "index"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in dataclasses.fields(self)
        )

    def __reduce__(self):
        # rebuilt from the fields: the cached hash of strings is per process
        return (Layout, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    @classmethod
    def build(cls, analysis: Any, model) -> Layout:
        """The layout of ``analysis`` in ``model`` (built from ``analysis.workspace``).

        Args:
            analysis: The :class:`~diffhep.analysis.spec.Analysis` whose histograms will be
                filled in (read through its attributes only: this module imports nothing
                of the analysis layer).
            model: The template :class:`~diffhep.Model` of the analysis (its structure:
                channel order and bins, sample order, modifier rows).

        Raises:
            ValueError: When the model lacks a channel, sample or modifier of the analysis.
        """
        cfg = model.config
        slices = cfg.channel_slices
        sidx = {s: i for i, s in enumerate(cfg.samples)}
        S, B = len(cfg.samples), cfg.nmaindata
        E, K = len(cfg.histosys_keys), len(cfg.staterror_keys)

        def row(keys, key, what):
            if key not in keys:
                raise ValueError(f"{what} {key!r} of the analysis is not in the model")
            return keys.index(key)

        sets = getattr(analysis, "histogram_sets", analysis.event_sets)  # + derived histograms
        sumw_keys = tuple((ch.name, n) for ch in analysis.channels for n in sets)
        sumw2_keys = ()
        if analysis.mc_stat:
            sumw2_keys = tuple((ch.name, n) for ch in analysis.channels for n in analysis.samples)
        nbins = {ch.name: ch.bins for ch in analysis.channels}
        for ch in analysis.channels:
            if ch.name not in slices:
                raise ValueError(f"channel {ch.name!r} of the analysis is not in the model")
            if slices[ch.name].stop - slices[ch.name].start != ch.bins:
                raise ValueError(f"channel {ch.name!r}: the model's bins differ from the analysis'")
        offset, start = {}, 0
        for k in sumw_keys:
            offset[("sumw", k)] = start
            start += nbins[k[0]]
        for k in sumw2_keys:
            offset[("sumw2", k)] = start
            start += nbins[k[0]]
        n_source = start
        template_at, zero_at = n_source, n_source + S * B

        def positions(kind, key):
            o = offset[(kind, key)]
            return np.arange(o, o + nbins[key[0]])

        nominal = template_at + np.arange(S * B).reshape(S, B)
        lo = np.empty((E, B), dtype=np.int64)
        hi = np.empty((E, B), dtype=np.int64)
        staterror = np.full((K, B), zero_at, dtype=np.int64)
        for ch in analysis.channels:
            sl = slices[ch.name]
            for name in analysis.samples:
                if name not in sidx:
                    raise ValueError(f"sample {name!r} of the analysis is not in the model")
                nominal[sidx[name], sl] = positions("sumw", (ch.name, name))
        histosys_sample = [sidx[s] for _, s in cfg.histosys_keys]
        lo[:], hi[:] = nominal[histosys_sample], nominal[histosys_sample]
        for ch in analysis.channels:
            sl = slices[ch.name]
            for s in analysis.shape_systematics:
                e = row(cfg.histosys_keys, (s.name, s.sample), "histosys")
                lo[e, sl] = positions("sumw", (ch.name, s.down))
                hi[e, sl] = positions("sumw", (ch.name, s.up))
            for name in analysis.samples if analysis.mc_stat else ():
                k = row(cfg.staterror_keys, (f"staterror_{ch.name}", name), "staterror")
                staterror[k, sl] = positions("sumw2", (ch.name, name))
        factors = {}
        for ch in analysis.channels:
            for s in analysis.norm_systematics:
                for name in s.samples:
                    key = (s.name, ch.name, name)
                    row(cfg.normsys_keys, key, "normsys")
                    factors[key] = (float(s.lo), float(s.hi))
        return cls(
            sumw_keys=sumw_keys,
            sumw2_keys=sumw2_keys,
            channel_bins=tuple(nbins.items()),
            shapes=((S, B), (E, B), (E, B), (K, B)),
            index=np.concatenate([a.ravel() for a in (nominal, lo, hi, staterror)]),
            normsys_lo=tuple(factors.get(k, (1.0, 1.0))[0] for k in cfg.normsys_keys),
            normsys_hi=tuple(factors.get(k, (1.0, 1.0))[1] for k in cfg.normsys_keys),
            normsys_set=tuple(k in factors for k in cfg.normsys_keys),
            symmetric=_symmetric(analysis),
        )

    def fill(self, model, histograms: Mapping):
        """``model`` with the templates of ``histograms`` (same structure, no recompilation).

        Args:
            model: The template model the layout was built for (or one of its structure).
            histograms: ``{(channel, event set): (sumw, sumw2)}`` for every channel and event
                set of the analysis; JAX arrays (traced or not), numpy arrays or lists.

        Returns:
            The model whose nominal, histosys, staterror and normsys templates come from the
            histograms and the analysis; ``config.symmetric`` is :attr:`symmetric`.
        """
        bins = dict(self.channel_bins)
        sumw = [_histogram(histograms, k, 0, bins) for k in self.sumw_keys]
        sumw2 = [_histogram(histograms, k, 1, bins) for k in self.sumw2_keys]
        dtype = jnp.result_type(*sumw, *sumw2)
        pieces = [p.astype(dtype) for p in sumw]
        if sumw2:  # pyhf's convention: absolute uncertainty sqrt(sum w^2)
            pieces.append(safe_sqrt(jnp.concatenate([p.astype(dtype) for p in sumw2])))
        mdtype = model.nominal.dtype
        source = jnp.concatenate(
            [
                *(p.astype(mdtype) for p in pieces),
                jnp.ravel(model.nominal),
                jnp.zeros(1, mdtype),
            ]
        )
        flat = source[self.index]
        arrays, start = {}, 0
        for name, shape in zip(_ARRAYS, self.shapes, strict=True):
            size = shape[0] * shape[1]
            arrays[name] = flat[start : start + size].reshape(shape)
            start += size
        if any(self.normsys_set):
            mask = np.asarray(self.normsys_set)
            arrays["normsys_lo"] = jnp.where(mask, np.asarray(self.normsys_lo), model.normsys_lo)
            arrays["normsys_hi"] = jnp.where(mask, np.asarray(self.normsys_hi), model.normsys_hi)
        out = model.with_yields(**arrays)
        if out.config.symmetric != self.symmetric:
            config = dataclasses.replace(out.config, symmetric=self.symmetric)
            out = dataclasses.replace(out, config=config)
        return out


def _histogram(histograms, key, part, bins):
    """``sumw`` (``part`` 0) or ``sumw2`` (1) of one histogram as an array of its dtype."""
    if key not in histograms:
        raise ValueError(f"no histogram for channel {key[0]!r} and event set {key[1]!r}")
    values = jnp.asarray(histograms[key][part])
    if values.shape != (bins[key[0]],):
        what = "sumw" if part == 0 else "sumw2"
        raise ValueError(
            f"histogram ({key[0]!r}, {key[1]!r}): {what} has shape {values.shape}, "
            f"expected ({bins[key[0]]},)"
        )
    return values


def _symmetric(analysis) -> tuple:
    """Names of the parameters whose variation is symmetrised by construction (the structural
    counterpart of the data check in :func:`diffhep.stats.channels.symmetric_parameters`)."""
    names = {
        s.name
        for s in analysis.shape_systematics
        if s.up == s.down and s.up != s.sample  # hi == lo, and not the nominal itself
    }
    names |= {s.name for s in analysis.norm_systematics if s.lo == s.hi != 1.0}
    return tuple(sorted(names))
