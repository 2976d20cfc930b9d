"""The ``training`` section of a config: the loss (a term, weighted terms with nuisance-
parameter terms, or phases), the optimiser, epochs, batches, devices and chunks."""

# ruff: noqa: RUF012 (pydantic copies mutable defaults; ruff cannot see that _Strict is a model)

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator

from .base import _Strict


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
    from ...analysis.nuisance import NuisanceTerm

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
    from ...analysis.nuisance import NUISANCE_TERMS, parse
    from ...analysis.spec import LOSS_TERMS

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
    # ntuple files streamed in chunks of this many entries per file (memory bounded by it, not
    # by the events; runs.streaming); None: every event in memory
    chunk_events: int | None = Field(None, ge=100)

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
        from ...analysis.nuisance import NUISANCE_TERMS

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
