"""The differentiable analysis: observable -> histograms -> likelihood -> loss and metrics.

This module is the only place that wires the pieces together:

    events --observable--> scores --(soft|hard) histograms--> Analysis.workspace
           --Model.with_channels--> HistFactory model --losses--> scalar

:class:`Pipeline` is static (the analysis, the feature names, the loss terms) and holds the
compiled-once template :class:`~diffhep.Model`; the trainable state is a :class:`Params`
pytree (the observable and the bin edges of every channel). Events are passed as a dict
``{event set: Events}`` whose weights are already scaled to the expected yields.

Example:
    >>> import jax, numpy as np
    >>> jax.config.update("jax_enable_x64", True)
    >>> from diffhep.analysis import Analysis, Channel
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
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import losses as L
from .analysis import Analysis
from .histograms import Binning, hard_histogram, relative_bandwidth, soft_histogram
from .hypotest import hypotest
from .model import Model
from .observables import MLPObservable

__all__ = ["LOSS_TERMS", "METRICS", "Events", "Params", "Pipeline"]

#: Loss terms a config can combine (each is minimised).
LOSS_TERMS = (
    "cls",  # median expected CLs at mu = 1 (qmu_tilde), background-only Asimov
    "z0",  # -Z0, median expected discovery significance (q0, s+b Asimov)
    "inv_z0",  # 1 / Z0
    "sigma_mu",  # POI uncertainty from the inverse Fisher information (INFERNO)
    "bce",  # binary cross-entropy on logits, signal vs nominal backgrounds
    "bce_aug",  # BCE with the systematic variations in the background class
    "s_sqrt_sb",  # (s + b) / s^2 with soft yields (sigmoid outputs as event weights)
    "z_asimov",  # 1 / Z_A with soft yields and a relative background uncertainty
)
#: Metrics evaluated with hard histograms and exact fits.
METRICS = ("expected_cls", "z0", "sigma_mu")


class Events(NamedTuple):
    """Events of one event set: features ``(n, f)`` and weights ``(n,)`` (expected yields)."""

    x: jax.Array
    w: jax.Array


class Params(eqx.Module):
    """Trainable state: the observable and the binning of each channel."""

    observable: MLPObservable
    binnings: tuple


class Pipeline(eqx.Module):
    """Static analysis wiring plus the template model (built once)."""

    analysis: Analysis = eqx.field(static=True)
    features: tuple = eqx.field(static=True)
    template: Model
    z_asimov_rel_uncertainty: float = eqx.field(static=True, default=0.1)

    def __init__(self, analysis: Analysis, features, *, z_asimov_rel_uncertainty=0.1):
        self.analysis = analysis
        self.features = tuple(features)
        for ch in analysis.channels:
            for f, *_ in ch.region:
                self._feature(f, f"channel {ch.name!r} region")
            if ch.observable != "nn":
                self._feature(ch.observable, f"channel {ch.name!r} observable")
        ones = {
            (ch.name, n): ([1.0] * ch.bins, [1.0] * ch.bins)
            for ch in analysis.channels
            for n in analysis.event_sets
        }
        self.template = Model.from_spec(analysis.workspace(ones), poi_name=analysis.poi)
        self.z_asimov_rel_uncertainty = float(z_asimov_rel_uncertainty)

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
    ) -> Params:
        """An untrained observable standardised on the nominal samples, and the binnings."""
        xs = np.concatenate([np.asarray(events[n].x) for n in self.analysis.samples])
        obs = MLPObservable.create(xs, hidden, key=key, activation=activation, dtype=dtype)
        binnings = []
        for ch in self.analysis.channels:
            t = ch.learnable_edges
            b = (
                Binning.from_edges(ch.edges, trainable=t)
                if ch.edges
                else Binning.uniform(ch.bins, 0.0, 1.0, trainable=t)
            )
            if b.nbins != ch.bins:
                raise ValueError(f"channel {ch.name!r}: {b.nbins + 1} edges for {ch.bins} bins")
            binnings.append(b)
        return Params(obs, tuple(binnings))

    # ------------------------------------------------------------------ histograms
    def histograms(self, params: Params, events: Mapping[str, Events], bandwidth=None) -> dict:
        """``{(channel, event set): (sumw, sumw2)}``; soft (bKDE) when ``bandwidth`` (relative
        to the mean bin width) is given, hard otherwise."""
        needs_nn = any(ch.observable == "nn" for ch in self.analysis.channels)
        out = {}
        for name in self.analysis.event_sets:
            ev = events[name]
            score = params.observable(ev.x) if needs_nn else None
            for ch, binning in zip(self.analysis.channels, params.binnings, strict=True):
                w = jnp.asarray(ev.w)
                for f, lo, hi in ch.region:
                    v = ev.x[:, self._feature(f)]
                    w = w * ((v >= lo) & (v < hi))
                values = score if ch.observable == "nn" else ev.x[:, self._feature(ch.observable)]
                edges = binning.edges()
                if bandwidth is None:
                    out[(ch.name, name)] = hard_histogram(values, edges, w)
                else:
                    h = relative_bandwidth(edges, bandwidth)
                    out[(ch.name, name)] = soft_histogram(values, edges, h, w)
        return out

    def model(self, histograms) -> Model:
        """The HistFactory model with these histograms as templates (no recompilation)."""
        spec = self.analysis.workspace(histograms)
        return self.template.with_channels(spec["channels"])

    def workspace(self, histograms) -> dict:
        """The pyhf workspace (plain floats) with the background-only Asimov observations."""
        hists = {
            k: (np.asarray(a).tolist(), np.asarray(b).tolist()) for k, (a, b) in histograms.items()
        }
        model = self.model(hists)
        asimov = np.asarray(model.expected_actualdata(L.nominal_pars(model, 0.0)))
        obs = {c: asimov[sl].tolist() for c, sl in model.config.channel_slices.items()}
        return self.analysis.workspace(hists, obs)

    # ------------------------------------------------------------------ losses
    def _yields(self, params, events, names):
        """Soft yields sum(w * score) over the given event sets (score as event weight)."""
        return sum(jnp.sum(events[n].w * params.observable(events[n].x)) for n in names)

    def loss_terms(self, params: Params, events, terms, bandwidth) -> dict:
        """Values of the requested loss terms on a batch (soft histograms)."""
        a = self.analysis
        out = {}
        model = None
        if any(t in ("cls", "z0", "inv_z0", "sigma_mu") for t in terms):
            model = self.model(self.histograms(params, events, bandwidth))
        for t in terms:
            if t == "cls":
                out[t] = L.expected_cls(model)
            elif t in ("z0", "inv_z0"):
                z = L.discovery_significance(model)
                out[t] = -z if t == "z0" else 1.0 / z
            elif t == "sigma_mu":
                out[t] = L.sigma_mu(model)
            elif t in ("bce", "bce_aug"):
                bkg = a.backgrounds + (a.variations if t == "bce_aug" else ())
                ls = params.observable.logits(events[a.signal].x)
                lb = jnp.concatenate([params.observable.logits(events[n].x) for n in bkg])
                wb = jnp.concatenate([jnp.asarray(events[n].w) for n in bkg])
                out[t] = L.binary_cross_entropy(ls, jnp.asarray(events[a.signal].w), lb, wb)
            elif t in ("s_sqrt_sb", "z_asimov"):
                s = self._yields(params, events, (a.signal,))
                b = self._yields(params, events, a.backgrounds)
                if t == "s_sqrt_sb":
                    out[t] = L.inverse_s_over_sqrt_s_plus_b(s, b)
                else:
                    out[t] = 1.0 / L.asimov_significance(s, b, self.z_asimov_rel_uncertainty * b)
            else:
                raise ValueError(f"unknown loss term {t!r}; use one of {', '.join(LOSS_TERMS)}")
        return out

    # ------------------------------------------------------------------ metrics
    def metrics(self, params: Params, events) -> dict:
        """Exact metrics with hard histograms: expected CLs (full hypotest, qtilde, on the
        background-only Asimov data), expected Z0, sigma_mu and the uncertainty of every
        nuisance parameter (inverse Fisher information), and the per-sample yields."""
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
        return out
