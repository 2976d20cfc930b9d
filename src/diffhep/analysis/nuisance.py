"""Loss terms on named nuisance parameters: their names, targets and string keys.

Three kinds (the numbers are computed in :mod:`diffhep.analysis.losses`):

- ``sigma_theta``: the post-fit width of the parameter from the inverse Fisher information at
  the nominal point (as ``sigma_mu``), in units of its pre-fit width (a constrained
  parameter's nominal width is 1; an unconstrained one's width is absolute);
- ``pull_theta``: its pull ``(theta_hat - theta_0) / pre-fit width`` in the profile fit with
  mu = 1 on the background-only Asimov data (the fit of the expected CLs): how much of the
  tested signal the nuisance absorbs;
- ``impact``: ``rho(mu, theta) * sigma_mu``, the linearised shift of mu-hat when the
  parameter is moved by its post-fit one sigma and the others are profiled.

The value entering the weighted loss is ``(x - target)^2`` when a ``target`` is given (the
neos paper's ``(1 - sigma_gamma)^2`` is ``sigma_theta`` with target 1), otherwise ``x``
itself for ``sigma_theta``, ``|x|`` for ``impact`` and ``x^2`` for ``pull_theta``.

A term travels through the training loop as a string key (``sigma_theta[gamma]`` or
``sigma_theta[gamma;target=1.0]``), like the plain terms (``cls``), so the loss phases, the
chunked gradients and ``metrics.jsonl`` treat every term alike. No JAX here (the config
imports it).

Example:
    >>> t = NuisanceTerm("sigma_theta", "bkg_shape", 1.0)
    >>> t.key
    'sigma_theta[bkg_shape;target=1.0]'
    >>> parse(t.key) == t, parse("cls")
    (True, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NUISANCE_TERMS", "NuisanceTerm", "parse"]

#: The kinds of nuisance-parameter loss terms (``training.loss`` keys taking a parameter).
NUISANCE_TERMS = ("sigma_theta", "pull_theta", "impact")

_KEY = re.compile(r"^(\w+)\[(.+?)(?:;target=([^\]]+))?\]$")


@dataclass(frozen=True)
class NuisanceTerm:
    """A loss term on one parameter.

    Attributes:
        kind: One of :data:`NUISANCE_TERMS`.
        name: The parameter's name as in the model (``bkg_shape``, ``staterror_SR[2]``).
        target: ``None``, or the value whose squared distance is the loss.
    """

    kind: str
    name: str
    target: float | None = None

    def __post_init__(self):
        if self.kind not in NUISANCE_TERMS:
            raise ValueError(f"unknown nuisance term {self.kind!r}; use {NUISANCE_TERMS}")

    @property
    def key(self) -> str:
        """The term's key in the loss terms (``kind[name]`` or ``kind[name;target=t]``)."""
        t = "" if self.target is None else f";target={float(self.target)!r}"
        return f"{self.kind}[{self.name}{t}]"


def parse(key: str) -> NuisanceTerm | None:
    """The :class:`NuisanceTerm` of a key, ``None`` if ``key`` is not one."""
    m = _KEY.match(key)
    if m is None or m.group(1) not in NUISANCE_TERMS:
        return None
    target = None if m.group(3) is None else float(m.group(3))
    return NuisanceTerm(m.group(1), m.group(2), target)
