"""Training configuration: a YAML file validated with a schema (pydantic).

Every error names the file, the field path (``training.optimizer.learning_rate``) and a fix.
``--set key=value`` overrides are applied to the raw document before validation, with the
value parsed as YAML (``--set training.epochs=3``, ``--set observable.hidden=[64,64]``).

Example:
    >>> cfg = load_config(text='''
    ... data: {generator: blobs}
    ... analysis:
    ...   samples: [{name: signal, role: signal}, {name: background, role: background}]
    ...   channels: [{name: SR, bins: 4}]
    ... ''', overrides=["analysis.channels.0.bins=5"])
    >>> cfg.training.loss, cfg.analysis.channels[0].bins, cfg.data.n_per_blob
    ('cls', 5, 10000)
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import DiffhepError

__all__ = ["Config", "ConfigError", "apply_overrides", "load_config"]


class ConfigError(DiffhepError):
    """An invalid configuration file or override."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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


class SplitConfig(_Strict):
    train: float = Field(0.6, gt=0, lt=1)
    validation: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.train + self.validation + self.test - 1.0) > 1e-9:
            raise ValueError("train + validation + test must be 1")
        return self


GENERATOR_EVENTS = 10_000  # data.n_per_blob of a generator that does not give it


class CollectionConfig(_Strict):
    """Leading ``n`` objects of a jagged collection (as stored), zero-padded, with a mask."""

    name: str
    branches: list[str] = Field(min_length=1)  # per-object branches, e.g. [Jet_pt, Jet_eta]
    n: int = Field(ge=1)


class DataConfig(_Strict):
    generator: Literal["blobs", "cuts_1d", "cuts_2d", "inferno", "negweight_2d"] | None = None
    # events per event set of a generator (GENERATOR_EVENTS if a generator is given)
    n_per_blob: int | None = Field(None, ge=10)
    files: dict[str, str] | None = None  # event set -> .npz with 'x' (n, f) and optional 'w'
    features: list[str] | None = None  # names; for ntuple samples branch names or expressions
    split: SplitConfig = SplitConfig()
    # ntuple samples (analysis.samples[*].files): defaults and jagged collections
    tree: str | None = None
    step_size: int = Field(100_000, ge=1)
    base_dir: str | None = None  # relative sample files start here (default: working dir)
    constants: dict[str, float] = {}  # names in expressions with fixed values (e.g. lumi)
    collections: list[CollectionConfig] = []

    @model_validator(mode="after")
    def _source(self):
        if self.files:
            self.generator = None
        if self.generator is not None and self.n_per_blob is None:
            self.n_per_blob = GENERATOR_EVENTS
        return self


Width = Annotated[int, Field(ge=1)]  # of a hidden layer


class ObservableConfig(_Strict):
    hidden: list[Width] = [64, 64]  # a small network; the neos paper's is [1024, 1024]
    activation: Literal["relu", "tanh", "gelu", "silu", "elu"] = "relu"
    dtype: Literal["float32", "float64"] = "float32"
    # "deepsets": per-object MLP on data.collections, pooled, then `hidden` (event level)
    kind: Literal["mlp", "deepsets"] = "mlp"
    object_hidden: list[Width] = [32, 32]
    latent: int = Field(16, ge=1)
    pooling: Literal["sum", "mean"] = "sum"


class HistogramConfig(_Strict):
    bandwidth: float = Field(0.3, gt=0)  # relative to the mean bin width
    bandwidth_final: float | None = Field(None, gt=0)  # linear annealing to this value


class CutConfig(_Strict):
    feature: str
    direction: Literal[">", "<", "window"] = ">"
    init: float | tuple[float, float] | None = None  # None: a data quantile
    trainable: bool = True
    relaxation: Literal["sigmoid", "erf", "straight_through"] = "sigmoid"

    @model_validator(mode="after")
    def _init(self):
        if self.init is None:
            return self
        if self.direction == "window":
            if not isinstance(self.init, tuple):
                raise ValueError("a window cut needs init: [a, b]")
            if not self.init[0] < self.init[1]:
                raise ValueError(f"window init needs a < b, got {list(self.init)}")
        elif isinstance(self.init, tuple):
            raise ValueError(f"a '{self.direction}' cut needs one init value")
        return self


class SelectionConfig(_Strict):
    cuts: list[CutConfig] = []
    slope: float = Field(5.0, gt=0)  # sigmoid slope, in units of 1 / (feature spread)
    slope_final: float | None = Field(None, gt=0)  # geometric annealing to this slope
    skim_target: float | None = Field(None, gt=0, lt=1)  # 'skim' term: excess over this
    learning_rate: float = Field(0.05, gt=0)  # of the thresholds (in feature units)

    def specs(self):
        from ..analysis.cuts import CutSpec

        return [
            CutSpec(c.feature, c.direction, c.init, c.trainable, c.relaxation) for c in self.cuts
        ]


class OptimizerConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)


class NuisanceTermConfig(_Strict):
    """A loss term on a named parameter (``sigma_theta``, ``pull_theta``, ``impact``: see
    :mod:`diffhep.analysis.nuisance`); ``target``: the loss is ``(x - target)^2``."""

    name: str = Field(min_length=1)
    weight: float = 1.0
    target: float | None = None


def _kind(tags: dict):
    """A callable discriminator: the union member by the raw value's Python type, so an
    error names the member's fields (``training.loss.sigma_theta.name``), not every member's
    (the tags, ``<...>``, are dropped from the messages' paths)."""

    def pick(v):
        for types, tag in tags.items():
            if isinstance(v, types):
                return tag
        return next(iter(tags.values()))

    return Discriminator(pick)


TermWeight = Annotated[
    Annotated[float, Tag("<weight>")]
    | Annotated[NuisanceTermConfig, Tag("<parameter>")]
    | Annotated[list[NuisanceTermConfig], Tag("<parameters>")],
    _kind({(int, float): "<weight>", (list,): "<parameters>", (dict, BaseModel): "<parameter>"}),
]


def _flat_terms(terms: dict) -> dict[str, float]:
    """``{term: weight}`` with each nuisance term under its key (``sigma_theta[gamma]``)."""
    from ..analysis.nuisance import NuisanceTerm

    out = {}
    for t, v in terms.items():
        if isinstance(v, int | float):
            out[t] = float(v)
            continue
        for n in v if isinstance(v, list) else [v]:
            key = NuisanceTerm(t, n.name, n.target).key
            out[key] = out.get(key, 0.0) + n.weight
    return out


def _check_terms(terms: dict) -> None:
    from ..analysis.nuisance import NUISANCE_TERMS, parse
    from ..analysis.spec import LOSS_TERMS

    for t, v in terms.items():
        if t in NUISANCE_TERMS:
            if isinstance(v, int | float):
                raise ValueError(
                    f"loss term {t!r} needs a parameter: {t}: {{name: <parameter>, weight: "
                    f"{v}}} (optionally target: 1.0; or a list of them)"
                )
        elif t in LOSS_TERMS or parse(t) is not None:
            if not isinstance(v, int | float):
                raise ValueError(f"loss term {t!r} takes a weight (a number), not {v!r}")
        else:
            raise ValueError(
                f"unknown loss term {t!r}; use one of {', '.join(LOSS_TERMS + NUISANCE_TERMS)}"
            )


class LossPhase(_Strict):
    terms: dict[str, TermWeight]
    epochs: int | None = Field(None, ge=1)  # None: until the end

    @field_validator("terms")
    @classmethod
    def _known(cls, v):
        _check_terms(v)
        return v


class TrainingConfig(_Strict):
    loss: Annotated[
        Annotated[str, Tag("<name>")]
        | Annotated[dict[str, TermWeight], Tag("<terms>")]
        | Annotated[list[LossPhase], Tag("<phases>")],
        _kind({(dict,): "<terms>", (list,): "<phases>", (str,): "<name>"}),
    ] = "cls"
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(2000, ge=1)  # events per event set and step
    optimizer: OptimizerConfig = OptimizerConfig()
    patience: int | None = Field(None, ge=1)  # early stopping (epochs without improvement)
    select_on: Literal["expected_cls", "z0", "sigma_mu", "loss"] = "expected_cls"
    z_asimov_rel_uncertainty: float = Field(0.1, gt=0)
    init_from: str | None = None  # a run directory: start from its observable and binnings
    freeze: list[Literal["observable", "binnings", "selection"]] = []  # not trained
    # data-parallel training: split each batch's events over this many devices ("all": every
    # device JAX sees); None: the default device, no sharding
    devices: Annotated[int, Field(ge=1)] | Literal["all"] | None = None
    per_device_batch: int | None = Field(None, ge=1)  # overrides batch_size (x devices)
    chunk_size: int | None = Field(None, ge=1)  # exact gradient of a batch in event chunks

    @field_validator("loss")
    @classmethod
    def _terms(cls, v):
        if isinstance(v, str):
            _check_terms({v: 1.0})
        elif isinstance(v, dict):
            _check_terms(v)
        return v

    def phases(self) -> list[LossPhase]:
        """The loss phases, each with flat ``{term key: weight}`` terms (a nuisance term under
        its key, e.g. ``sigma_theta[gamma;target=1.0]``)."""
        if isinstance(self.loss, str):
            return [LossPhase(terms={self.loss: 1.0})]
        if isinstance(self.loss, dict):
            return [LossPhase(terms=_flat_terms(self.loss))]
        return [LossPhase(terms=_flat_terms(p.terms), epochs=p.epochs) for p in self.loss]

    def nuisance_terms(self) -> list[tuple[str, str, str]]:
        """``(YAML path, kind, parameter name)`` of every nuisance-parameter loss term."""
        from ..analysis.nuisance import NUISANCE_TERMS

        if isinstance(self.loss, str):
            return []
        if isinstance(self.loss, dict):
            phases = [("training.loss", self.loss)]
        else:
            phases = [(f"training.loss[{i}].terms", p.terms) for i, p in enumerate(self.loss)]
        out = []
        for where, terms in phases:
            for t, v in terms.items():
                if t not in NUISANCE_TERMS:
                    continue
                items = v if isinstance(v, list) else [v]
                for i, n in enumerate(items):
                    at = f"{where}.{t}" + (f"[{i}]" if isinstance(v, list) else "")
                    out.append((f"{at}.name", t, n.name))
        return out


class ReportConfig(_Strict):
    style: Literal["plain", "ATLAS", "CMS", "LHCb"] = "plain"  # plots (mplhep style)
    log_y: bool = False  # histograms on a logarithmic y axis
    # the signal also drawn unstacked x this factor ("auto": a power of ten if it is small)
    signal_overlay: Annotated[float, Field(gt=0)] | Literal["auto"] | None = "auto"
    # pulls, ranking and pre-/post-fit yields of the trained analysis (diagnostics.json)
    diagnostics: bool = True


class SearchParamConfig(_Strict):
    """One parameter of a black-box search (``diffhep optimize``): a config path and its
    range (``low``/``high``, optionally ``log`` and ``int``) or its ``choices``."""

    name: str  # a dotted config path, as for --set (selection.cuts.0.init)
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = Field(False, alias="int")
    choices: list[str | float | bool] | None = None
    steps: int | None = Field(None, ge=2)  # grid points of the `grid` method

    @model_validator(mode="after")
    def _range(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, got {self.low}, {self.high}")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"an int range needs integer bounds, got {self.low}, {self.high}")
        return self


class SearchConfig(_Strict):
    """What ``diffhep optimize`` searches (``diffhep train`` ignores this section)."""

    params: list[SearchParamConfig] = []
    # the exact validation metric minimised (expected_cls, sigma_mu) or maximised (z0);
    # None: training.select_on (expected_cls if that is 'loss')
    objective: Literal["expected_cls", "z0", "sigma_mu"] | None = None
    train: bool = True  # False: evaluate the config's cuts and edges as given, no training

    @model_validator(mode="after")
    def _unique(self):
        names = [p.name for p in self.params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"parameter(s) {', '.join(dup)} given twice")
        return self


class Config(_Strict):
    seed: int = 0
    data: DataConfig = DataConfig()
    analysis: AnalysisConfig
    observable: ObservableConfig = ObservableConfig()
    histogram: HistogramConfig = HistogramConfig()
    selection: SelectionConfig = SelectionConfig()
    training: TrainingConfig = TrainingConfig()
    report: ReportConfig = ReportConfig()
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _data_source(self):
        d, samples = self.data, self.analysis.samples
        ntuples = [s.name for s in samples if s.files is not None]
        if ntuples:
            missing = [s.name for s in samples if s.files is None]
            if missing:
                raise ValueError(f"sample(s) {', '.join(missing)} need 'files' (like the others)")
            if d.files:
                raise ValueError("give either data.files (.npz event sets) or sample files")
            d.generator = None
            if not d.features and not d.collections:
                raise ValueError("ntuple samples need data.features (branches or expressions)")
        elif d.generator is None and not d.files:
            raise ValueError("give a data 'generator', 'files', or samples with 'files'")
        for i, s in enumerate(samples):
            if s.role == "data" and s.files is None:
                raise ValueError(
                    f"analysis.samples[{i}] ({s.name!r}): a 'data' sample is read from files; "
                    "give its files"
                )
        for i, s in enumerate(self.analysis.shape_systematics):
            dn = s.down
            varied = isinstance(s.up, VariationConfig) or (
                isinstance(dn, VariationConfig) and not (dn.is_nominal() or dn.symmetrize)
            )
            if varied and any(n not in ntuples for n in s.targets):
                raise ValueError(
                    f"analysis.shape_systematics[{i}] ({s.name!r}): up/down variations "
                    "({weight: ...}, {columns: ...}, {files: ...}) need an ntuple sample (files); "
                    "give event-set names otherwise"
                )
        _check_expressions(self)
        if self.observable.kind == "deepsets" and not d.collections:
            raise ValueError("observable.kind 'deepsets' needs data.collections")
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML (every key; a generator's keys only if one is used)."""
        doc = self.model_dump(mode="json", by_alias=True)
        if self.data.generator is None:  # not 'generator: null, n_per_blob: null' in a dump
            del doc["data"]["generator"], doc["data"]["n_per_blob"]
        return yaml.safe_dump(doc, sort_keys=False)


def _check_expressions(cfg: Config) -> None:
    """Parse every expression of the ntuple samples (syntax and grammar errors name the field)."""
    from ..io.expressions import Expression, ExpressionError

    texts = [(f"data.features[{i}]", t) for i, t in enumerate(cfg.data.features or ())]
    for i, s in enumerate(cfg.analysis.samples):
        if s.files is not None:
            texts += [(f"analysis.samples[{i}].weight", s.weight)]
            texts += [(f"analysis.samples[{i}].filter", s.filter)]
    for i, s in enumerate(cfg.analysis.shape_systematics):
        for d in ("up", "down"):
            v = getattr(s, d)
            if isinstance(v, VariationConfig):
                texts += [(f"analysis.shape_systematics[{i}].{d}.{k}", getattr(v, k))
                          for k in ("weight", "filter")]  # fmt: skip
                for old, new in v.columns.items():
                    if not (old.isidentifier() and new.isidentifier()):
                        raise ValueError(
                            f"analysis.shape_systematics[{i}].{d}.columns: {old!r}: {new!r} "
                            "must map a branch name to a branch name"
                        )
    texts += [(f"analysis.channels[{i}].filter", c.filter)
              for i, c in enumerate(cfg.analysis.channels)]  # fmt: skip
    for where, text in texts:
        if text is not None:
            try:
                Expression(text)
            except ExpressionError as exc:
                raise ValueError(f"{where}: {exc.message}") from None


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
