"""The differentiable analysis: observable -> histograms -> likelihood -> loss and metrics.

This module is the only place that wires the pieces together:

    events --selection x observable--> weights, scores --(soft|hard) histograms-->
    Layout.fill (one gather into the template) --> HistFactory model --losses--> scalar

:class:`Pipeline` is static (the analysis, the feature names, the loss terms, the
:class:`~diffhep.stats.layout.Layout` of the histograms in the model) and holds the compiled-once
template :class:`~diffhep.Model`; pyhf JSON is written only for ``workspace.json``
(:meth:`Pipeline.workspace`). The trainable state is a :class:`Params`
pytree (the observable, the bin edges of every channel and the selection cuts). Events are
passed as a dict ``{event set: Events}`` whose weights are already scaled to the expected
yields. The selection's per-event weights (relaxed with slope ``slope`` during training,
hard cuts for evaluation) multiply the event weights entering every histogram and loss.

Example:
    >>> import jax, numpy as np
    >>> jax.config.update("jax_enable_x64", True)
    >>> from diffhep.analysis.spec import Analysis, Channel
    >>> rng = np.random.default_rng(0)
    >>> events = {n: Events(rng.normal(m, 1, (200, 1)).astype("f4"), np.full(200, y / 200))
    ...           for n, m, y in (("sig", 1.0, 10.0), ("bkg", -1.0, 50.0))}
    >>> pipe = Pipeline(Analysis(("sig", "bkg"), "sig", (Channel("SR", 2),)), ("x",))
    >>> params = pipe.init_params(events, hidden=(4,), key=jax.random.key(0))
    >>> h = pipe.histograms(params, events)  # hard histograms
    >>> round(float(sum(h[("SR", "bkg")][0])), 6)
    50.0
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..nn.observables import MLPObservable
from ..stats.hypotest import hypotest
from ..stats.layout import Layout
from ..stats.model import Model
from ..types import Events
from . import losses as L
from .cuts import Selection
from .histograms import Binning, hard_histogram, relative_bandwidth, soft_histogram
from .nuisance import parse as parse_nuisance_term
from .spec import LOSS_TERMS, NN_TERMS, Analysis

__all__ = ["LOSS_TERMS", "METRICS", "NN_TERMS", "Events", "Params", "Pipeline"]

#: Terms computed from the HistFactory model of the soft histograms.
LIKELIHOOD_TERMS = ("cls", "log_cls", "z0", "inv_z0", "sigma_mu")
#: Terms computed from soft yields (signal and backgrounds).
YIELD_TERMS = ("s_sqrt_sb", "z_asimov", "b_over_s2")
#: Metrics evaluated with hard histograms and exact fits.
METRICS = ("expected_cls", "z0", "sigma_mu")


class Params(eqx.Module):
    """Trainable state: the observable (``None`` for cuts alone), the binning of each channel
    and the selection (``None``: no cuts)."""

    observable: MLPObservable | None
    binnings: tuple
    selection: Selection | None = None


class Pipeline(eqx.Module):
    """Static analysis wiring plus the template model (built once)."""

    analysis: Analysis = eqx.field(static=True)
    features: tuple = eqx.field(static=True)
    template: Model
    layout: Layout = eqx.field(static=True)
    z_asimov_rel_uncertainty: float = eqx.field(static=True, default=0.1)
    skim_target: float | None = eqx.field(static=True, default=None)
    min_background: float = eqx.field(static=True, default=0.0)

    def __init__(
        self,
        analysis: Analysis,
        features,
        *,
        z_asimov_rel_uncertainty=0.1,
        skim_target=None,
        min_background=0.0,
    ):
        self.analysis = analysis
        self.features = tuple(features)
        for ch in analysis.channels:
            for f, *_ in ch.region:
                self._feature(f, f"channel {ch.name!r} region")
            if ch.observable not in ("nn", "count"):
                self._feature(ch.observable, f"channel {ch.name!r} observable")
            if ch.observable == "count" and ch.bins != 1:
                raise ValueError(f"channel {ch.name!r}: a 'count' channel has 1 bin")
        ones = {
            (ch.name, n): ([1.0] * ch.bins, [1.0] * ch.bins)
            for ch in analysis.channels
            for n in analysis.event_sets
        }
        ws = analysis.workspace(ones)
        spec = {"channels": ws["channels"], "parameters": analysis.parameters}
        template = Model.from_spec(spec, poi_name=analysis.poi)
        self.layout = Layout.build(analysis, template)
        # + the structural symmetric params
        self.template = self.layout.fill(template, analysis.with_derived(ones))
        self.z_asimov_rel_uncertainty = float(z_asimov_rel_uncertainty)
        self.skim_target = None if skim_target is None else float(skim_target)
        if not min_background >= 0:
            raise ValueError(f"min_background must be >= 0, got {min_background}")
        self.min_background = float(min_background)

    @property
    def uses_nn(self) -> bool:
        """Whether a channel histograms the neural observable (otherwise cuts alone)."""
        return any(ch.observable == "nn" for ch in self.analysis.channels)

    def _feature(self, name, where=""):
        if name not in self.features:
            raise ValueError(f"{where}: unknown feature {name!r}; features are {self.features}")
        return self.features.index(name)

    # ------------------------------------------------------------------ parameters
    def init_params(
        self,
        events: Mapping[str, Events],
        *,
        key,
        hidden=(1024, 1024),
        activation="relu",
        dtype=jnp.float32,
        cuts=(),
    ) -> Params:
        """An untrained observable standardised on the nominal samples (none if no channel
        uses it), the binnings, and the selection of the cut ``specs`` (thresholds without
        an ``init`` start at quantiles of the nominal samples)."""
        xs = np.concatenate([np.asarray(events[n].x) for n in self.analysis.samples])
        obs = None
        if self.uses_nn:
            obs = MLPObservable.create(xs, hidden, key=key, activation=activation, dtype=dtype)
        selection = Selection.create(cuts, self.features, xs) if cuts else None
        binnings = []
        for ch in self.analysis.channels:
            t = ch.learnable_edges
            if ch.observable == "count":
                b = Binning.uniform(1, -1.0, 1.0)
            elif ch.edges:
                b = Binning.from_edges(ch.edges, trainable=t)
            else:
                b = Binning.uniform(ch.bins, 0.0, 1.0, trainable=t)
            if b.nbins != ch.bins:
                raise ValueError(f"channel {ch.name!r}: {b.nbins + 1} edges for {ch.bins} bins")
            binnings.append(b)
        return Params(obs, tuple(binnings), selection)

    # ------------------------------------------------------------------ histograms
    def event_weights(self, params: Params, ev: Events, slope=None):
        """Event weights times the selection: relaxed cuts with ``slope``, hard cuts when
        ``slope`` is ``None``."""
        w = jnp.asarray(ev.w)
        if params.selection is None:
            return w
        if slope is None:
            return w * params.selection.passes(ev.x).astype(w.dtype)
        return w * params.selection.weights(ev.x, slope).astype(w.dtype)

    def histograms(
        self, params: Params, events: Mapping[str, Events], bandwidth=None, slope=None
    ) -> dict:
        """``{(channel, event set): (sumw, sumw2)}``; soft (bKDE) when ``bandwidth`` (relative
        to the mean bin width) is given, hard otherwise. Selection cuts are relaxed with
        ``slope`` in soft mode and hard otherwise."""
        if bandwidth is not None and slope is None and params.selection is not None:
            raise ValueError("soft histograms with selection cuts need the cut slope")
        out = {}
        for name in self.analysis.event_sets:
            for ch, h in self.event_set_histograms(params, events[name], bandwidth, slope).items():
                out[(ch, name)] = h
        return self.analysis.with_derived(out)

    def event_set_histograms(self, params: Params, ev: Events, bandwidth=None, slope=None):
        """``{channel: (sumw, sumw2)}`` of one event set (soft or hard as :meth:`histograms`):
        the selection, each channel's region and observable."""
        score = params.observable(ev.x) if self.uses_nn else None
        selected = self.event_weights(params, ev, None if bandwidth is None else slope)
        out = {}
        for ch, binning in zip(self.analysis.channels, params.binnings, strict=True):
            w = selected
            for f, lo, hi in ch.region:
                v = ev.x[:, self._feature(f)]
                w = w * ((v >= lo) & (v < hi)).astype(w.dtype)
            if ch.observable == "nn":
                values = score
            elif ch.observable == "count":
                values = jnp.zeros(w.shape, dtype=w.dtype)
            else:
                values = ev.x[:, self._feature(ch.observable)]
            edges = binning.edges()
            if bandwidth is None:
                out[ch.name] = hard_histogram(values, edges, w)
            else:
                h = relative_bandwidth(edges, bandwidth)
                out[ch.name] = soft_histogram(values, edges, h, w)
        return out

    def floor_background(self, histograms) -> dict:
        """``histograms`` with the total nominal background of every bin raised to at least
        :attr:`min_background` expected events (unchanged if it is 0): a bin's deficit
        ``max(min_background - b, 0)`` is added to the background samples in proportion to
        their (non-negative) yields in the channel, equally if they have none, and the
        same amount to every histogram of that sample's shape systematics (the variations'
        differences to the nominal, the histosys, are unchanged); the sums of squared
        weights are unchanged.

        The likelihood losses see these histograms: the soft histograms of a finite MC
        sample give a bin beyond the last background event a background close to 0 and
        the expected CLs, Z0 and sigma_mu of any signal there an unbounded sensitivity,
        which the training would otherwise exploit (a bin without background MC does not
        measure a background of 0, only one below what an MC event weighs)."""
        b_min = self.min_background
        if not b_min:
            return histograms
        a = self.analysis
        out = dict(histograms)
        for ch in a.channels:
            totals = jnp.stack([jnp.sum(histograms[(ch.name, n)][0]) for n in a.backgrounds])
            totals = jax.lax.stop_gradient(jnp.clip(totals, 0.0))
            share = jnp.where(
                jnp.sum(totals) > 0,
                totals / jnp.where(jnp.sum(totals) > 0, jnp.sum(totals), 1.0),
                1.0 / len(a.backgrounds),
            )
            b = sum(histograms[(ch.name, n)][0] for n in a.backgrounds)
            deficit = jnp.clip(b_min - b, 0.0)  # per bin
            for j, n in enumerate(a.backgrounds):
                sets = {n}
                for s in a.shape_systematics:
                    if s.sample == n:
                        sets |= {s.up, s.down}
                for k in sets:
                    sumw, sumw2 = out[(ch.name, k)]
                    out[(ch.name, k)] = (sumw + share[j] * deficit, sumw2)
        return out

    def model(self, histograms) -> Model:
        """The HistFactory model with these histograms (``{(channel, event set): (sumw,
        sumw2)}``) as templates: :meth:`Layout.fill` of the template (no recompilation)."""
        return self.layout.fill(self.template, histograms)

    def workspace(self, histograms, observed=None) -> dict:
        """The pyhf workspace (plain floats): observations are ``observed`` (``{channel:
        counts}``, e.g. the hard histograms of the data sample) if given, otherwise the
        background-only Asimov data (normfactors at their nominal values)."""
        hists = {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in histograms.items()}
        model = self.model(hists)
        asimov = np.asarray(model.expected_actualdata(L.nominal_pars(model, 0.0)))
        obs = {c: asimov[sl].tolist() for c, sl in model.config.channel_slices.items()}
        if observed is not None:
            obs = {c: np.asarray(observed[c], dtype=np.float64).tolist() for c in obs}
        lists = {k: (a.tolist(), b.tolist()) for k, (a, b) in hists.items()}
        return self.analysis.workspace(lists, obs)

    # ------------------------------------------------------------------ losses
    def _yields(self, params, events, names, slope):
        """Soft yields: sum of event weight x selection x score (the score is 1 without a
        neural observable)."""
        total = 0.0
        for n in names:
            w = self.event_weights(params, events[n], slope)
            if params.observable is not None:
                score = params.observable(events[n].x)
                dtype = np.promote_types(w.dtype, score.dtype)  # float32 network, float64 weights
                w = w.astype(dtype) * score.astype(dtype)
            total = total + jnp.sum(w)
        return total

    def selected_fraction(self, params, events, slope=None):
        """Fraction of the expected events (all nominal samples) that pass the selection:
        relaxed with ``slope``, hard when ``None``. 1 without a selection."""
        names = self.analysis.samples
        kept = sum(jnp.sum(self.event_weights(params, events[n], slope)) for n in names)
        total = sum(jnp.sum(jnp.asarray(events[n].w)) for n in names)
        return kept / total

    def loss_terms(self, params: Params, events, terms, bandwidth, slope=None) -> dict:
        """Values of the requested loss terms on a batch (soft histograms, relaxed cuts):
        :meth:`terms_from_sums` of :meth:`loss_sums`."""
        return self.terms_from_sums(self.loss_sums(params, events, terms, bandwidth, slope), terms)

    def loss_sums(self, params: Params, events, terms, bandwidth, slope=None) -> dict:
        """The sums over ``events`` that the loss ``terms`` depend on, additive over events
        (so chunks or devices can be summed, see :mod:`diffhep.analysis.chunked`): ``histograms``
        (soft, per channel and event set), ``bce`` (per event set: sum of weight x
        cross-entropy and sum of weights), ``yields`` (soft yields per sample), ``skim``
        (selected and total weight of the nominal samples)."""
        a = self.analysis
        out = {}
        unknown = [t for t in terms if t not in LOSS_TERMS and parse_nuisance_term(t) is None]
        if unknown:
            raise ValueError(
                f"unknown loss term {unknown[0]!r}; use one of {', '.join(LOSS_TERMS)}, "
                "or sigma_theta[name], pull_theta[name], impact[name]"
            )
        if any(t in LIKELIHOOD_TERMS or parse_nuisance_term(t) for t in terms):
            out["histograms"] = self.histograms(params, events, bandwidth, slope)
        nn_terms = [t for t in terms if t in NN_TERMS]
        if nn_terms:
            if params.observable is None:
                raise ValueError(
                    f"loss term {nn_terms[0]!r} needs a neural observable (a channel 'nn')"
                )
            sets = (a.signal, *a.backgrounds, *(a.variations if "bce_aug" in terms else ()))
            out["bce"] = {}
            for n in sets:
                logits = params.observable.logits(events[n].x)
                label = jnp.full_like(logits, 1.0 if n == a.signal else 0.0)
                w = self.event_weights(params, events[n], slope)
                loss = optax.sigmoid_binary_cross_entropy(logits, label)
                dtype = np.promote_types(w.dtype, loss.dtype)  # float32 network, float64 weights
                out["bce"][n] = (jnp.sum(w.astype(dtype) * loss.astype(dtype)), jnp.sum(w))
        if any(t in YIELD_TERMS for t in terms):
            out["yields"] = {
                n: self._yields(params, events, (n,), slope) for n in (a.signal, *a.backgrounds)
            }
        if "skim" in terms:
            kept = sum(jnp.sum(self.event_weights(params, events[n], slope)) for n in a.samples)
            total = sum(jnp.sum(jnp.asarray(events[n].w)) for n in a.samples)
            out["skim"] = (kept, total)
        return out

    def terms_from_sums(self, sums: dict, terms) -> dict:
        """The loss ``terms`` from the :meth:`loss_sums` of a batch (or of all events); the
        likelihood terms on the :meth:`floor_background` of its soft histograms."""
        a = self.analysis
        out = {}
        hists = sums.get("histograms")
        model = None if hists is None else self.model(self.floor_background(hists))
        shared = {}  # the CLs profile fit and the Fisher covariance, computed once

        def once(key, fn):
            if key not in shared:
                shared[key] = fn()
            return shared[key]

        for t in terms:
            nuisance = parse_nuisance_term(t)
            if nuisance is not None:
                out[t] = self._nuisance_term(model, nuisance, once)
            elif t in ("cls", "log_cls"):
                f = L.expected_cls if t == "cls" else L.log_expected_cls
                out[t] = f(model, profiled=once("fit", lambda: L.profile_fit(model)))
            elif t in ("z0", "inv_z0"):
                z = L.discovery_significance(model)
                out[t] = -z if t == "z0" else 1.0 / z
            elif t == "sigma_mu":
                out[t] = L.sigma_mu(model, cov=once("cov", lambda: L.fisher_covariance(model)))
            elif t in NN_TERMS:  # class-balanced: each class's weights normalised to one
                bkg = a.backgrounds + (a.variations if t == "bce_aug" else ())
                sig_loss, sig_w = sums["bce"][a.signal]
                bkg_loss = sum(sums["bce"][n][0] for n in bkg)
                bkg_w = sum(sums["bce"][n][1] for n in bkg)
                out[t] = sig_loss / sig_w + bkg_loss / bkg_w
            elif t in YIELD_TERMS:
                s = sums["yields"][a.signal]
                b = sum(sums["yields"][n] for n in a.backgrounds)
                if t == "s_sqrt_sb":
                    out[t] = L.inverse_s_over_sqrt_s_plus_b(s, b)
                elif t == "b_over_s2":
                    out[t] = L.b_over_s2(s, b)
                else:
                    out[t] = L.inverse_asimov_significance(s, b, self.z_asimov_rel_uncertainty)
            elif t == "skim":
                f = sums["skim"][0] / sums["skim"][1]
                out[t] = f if self.skim_target is None else jax.nn.relu(f - self.skim_target)
        return out

    def _nuisance_term(self, model, term, once):
        """The loss value of a :class:`~diffhep.analysis.nuisance.NuisanceTerm`."""
        names = list(model.config.par_names)
        if term.name not in names:
            raise ValueError(
                f"loss term {term.kind!r}: unknown parameter {term.name!r}; the model has "
                f"{', '.join(names)}"
            )
        k = names.index(term.name)
        if term.kind == "pull_theta":
            x = L.nuisance_pull(model, k, profiled=once("fit", lambda: L.profile_fit(model)))
            return (x - (term.target or 0.0)) ** 2
        cov = once("cov", lambda: L.fisher_covariance(model))
        if term.kind == "sigma_theta":
            x = L.sigma_theta(model, k, cov=cov)
        else:
            x = jnp.abs(L.impact(model, k, cov=cov))
        return x if term.target is None else (x - term.target) ** 2

    # ------------------------------------------------------------------ metrics
    def metrics(self, params: Params, events) -> dict:
        """Exact metrics with hard histograms: expected CLs (full hypotest, qtilde, on the
        background-only Asimov data), expected Z0, sigma_mu and the uncertainty of every
        nuisance parameter (inverse Fisher information), the per-sample yields and
        :meth:`bin_yields`."""
        hists = self.histograms(params, events)
        model = self.model(hists)
        data = model.expected_data(L.nominal_pars(model, 0.0))
        res = hypotest(1.0, model, data)
        cov = L.fisher_covariance(model)
        unc = jnp.sqrt(jnp.clip(jnp.diag(cov), 0.0))
        out = {
            "expected_cls": res.cls_exp[2],
            "cls_converged": res.converged,
            "z0": L.discovery_significance(model),
            "sigma_mu": unc[model.config.poi_index],
            "uncertainties": unc,
            "n_clipped": res.n_clipped,
        }
        out["yields"] = {
            n: sum(jnp.sum(hists[(c.name, n)][0]) for c in self.analysis.channels)
            for n in self.analysis.event_sets
        }
        out["selected_fraction"] = self.selected_fraction(params, events)
        out["bin_yields"] = self.bin_yields(hists)
        return out

    def bin_yields(self, hists) -> dict:
        """``{channel: (signal, total nominal background)}`` per bin of ``hists`` (for
        :func:`diffhep.weights.weighting.bins_without_background`)."""
        a = self.analysis
        out = {}
        for c in a.channels:
            background = sum(hists[(c.name, n)][0] for n in a.backgrounds)
            out[c.name] = (hists[(c.name, a.signal)][0], background)
        return out
