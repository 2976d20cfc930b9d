"""Exceptions that tell the user what is wrong, where, and how to fix it.

Every error raised for bad *input* (files, JSON, YAML, fit configuration) is a
:class:`DiffhepError`. It carries the file, the location inside it (a JSON path such as
``channels[0].samples[1].modifiers[2]``, a column name, a parameter name) and a hint. The
command-line interface prints ``str(error)`` and exits non-zero, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "EXIT_INTERRUPTED",
    "DiffhepError",
    "FitError",
    "SchemaError",
    "format_json_path",
    "require_x64",
]

#: Exit status of a command interrupted by Ctrl-C (SIGINT), as a shell reports it (1: a fit
#: did not converge; 2: bad input)
EXIT_INTERRUPTED = 130


def format_json_path(path) -> str:
    """Render a JSON path (a sequence of keys and indices) the way a human reads it.

    Example:
        >>> format_json_path(["channels", 0, "samples", 1, "modifiers"])
        'channels[0].samples[1].modifiers'
        >>> format_json_path([])
        '(document root)'
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document root)"


class DiffhepError(Exception):
    """Bad input, described with its location and a fix.

    Args:
        message: What is wrong.
        file: The file the input came from (``"<stdin>"`` for standard input).
        where: Location inside the input: a JSON path, a column or a parameter name.
        fix: What the user should do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        where: str | None = None,
        fix: str | None = None,
    ):
        self.message = message
        self.file = file
        self.where = where
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        head = ""
        if self.file:
            head += f"{self.file}: "
        if self.where:
            head += f"at {self.where}: "
        text = head + self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text

    def __reduce__(self):
        """Pickled with its file, location and fix (errors raised in worker processes)."""
        return _rebuild, (type(self), self.message, self.file, self.where, self.fix)


def _rebuild(cls, message, file, where, fix):
    return cls(message, file=file, where=where, fix=fix)


class SchemaError(DiffhepError):
    """A document does not follow its JSON schema."""


class FitError(DiffhepError):
    """A fit did not converge or was configured inconsistently."""


class DataError(DiffhepError):
    """Invalid input data (names the file, the array and the count of bad entries)."""


def require_x64(fix: str = "call diffhep.enable_x64() before building models") -> None:
    """Raise a :class:`DiffhepError` unless JAX computes in float64 (the statistical layer
    needs it); ``fix`` is the hint of the error. JAX is imported here, not with this module."""
    import jax

    if not jax.config.jax_enable_x64:
        raise DiffhepError("the statistical layer needs float64", fix=fix)
