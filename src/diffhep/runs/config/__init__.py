"""Training configuration: a YAML file validated with a schema (pydantic).

Every error names the file, the field path (``training.optimizer.learning_rate``) and a fix.
``--set key=value`` overrides are applied to the raw document before validation, with the
value parsed as YAML (``--set training.epochs=3``, ``--set observable.hidden=[64,64]``).
The schema's sections live in :mod:`.analysis`, :mod:`.training` and :mod:`.schema` (the
whole :class:`Config`); the overrides in :mod:`.overrides`; reading and the error messages
in :mod:`.load`. Every name is importable from here.

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

from .analysis import (
    AnalysisConfig,
    ChannelConfig,
    NormFactorConfig,
    NormSystematicConfig,
    SampleConfig,
    ShapeSystematicConfig,
    Strategy,
    VariationConfig,
    WeightsConfig,
)
from .base import ConfigError
from .black_box import BlackBoxConfig, BlackBoxParamConfig
from .load import load_config
from .overrides import apply_overrides
from .schema import (
    GENERATOR_EVENTS,
    CollectionConfig,
    Config,
    CutConfig,
    DataConfig,
    HistogramConfig,
    ObservableConfig,
    ReportConfig,
    SearchConfig,
    SearchParamConfig,
    SelectionConfig,
    SplitConfig,
    Width,
)
from .training import (
    LossPhase,
    NuisanceTermConfig,
    OptimizerConfig,
    TermWeight,
    TrainingConfig,
)

# the schema's sections too, reachable here as before (diffhep.runs.config.ReportConfig, ...)
__all__ = [
    "GENERATOR_EVENTS",
    "AnalysisConfig",
    "BlackBoxConfig",
    "BlackBoxParamConfig",
    "ChannelConfig",
    "CollectionConfig",
    "Config",
    "ConfigError",
    "CutConfig",
    "DataConfig",
    "HistogramConfig",
    "LossPhase",
    "NormFactorConfig",
    "NormSystematicConfig",
    "NuisanceTermConfig",
    "ObservableConfig",
    "OptimizerConfig",
    "ReportConfig",
    "SampleConfig",
    "SearchConfig",
    "SearchParamConfig",
    "SelectionConfig",
    "ShapeSystematicConfig",
    "SplitConfig",
    "Strategy",
    "TermWeight",
    "TrainingConfig",
    "VariationConfig",
    "WeightsConfig",
    "Width",
    "apply_overrides",
    "load_config",
]
