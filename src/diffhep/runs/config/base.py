"""The pieces every config section shares: :class:`ConfigError` and the strict base model
(unknown keys are errors; fields may be given by their alias, e.g. ``yield``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ...errors import DiffhepError


class ConfigError(DiffhepError):
    """An invalid configuration file or override."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
