"""The ``diffhep`` command line: a thin layer over :mod:`diffhep.workflows`.

Commands print JSON on stdout (like ``pyhf``); bad input exits with status 2 and one message
naming the file, the JSON path and the fix; a fit that does not converge exits with status 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from .errors import DiffhepError, FitError

log = logging.getLogger("diffhep")


def _setup() -> None:
    """Float64 for the statistics, quiet logs, and a persistent compilation cache so that
    repeated commands on models of the same structure skip XLA compilation."""
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("DIFFHEP_CACHE_DIR")
    if cache is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(base) / "diffhep" / "jax")
    if cache:  # DIFFHEP_CACHE_DIR="" disables the cache
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except OSError:
            pass
    logging.basicConfig(level=logging.WARNING, format="diffhep: %(levelname)s: %(message)s")


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except FitError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except DiffhepError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


def _emit(obj) -> None:
    click.echo(json.dumps(obj, indent=4, sort_keys=True))


def _settings(normsys_code, histosys_code):
    return {"normsys": {"interpcode": normsys_code}, "histosys": {"interpcode": histosys_code}}


_workspace = click.argument("workspace", type=str, default="-")
_patch = click.option(
    "-p",
    "--patch",
    "patches",
    multiple=True,
    help="JSON patch or patchset file to apply (repeatable).",
)
_patch_name = click.option("--patch-name", default=None, help="Patch to take from a patchset.")
_measurement = click.option("--measurement", default=None, help="Measurement name.")
_codes = [
    click.option(
        "--normsys-code",
        type=click.Choice(["code4", "code1"]),
        default="code4",
        show_default=True,
        help="normsys interpolation.",
    ),
    click.option(
        "--histosys-code",
        type=click.Choice(["code4p", "code0"]),
        default="code4p",
        show_default=True,
        help="histosys interpolation.",
    ),
]


def _common(f):
    for deco in reversed([_workspace, _patch, _patch_name, _measurement, *_codes]):
        f = deco(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffhep")
def main() -> None:
    """diffhep: differentiable HistFactory inference and analysis optimisation."""
    _setup()


@main.command()
@_common
@click.option(
    "--poi-value",
    "--testpoi",
    type=float,
    default=1.0,
    show_default=True,
    help="POI value to test.",
)
@click.option(
    "--test-stat", type=click.Choice(["qtilde", "q"]), default="qtilde", show_default=True
)
def cls(
    workspace, patches, patch_name, measurement, normsys_code, histosys_code, poi_value, test_stat
):
    """Observed and expected CLs of WORKSPACE ('-' reads stdin), as `pyhf cls` prints them."""
    from . import workflows

    _emit(
        _run(
            workflows.cls,
            workspace,
            patches,
            patch_name=patch_name,
            measurement=measurement,
            poi_value=poi_value,
            test_stat=test_stat,
            modifier_settings=_settings(normsys_code, histosys_code),
        )
    )


@main.command()
@_common
def fit(workspace, patches, patch_name, measurement, normsys_code, histosys_code):
    """Maximum-likelihood fit: best-fit values and uncertainties by parameter name."""
    from . import workflows

    _emit(
        _run(
            workflows.fit,
            workspace,
            patches,
            patch_name=patch_name,
            measurement=measurement,
            modifier_settings=_settings(normsys_code, histosys_code),
        )
    )


@main.command("upper-limit")
@_common
@click.option("--level", type=float, default=0.05, show_default=True, help="CLs level.")
@click.option(
    "--test-stat", type=click.Choice(["qtilde", "q"]), default="qtilde", show_default=True
)
def upper_limit(
    workspace, patches, patch_name, measurement, normsys_code, histosys_code, level, test_stat
):
    """Observed and expected upper limits on the POI."""
    from . import workflows

    _emit(
        _run(
            workflows.upper_limit,
            workspace,
            patches,
            patch_name=patch_name,
            measurement=measurement,
            level=level,
            test_stat=test_stat,
            modifier_settings=_settings(normsys_code, histosys_code),
        )
    )


@main.command()
def demo():
    """CLs of a real published likelihood (ATLAS sbottom search) shipped with diffhep."""
    import time

    from . import workflows

    start = time.perf_counter()
    out = _run(workflows.demo)
    elapsed = time.perf_counter() - start
    click.echo(f"diffhep demo: {out['workspace']}")
    click.echo(f"  observed CLs  = {out['CLs_obs']:.6g}")
    band = ", ".join(f"{x:.4g}" for x in out["CLs_exp"])
    click.echo(f"  expected CLs  = [{band}]  (-2..+2 sigma)")
    click.echo(f"  excluded at 95% CL: {'yes' if out['CLs_obs'] < 0.05 else 'no'}")
    click.echo(f"  ({elapsed:.1f} s including compilation)")


if __name__ == "__main__":  # pragma: no cover
    main()
