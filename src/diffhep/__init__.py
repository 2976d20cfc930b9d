"""diffhep: differentiable, systematics-aware HEP analysis optimisation.

The statistical core is a pyhf-compatible HistFactory likelihood in JAX with fast,
differentiable profile-likelihood fits and asymptotic CLs. Float64 is not switched on at
import: call :func:`enable_x64` (the CLI and the tests do) before building models.
"""

from __future__ import annotations

import jax

from .stats import (fit as fit)
from .stats import (hypotest as hypotest)
from .stats import (limits as limits)
from .stats import (workspace as workspace)
from .errors import (DiffhepError as DiffhepError)
from .stats.model import (Model as Model)
from .runs.results import (load_run as load_run)
from .stats.workspace import (Workspace as Workspace)

__version__ = "0.1.0"


def enable_x64() -> None:
    """Switch JAX to float64 (needed by the statistical layer)."""
    jax.config.update("jax_enable_x64", True)
