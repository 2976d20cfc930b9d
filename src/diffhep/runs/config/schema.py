"""The whole config (:class:`Config`) and its smaller sections: data (generator, files,
split, collections), observable, histogram, selection cuts, report and search; the checks
across sections (data sources, the ntuple samples' expressions)."""

# ruff: noqa: RUF012 (pydantic copies mutable defaults; ruff cannot see that _Strict is a model)

from __future__ import annotations

import math
from typing import Annotated, Literal

import yaml
from pydantic import Field, model_validator

from .analysis import AnalysisConfig, VariationConfig
from .base import _Strict
from .black_box import BlackBoxConfig
from .training import TrainingConfig


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
    # floor on every bin's total background (expected events) seen by the likelihood losses
    min_background: float = Field(0.0, ge=0)


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
        from ...analysis.cuts import CutSpec

        return [
            CutSpec(c.feature, c.direction, c.init, c.trainable, c.relaxation) for c in self.cuts
        ]


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
    black_box: BlackBoxConfig | None = None  # a non-differentiable stage (L-GSO)

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
        if self.black_box is None:  # the section only where a config has a stage
            del doc["black_box"]
        return yaml.safe_dump(doc, sort_keys=False)


def _check_expressions(cfg: Config) -> None:
    """Parse every expression of the ntuple samples (syntax and grammar errors name the field)."""
    from ...io.expressions import Expression, ExpressionError

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
