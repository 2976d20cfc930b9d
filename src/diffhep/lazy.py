"""Lazy submodules: a package's ``__getattr__`` that imports ``diffhep.<pkg>.<module>`` on
first use, so ``import diffhep.stats`` costs nothing until a module is needed.

Example:
    >>> submodule_getattr("json")("decoder").__name__
    'json.decoder'
"""

import importlib


def submodule_getattr(package: str):
    """The module-level ``__getattr__`` of ``package``: its submodules, loaded on first use."""

    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
