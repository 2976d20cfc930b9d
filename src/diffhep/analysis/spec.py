"""The analysis: which samples, systematics and channels make up the HistFactory model.

An :class:`Analysis` is a static (hashable) description in HistFactory vocabulary. Given
per-channel histograms of every event set — nominal samples and systematic variations — it
writes the pyhf workspace of the analysis (:meth:`Analysis.workspace`). The training
pipeline builds a :class:`~diffhep.Model` from it once, with the
:class:`~diffhep.stats.layout.Layout` of the histograms in that model, and then fills the soft
histograms of every step straight into the template arrays (no JSON), so one compiled step
serves the whole training; evaluation writes the workspace with hard histograms.

Mapping onto HistFactory:

- the signal sample carries the POI normfactor;
- a :class:`ShapeSystematic` (up/down variation samples of one nominal sample) -> ``histosys``;
  one-sided when ``down`` is the nominal sample itself, symmetrised (``symmetrize``: the down
  template is ``2 x nominal - up``, cabinetry's ``Symmetrize``) when the down histogram is
  derived from the up one (:attr:`Analysis.derived`);
- a :class:`NormSystematic` (relative lo/hi factors) -> ``normsys``;
- a :class:`NormFactor` (a free normalisation, e.g. ttbar floating in a control region)
  -> ``normfactor`` with its initial value, bounds and ``fixed`` in the measurement;
- ``mc_stat`` -> one ``staterror`` per channel from the per-bin sum of squared weights
  (pyhf's convention: absolute uncertainty ``sqrt(sum w^2)`` per sample and bin).

Example:
    >>> a = Analysis(samples=("signal", "background"), signal="signal",
    ...              channels=(Channel("SR", 2),),
    ...              shape_systematics=(ShapeSystematic("shape", "background", "up", "down"),))
    >>> a.event_sets
    ('signal', 'background', 'up', 'down')
    >>> h = {("SR", n): ([1.0, 2.0], [0.1, 0.2]) for n in a.event_sets}
    >>> [s["name"] for s in a.workspace(h)["channels"][0]["samples"]]
    ['signal', 'background']
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "LOSS_TERMS",
    "NN_TERMS",
    "Analysis",
    "Channel",
    "NormFactor",
    "NormSystematic",
    "ShapeSystematic",
]


#: Names of the loss terms a config may use (``training.loss``).
LOSS_TERMS = (
    "cls",  # median expected CLs at mu = 1 (qmu_tilde), background-only Asimov
    "log_cls",  # log of it (same minimum; its gradient does not shrink with CLs)
    "z0",  # -Z0, median expected discovery significance (q0, s+b Asimov)
    "inv_z0",  # 1 / Z0
    "sigma_mu",  # POI uncertainty from the inverse Fisher information (INFERNO)
    "bce",  # binary cross-entropy on logits, signal vs nominal backgrounds
    "bce_aug",  # BCE with the systematic variations in the background class
    "s_sqrt_sb",  # (s + b) / s^2 with soft yields (sigmoid outputs as event weights)
    "z_asimov",  # 1 / Z_A with soft yields and a relative background uncertainty
    "b_over_s2",  # b / s^2 with soft yields (maximises s / sqrt(b))
    "skim",  # selected fraction of the expected events (data kept by the skim)
)
#: The terms that train the network by classification (need an ``nn`` channel).
NN_TERMS = ("bce", "bce_aug")


@dataclass(frozen=True)
class Channel:
    """A region of the analysis: the histogram of one observable for events in a window.

    Attributes:
        name: Channel name.
        bins: Number of bins of the observable.
        observable: ``"nn"`` (the trained observable's score, in [0, 1]) or a feature name.
        edges: Bin edges for a feature observable (``None``: uniform in [0, 1]).
        region: Event selection ``((feature, low, high), ...)``; hard windows on inputs.
        learnable_edges: Train the bin edges (ordered by construction) with the observable.
    """

    name: str
    bins: int
    observable: str = "nn"
    edges: tuple | None = None
    region: tuple = ()
    learnable_edges: bool = False


@dataclass(frozen=True)
class ShapeSystematic:
    """A shape uncertainty from up/down variation samples of a nominal sample (histosys).

    ``down`` equal to ``sample`` is a one-sided variation (the down template is the nominal);
    with ``symmetrize`` the down template is ``2 x nominal - up`` and ``down`` only names
    that derived histogram (no events of its own).
    """

    name: str
    sample: str
    up: str
    down: str
    symmetrize: bool = False


@dataclass(frozen=True)
class NormSystematic:
    """A normalisation uncertainty ``lo``/``hi`` (e.g. 0.9/1.1) on samples (normsys)."""

    name: str
    samples: tuple
    lo: float
    hi: float


@dataclass(frozen=True)
class NormFactor:
    """A free normalisation factor on samples (normfactor), e.g. ttbar floating.

    Attributes:
        name: Parameter name.
        samples: Samples it multiplies (in every channel).
        nominal: Initial value (and the value of background-only Asimov data).
        bounds: ``(low, high)`` of the fits.
        fixed: Held at ``nominal`` in every fit.
    """

    name: str
    samples: tuple
    nominal: float = 1.0
    bounds: tuple = (0.0, 10.0)
    fixed: bool = False


@dataclass(frozen=True)
class Analysis:
    """Samples, systematics and channels of an analysis (static and hashable).

    Attributes:
        samples: Nominal samples (signal first or not; order is kept in the workspace).
        signal: The signal sample (carries the POI).
        channels: The channels (regions).
        shape_systematics: histosys from variation samples.
        norm_systematics: normsys factors.
        normfactors: Free normalisation factors (:class:`NormFactor`).
        mc_stat: Add a staterror per channel from the sum of squared weights.
        poi: Name of the POI normfactor.
    """

    samples: tuple
    signal: str
    channels: tuple
    shape_systematics: tuple = ()
    norm_systematics: tuple = ()
    mc_stat: bool = False
    poi: str = "mu"
    measurement: str = field(default="measurement")
    normfactors: tuple = ()

    def __post_init__(self):
        if self.signal not in self.samples:
            raise ValueError(f"signal sample {self.signal!r} is not one of {self.samples}")
        for s in self.shape_systematics:
            if s.sample not in self.samples:
                raise ValueError(f"systematic {s.name!r}: unknown sample {s.sample!r}")
        for s in self.norm_systematics:
            for name in s.samples:
                if name not in self.samples:
                    raise ValueError(f"systematic {s.name!r}: unknown sample {name!r}")
        for f in self.normfactors:
            for name in f.samples:
                if name not in self.samples:
                    raise ValueError(f"normfactor {f.name!r}: unknown sample {name!r}")
            if f.name == self.poi:
                raise ValueError(f"normfactor {f.name!r} has the name of the POI")

    @property
    def backgrounds(self) -> tuple:
        return tuple(s for s in self.samples if s != self.signal)

    @property
    def variations(self) -> tuple:
        """Event sets of systematic variations (up, down, ...) in order of appearance."""
        out = []
        for s in self.shape_systematics:
            sets = (s.up,) if s.symmetrize else (s.up, s.down)
            out += [n for n in sets if n not in out and n not in self.samples]
        return tuple(out)

    @property
    def event_sets(self) -> tuple:
        """Every event set that is histogrammed: nominal samples, then variations."""
        return self.samples + self.variations

    @property
    def derived(self) -> tuple:
        """``(name, nominal sample, up event set)`` of the symmetrised down histograms:
        ``2 x nominal - up`` (computed from the histograms, no events of their own)."""
        return tuple((s.down, s.sample, s.up) for s in self.shape_systematics if s.symmetrize)

    @property
    def histogram_sets(self) -> tuple:
        """Every histogram of a channel: the event sets, then the derived ones."""
        return self.event_sets + tuple(d[0] for d in self.derived)

    def with_derived(self, histograms: dict) -> dict:
        """``histograms`` (``{(channel, event set): (sumw, sumw2)}``) plus the symmetrised
        down histograms: ``sumw = 2 nominal - up``, ``sumw2`` that of the up variation."""
        out = dict(histograms)
        for ch in self.channels:
            for name, sample, up in self.derived:
                nom, var = histograms[(ch.name, sample)], histograms[(ch.name, up)]
                out[(ch.name, name)] = (_mirror(nom[0], var[0]), var[1])
        return out

    def workspace(self, histograms, observations=None) -> dict:
        """The pyhf workspace of the analysis.

        Args:
            histograms: ``{(channel, event set): (sumw, sumw2)}`` for every channel and
                event set; arrays may be JAX arrays (traced) or lists.
            observations: ``{channel: data}`` (default: zeros; replace them with the
                background-only Asimov data for expected results).
        """
        if any((ch.name, d[0]) not in histograms for ch in self.channels for d in self.derived):
            histograms = self.with_derived(histograms)
        channels = []
        for ch in self.channels:
            samples = []
            for name in self.samples:
                sumw, sumw2 = histograms[(ch.name, name)]
                mods = []
                if name == self.signal:
                    mods.append({"name": self.poi, "type": "normfactor", "data": None})
                for f in self.normfactors:
                    if name in f.samples:
                        mods.append({"name": f.name, "type": "normfactor", "data": None})
                for s in self.shape_systematics:
                    if s.sample == name:
                        lo = histograms[(ch.name, s.down)][0]
                        hi = histograms[(ch.name, s.up)][0]
                        mods.append(
                            {
                                "name": s.name,
                                "type": "histosys",
                                "data": {"lo_data": lo, "hi_data": hi},
                            }
                        )
                for s in self.norm_systematics:
                    if name in s.samples:
                        mods.append(
                            {"name": s.name, "type": "normsys", "data": {"lo": s.lo, "hi": s.hi}}
                        )
                if self.mc_stat:
                    mods.append(
                        {"name": f"staterror_{ch.name}", "type": "staterror", "data": _sqrt(sumw2)}
                    )
                samples.append({"name": name, "data": sumw, "modifiers": mods})
            channels.append({"name": ch.name, "samples": samples})
        obs = observations or {}
        return {
            "channels": channels,
            "observations": [
                {"name": ch.name, "data": obs.get(ch.name, [0.0] * ch.bins)} for ch in self.channels
            ],
            "measurements": [
                {
                    "name": self.measurement,
                    "config": {"poi": self.poi, "parameters": self.parameters},
                }
            ],
            "version": "1.0.0",
        }

    @property
    def parameters(self) -> list:
        """The measurement's parameter configuration: every normfactor's init, bounds, fixed."""
        return [
            {
                "name": f.name,
                "inits": [float(f.nominal)],
                "bounds": [[float(f.bounds[0]), float(f.bounds[1])]],
                **({"fixed": True} if f.fixed else {}),
            }
            for f in self.normfactors
        ]


def _mirror(nominal, up):
    if isinstance(nominal, list | tuple):
        return [2.0 * float(n) - float(u) for n, u in zip(nominal, up, strict=True)]
    return 2.0 * nominal - up


def _sqrt(x):
    if isinstance(x, list | tuple):
        return [float(v) ** 0.5 for v in x]
    import jax.numpy as jnp

    x = jnp.asarray(x)
    pos = x > 0  # safe at 0: an empty bin gives a zero (not NaN) gradient
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)
