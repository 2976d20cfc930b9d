"""diffhep: differentiable, systematics-aware HEP analysis optimisation.

The statistical core is a pyhf-compatible HistFactory likelihood in JAX with fast,
differentiable profile-likelihood fits and asymptotic CLs. Float64 is not switched on at
import: call :func:`enable_x64` (the CLI and the tests do) before building models.

The public API (``diffhep.Workspace``, ``diffhep.Model``, ``diffhep.infer``,
``diffhep.load_run``, ``diffhep.enable_x64``, ``diffhep.enable_cache``,
``diffhep.DiffhepError``) and the sub-packages load on first use, so ``import diffhep`` does
not start JAX.

Example:
    >>> import diffhep
    >>> diffhep.enable_x64()
    >>> ws = diffhep.Workspace.load_demo()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import DiffhepError as DiffhepError

if TYPE_CHECKING:
    from .runs.results import load_run as load_run
    from .stats.model import Model as Model
    from .stats.workspace import Workspace as Workspace

__version__ = "0.1.0"
__all__ = [
    "DiffhepError",
    "Model",
    "Workspace",
    "enable_cache",
    "enable_x64",
    "infer",
    "load_run",
]

_LAZY = {
    "Workspace": ("diffhep.stats.workspace", "Workspace"),
    "Model": ("diffhep.stats.model", "Model"),
    "load_run": ("diffhep.runs.results", "load_run"),
    # keep compiled kernels between sessions, in the CLI's cache (diffhep.cache.enable)
    "enable_cache": ("diffhep.cache", "enable"),
}
_PACKAGES = {
    "analysis", "cache", "cli", "infer", "io", "nn", "plotting", "problems", "runs", "stats",
    "studies", "types", "weights", "writers", "errors",
}  # fmt: skip


def enable_x64() -> None:
    """Switch JAX to float64 (needed by the statistical layer)."""
    import jax

    jax.config.update("jax_enable_x64", True)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _PACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY, *_PACKAGES])
