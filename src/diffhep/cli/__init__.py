"""The ``diffhep`` command line: a thin layer over :mod:`diffhep.stats.workflows`.

Commands print JSON on stdout (like ``pyhf``); bad input exits with status 2 and one message
naming the file, the JSON path and the fix; a fit that does not converge exits with status 1.

One module per command group (stats, diagnostics, runs, weights, studies); each lists its
``COMMANDS``.
"""

from __future__ import annotations

import click

from . import diagnostics, generate, grid, optimize, runs, stats, studies, toys, weights

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffhep")
def main() -> None:
    """diffhep: differentiable HistFactory inference and analysis optimisation."""


for _group in [stats, grid, diagnostics, toys, runs, optimize, weights, studies, generate]:
    for _command in _group.COMMANDS:
        main.add_command(_command)
