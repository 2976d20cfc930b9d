"""pyhf as the test oracle: its numpy backend in float64, quiet, restored afterwards."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pyhf


@contextlib.contextmanager
def pyhf_numpy(optimizer=None):
    """pyhf on numpy/float64 with ``optimizer`` (default: scipy with tolerance 1e-12).

    pyhf's warnings (e.g. overflow in its numpy code) are silenced: the test suite turns
    warnings into errors, and pyhf is only the oracle here.
    """
    saved = pyhf.get_backend()
    optimizer = optimizer or pyhf.optimize.scipy_optimizer(tolerance=1e-12)
    pyhf.set_backend("numpy", optimizer, precision="64b")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        pyhf.set_backend(*saved)
