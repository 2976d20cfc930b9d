"""Optimising through a black box: local generative surrogates (L-GSO). Knows no physics."""

import importlib as _importlib


def __getattr__(name: str):
    """Submodules load on first use (``diffhep.<pkg>.<module>``)."""
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
