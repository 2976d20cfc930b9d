"""The ``analysis`` section of a config: samples and their training weights, systematic
variations (shape, norm), normalisation factors, channels, and their cross-checks."""

# ruff: noqa: RUF012 (pydantic copies mutable defaults; ruff cannot see that _Strict is a model)

from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from .base import _Strict

Strategy = Literal["signed", "abs", "drop-negative", "ignore", "learned"]


class WeightsConfig(_Strict):
    """A sample's training weights with options: ``joint`` trains the ``learned`` weight
    networks together with the analysis (:mod:`diffhep.weights.joint`)."""

    strategy: Strategy = "signed"
    joint: bool = False
    hidden: list[Annotated[int, Field(ge=1)]] = [32, 32]  # the joint weight networks
    learning_rate: float = Field(3e-3, gt=0)  # of the joint weight networks (Adam)

    @model_validator(mode="after")
    def _joint(self):
        if self.joint and self.strategy != "learned":
            raise ValueError(f"joint: true needs strategy: learned (not {self.strategy!r})")
        return self


class SampleConfig(_Strict):
    name: str
    # "signal": a signal hypothesis (several allowed: mass points; analysis.signal chooses);
    # "data": observed events, read from files -> the workspace's observations
    role: Literal["signal", "background", "data"]
    yield_: float | None = Field(None, alias="yield", gt=0)
    scale: float = 1.0
    # training weights (training split only; see diffhep.weights.weighting), or with options
    weights: Annotated[
        Annotated[Strategy, Tag("<strategy>")] | Annotated[WeightsConfig, Tag("<options>")],
        Discriminator(lambda v: "<options>" if isinstance(v, dict | BaseModel) else "<strategy>"),
    ] = "signed"
    # ntuple samples (cabinetry's words): files (globs), tree, weight and filter expressions
    files: list[str] | None = None
    tree: str | None = None
    weight: str = "1"
    filter: str | None = None

    @property
    def strategy(self) -> str:
        """The training weight strategy."""
        return self.weights if isinstance(self.weights, str) else self.weights.strategy

    @property
    def joint(self) -> bool:
        """Whether the learned weights train jointly with the analysis."""
        return not isinstance(self.weights, str) and self.weights.joint


class VariationConfig(_Strict):
    """A systematic variation of an ntuple sample: what differs from the nominal sample.

    ``columns`` renames branches in every expression of the sample (features, filter, weight):
    ``{Jet_pt: Jet_pt_jesTotalUp}`` re-evaluates the selection and the observable on the
    varied jets (a feature-level variation; events migrate in and out of the selection).
    ``symmetrize`` (on ``down`` only, cabinetry's word): the down template is
    ``2 x nominal - up``; the other keys must then be absent.
    """

    files: list[str] | None = None
    tree: str | None = None
    weight: str | None = None
    filter: str | None = None
    columns: dict[str, str] = {}
    symmetrize: bool = False

    def is_nominal(self) -> bool:
        """Nothing differs from the nominal sample (``down: {}``: a one-sided variation)."""
        return self == VariationConfig()


class ShapeSystematicConfig(_Strict):
    """A shape systematic (histosys) of one sample (``sample``) or several (``samples``: one
    parameter, a variation event set per sample). ``down`` omitted or ``{}``: one-sided (the
    down template is the nominal); ``down: {symmetrize: true}``: mirrored from ``up``."""

    name: str
    sample: str | None = None
    samples: list[str] | None = None
    up: str | VariationConfig  # an event set, or a variation of an ntuple sample
    down: str | VariationConfig | None = None

    @model_validator(mode="after")
    def _targets(self):
        if (self.sample is None) == (self.samples is None):
            raise ValueError(
                f"shape systematic {self.name!r}: give either 'sample' or 'samples' (a list)"
            )
        if self.samples is not None and not self.samples:
            raise ValueError(f"shape systematic {self.name!r}: 'samples' is empty")
        if self.samples is not None and len(self.samples) > 1:
            named = [d for d in ("up", "down") if isinstance(getattr(self, d), str)]
            if named:
                raise ValueError(
                    f"shape systematic {self.name!r}: {named[0]} names one event set, which "
                    "cannot vary several samples; give it as a variation ({weight: ...}, "
                    "{columns: ...} or {files: [...]})"
                )
        if isinstance(self.up, VariationConfig) and self.up.symmetrize:
            raise ValueError(
                f"shape systematic {self.name!r}: symmetrize belongs to 'down' (mirrored from up)"
            )
        d = self.down
        if (
            isinstance(d, VariationConfig)
            and d.symmetrize
            and d != VariationConfig(symmetrize=True)
        ):
            raise ValueError(
                f"shape systematic {self.name!r}: a symmetrised down has no other keys"
            )
        return self

    @property
    def targets(self) -> list[str]:
        """The samples the systematic varies."""
        return list(self.samples) if self.samples is not None else [self.sample]

    @property
    def one_sided(self) -> bool:
        return self.down is None or (
            isinstance(self.down, VariationConfig) and self.down.is_nominal()
        )

    @property
    def symmetrize(self) -> bool:
        return isinstance(self.down, VariationConfig) and self.down.symmetrize

    def event_sets(self, sample: str | None = None) -> tuple[str, str]:
        """Names of the up and down event sets of ``sample`` (default: the only one):
        ``<sample>_<name>_up`` for variations, the sample itself for a one-sided down, and
        ``<sample>_<name>_down`` (a derived histogram) for a symmetrised one."""
        sample = sample if sample is not None else self.targets[0]
        up = self.up if isinstance(self.up, str) else f"{sample}_{self.name}_up"
        if self.one_sided:
            down = sample
        elif isinstance(self.down, str):
            down = self.down
        else:
            down = f"{sample}_{self.name}_down"
        return up, down

    def variations(self, sample: str):
        """``((variation, event set), ...)`` of ``sample`` that need events (not the nominal,
        not a derived symmetrised histogram)."""
        up, down = self.event_sets(sample)
        out = [(self.up, up)]
        if not (self.one_sided or self.symmetrize):
            out.append((self.down, down))
        return tuple(out)


class NormSystematicConfig(_Strict):
    name: str
    samples: list[str]
    lo: float = Field(gt=0)
    hi: float = Field(gt=0)


class NormFactorConfig(_Strict):
    """A free normalisation factor (cabinetry's NormFactors: Name, Samples, Nominal, Bounds;
    ``fixed`` as cabinetry's General.Fixed), e.g. ttbar floating in a control region."""

    name: str
    samples: list[str] = Field(min_length=1)
    nominal: float = 1.0
    bounds: tuple[float, float] = (0.0, 10.0)
    fixed: bool = False

    @model_validator(mode="after")
    def _bounds(self):
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"normfactor {self.name!r}: bounds need low < high, got {[lo, hi]}")
        if not lo <= self.nominal <= hi:
            raise ValueError(
                f"normfactor {self.name!r}: nominal {self.nominal} is outside bounds {[lo, hi]}"
            )
        return self


class ChannelConfig(_Strict):
    name: str
    bins: int = Field(ge=1)
    observable: str = "nn"  # "nn", a feature name, or "count" (one bin: the event count)
    edges: list[float] | None = None
    region: dict[str, tuple[float, float]] = {}
    # comparisons of features with numbers joined by && ("nb >= 2 && MET_pt > 20"): windows
    filter: str | None = None
    learnable_edges: bool = False

    @model_validator(mode="after")
    def _edges(self):
        if self.edges is not None and len(self.edges) != self.bins + 1:
            raise ValueError(
                f"edges has {len(self.edges)} values, expected bins + 1 = {self.bins + 1}"
            )
        if self.edges is not None:
            e = self.edges
            if not all(math.isfinite(v) for v in e):
                raise ValueError(f"edges must be finite numbers, got {e}")
            if any(b <= a for a, b in itertools.pairwise(e)):
                raise ValueError(f"edges must be strictly increasing, got {e}")
        if self.observable == "count":
            if self.bins != 1 or self.edges is not None:
                raise ValueError("a 'count' channel has bins: 1 and no edges")
        elif self.observable != "nn" and self.edges is None:
            raise ValueError("a feature observable needs explicit 'edges'")
        return self


class AnalysisConfig(_Strict):
    # no defaults taken from the demo: a config names its own samples and systematics
    samples: list[SampleConfig] = Field(min_length=1)
    # the signal sample of this run when several samples have role 'signal' (--signal NAME)
    signal: str | None = None
    shape_systematics: list[ShapeSystematicConfig] = []
    norm_systematics: list[NormSystematicConfig] = []
    normfactors: list[NormFactorConfig] = []
    mc_stat: bool = False
    channels: list[ChannelConfig] = Field(min_length=1)
    poi: str = "mu"

    @model_validator(mode="after")
    def _consistent(self):
        names = [s.name for s in self.samples]
        if len(set(names)) != len(names):
            raise ValueError(f"sample names must be unique: {names}")
        signals = [s.name for s in self.samples if s.role == "signal"]
        if not signals:
            raise ValueError("no sample has role 'signal': give the signal sample role: signal")
        if self.signal is None and len(signals) > 1:
            raise ValueError(
                f"analysis.signal: several signal samples ({', '.join(signals)}); choose the "
                f"signal of this run with analysis.signal (or diffhep train --signal NAME)"
            )
        if self.signal is not None and self.signal not in signals:
            raise ValueError(
                f"analysis.signal: {self.signal!r} is not a signal sample; use one of "
                f"{', '.join(signals)}"
            )
        data = [s.name for s in self.samples if s.role == "data"]
        if len(data) > 1:
            raise ValueError(
                f"analysis.samples: several samples with role 'data' ({', '.join(data)}); "
                "give one data sample with all its files"
            )
        mc = [n for n in names if n not in data]

        def check(where, n):
            if n not in names:
                raise ValueError(f"{where}: unknown sample {n!r} (samples: {', '.join(mc)})")
            if n in data:
                raise ValueError(f"{where}: {n!r} is the data sample; vary simulated samples")

        for i, s in enumerate(self.shape_systematics):
            for n in s.targets:
                check(f"analysis.shape_systematics[{i}] ({s.name!r})", n)
        for i, s in enumerate(self.norm_systematics):
            for n in s.samples:
                check(f"analysis.norm_systematics[{i}] ({s.name!r})", n)
        for i, f in enumerate(self.normfactors):
            for n in f.samples:
                check(f"analysis.normfactors[{i}] ({f.name!r})", n)
            if f.name == self.poi:
                raise ValueError(
                    f"analysis.normfactors[{i}]: {f.name!r} is the POI's name; rename it"
                )
        mods = [s.name for s in self.norm_systematics] + [s.name for s in self.shape_systematics]
        for i, f in enumerate(self.normfactors):
            if f.name in mods:
                raise ValueError(
                    f"analysis.normfactors[{i}]: {f.name!r} is also a systematic's name; "
                    "a normfactor needs its own parameter name"
                )
        return self

    @property
    def chosen_signal(self) -> str:
        """The signal sample of the run."""
        return self.signal or next(s.name for s in self.samples if s.role == "signal")

    @property
    def used_samples(self) -> list[SampleConfig]:
        """The simulated samples of the run: the chosen signal and the backgrounds."""
        sig = self.chosen_signal
        return [s for s in self.samples if s.role == "background" or s.name == sig]

    @property
    def data_sample(self) -> SampleConfig | None:
        """The sample with role ``data`` (observed events), if any."""
        return next((s for s in self.samples if s.role == "data"), None)
