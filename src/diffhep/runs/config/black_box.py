"""The ``black_box`` section: a non-differentiable stage of the analysis (a Python function or
a command run on files) with parameters psi that L-GSO steps during training
(:mod:`diffhep.runs.black_box`, :mod:`diffhep.surrogate.stage`)."""

# ruff: noqa: RUF012 (pydantic copies mutable defaults; ruff cannot see that _Strict is a model)

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from .base import _Strict


class BlackBoxParamConfig(_Strict):
    """One parameter psi of the stage: its start, its range, its trust region."""

    name: str = Field(min_length=1)
    init: float
    low: float
    high: float
    epsilon: float | None = Field(None, gt=0)  # trust-region half-width; default (high-low)/10

    @model_validator(mode="after")
    def _range(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got {self.low}, {self.high}")
        if not self.low <= self.init <= self.high:
            raise ValueError(f"init {self.init} is outside [{self.low}, {self.high}]")
        return self


class BlackBoxConfig(_Strict):
    """The stage ``y = F(x; psi)``: reads the feature columns ``inputs`` of every event of
    ``event_sets`` and replaces the columns ``outputs`` with its result."""

    function: str | None = None  # "module:name", called f(x, psi, rng, **options) -> y
    options: dict[str, Any] = {}
    command: list[str] | None = Field(None, min_length=1)  # argv with {input} and {output}
    timeout: float | None = Field(None, gt=0)  # seconds per command call
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    params: list[BlackBoxParamConfig] = Field(min_length=1)
    event_sets: list[str] | None = None  # default: every event set
    cost: str | None = None  # "module:name": psi (d,) -> scalar (JAX), added to the loss
    learning_rate: float = Field(0.05, gt=0)  # Adam on psi
    n_psi: int = Field(16, ge=2)  # L-GSO's N: psi values per epoch
    m_x: int = Field(64, ge=2)  # L-GSO's M: inputs per psi value
    surrogate_steps: int = Field(200, ge=1)
    surrogate_learning_rate: float = Field(3e-3, gt=0)
    first_fit: int = Field(10, ge=1)
    hidden: list[int] = [8]
    capacity: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _source(self):
        if (self.function is None) == (self.command is None):
            raise ValueError("give either 'function' or 'command'")
        if self.command is not None and not all(
            any(key in a for a in self.command) for key in ("{input}", "{output}")
        ):
            raise ValueError("the command needs {input} and {output} in its arguments")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names repeat: {names}")
        for key in ("inputs", "outputs"):
            v = getattr(self, key)
            if len(set(v)) != len(v):
                raise ValueError(f"{key} repeat a feature: {v}")
        return self
