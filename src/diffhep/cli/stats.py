"""Statistics on pyhf workspaces: ``cls``, ``fit``, ``upper-limit``."""

from __future__ import annotations

import sys

import click

from . import common as cli_common
from .common import output, run, with_test_stat
from .toys import check_toy_options, finish, run_toys, toy_options


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
_digest = click.option(
    "--no-digest-check",
    is_flag=True,
    default=False,
    help="Apply a patchset even if its background-only digest (metadata.digests) does not "
    "match the workspace (pyhf refuses; so does diffhep by default).",
)


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


_output_file = click.option(
    "--output-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the JSON to this file (atomically) instead of standard output (as pyhf).",
)


#: pyhf's computation options: accepted so that pyhf command lines run, and ignored with a
#: note (diffhep always computes with JAX in float64 and its own Newton solver).
_pyhf_ignored = [
    click.option("--backend", default=None, hidden=True),
    click.option("--optimizer", default=None, hidden=True),
    click.option("--optconf", multiple=True, hidden=True),
]


def _common(f):
    decos = [
        _workspace,
        _patch,
        _patch_name,
        _digest,
        _measurement,
        *_codes,
        _output_file,
        *_pyhf_ignored,
    ]
    for deco in reversed(decos):
        f = deco(f)
    return f


def _note_ignored(backend, optimizer, optconf) -> None:
    given = [f"--{k} {v}" for k, v in (("backend", backend), ("optimizer", optimizer)) if v]
    given += [f"--optconf {v}" for v in optconf]
    if given:
        click.echo(
            f"diffhep: note: {', '.join(given)} ignored: diffhep computes with JAX in float64 "
            "and its own Newton solver",
            err=True,
        )


def _on_workspace(fn, common: dict, **kwargs):
    """``fn`` (a function of :mod:`diffhep.stats.workflows`, or its name) on the workspace
    named by the options of :func:`_common` (patched, measurement, interpolation codes), run
    as the CLI runs them (errors -> exit codes); pyhf's ignored options get their note first.

    Given by name, the function's compiled kernels start loading
    (:func:`diffhep.cli.common.prefetching`) before the statistics are imported."""
    _note_ignored(common["backend"], common["optimizer"], common["optconf"])
    name = fn if isinstance(fn, str) else fn.__name__
    if name in ("cls", "fit", "upper_limit"):  # no resources held
        cli_common.QUICK_EXIT = True
    if name in ("cls", "fit", "upper_limit", "toys"):
        cli_common.ONE_CORE = True  # small kernels: faster on one core (cli.common.ONE_CORE)
    settings = _settings(common["normsys_code"], common["histosys_code"])
    options = {
        "patch_name": common["patch_name"],
        "digest_check": not common["no_digest_check"],
        "measurement": common["measurement"],
        "modifier_settings": settings,
    }

    def work():
        if not isinstance(fn, str):
            return fn(common["workspace"], common["patches"], **options, **kwargs)
        given = {k: v for k, v in kwargs.items() if k != "poi_value"}  # an input
        with cli_common.prefetching(name, common["workspace"], {**options, **given}):
            from ..stats import workflows  # (its kernels load meanwhile)

            return getattr(workflows, name)(common["workspace"], common["patches"],
                                            **options, **kwargs)  # fmt: skip

    return run(work)


@click.command()
@_common
@click.option(
    "--poi-value",
    "--testpoi",
    "--test-poi",
    type=float,
    default=1.0,
    show_default=True,
    help="POI value to test (as pyhf's --test-poi; --testpoi as in pyhf before 0.7).",
)
@with_test_stat
@toy_options
def cls(output_file, poi_value, test_stat, ntoys, seed, first_toy, save_toys, max_nonconverged,
        chunk_size, workers, scheduler, **common):  # fmt: skip
    """Observed and expected CLs of WORKSPACE ('-' reads stdin), as `pyhf cls` prints them.

    With --toys N: toy-based (pyhf's calctype='toybased'), the same fields plus "toys"
    (counts, non-converged toys, CLsb/CLb, Monte-Carlo errors)."""
    check_toy_options(ntoys, seed, first_toy, save_toys, chunk_size, workers, scheduler)
    if ntoys is not None:
        res = run_toys({"poi_value": poi_value, "test_stat": test_stat}, ntoys, seed, first_toy,
                       chunk_size, lambda fn, **kw: _on_workspace(fn, common, **kw), workers,
                       scheduler)  # fmt: skip
        finish(res, save_toys, output_file, max_nonconverged)
        return
    res = _on_workspace("cls", common, poi_value=poi_value, test_stat=test_stat)
    output(res, output_file)


@click.command()
@_common
@click.option("--value", is_flag=True, hidden=True, help="pyhf's flag: twice_nll is always given.")
def fit(output_file, value, **common):
    """Maximum-likelihood fit: best-fit values and uncertainties by parameter name (and
    pyhf's mle_parameters and twice_nll). Uncertainties the Hessian does not determine
    (singular or indefinite) are null and the command exits 1 naming the parameters."""
    res = _on_workspace("fit", common)
    output(res, output_file)
    if not res["uncertainty_ok"]:
        names = ", ".join(res["undetermined"])
        click.echo(
            "error: the fit converged, but the Hessian at the best fit is singular or "
            f"indefinite: the uncertainties of {names} are undetermined (null)\n"
            "  fix: these parameters are not constrained separately by the data (e.g. two "
            "normfactors of one sample): fix one, or add a constraint",
            err=True,
        )
        sys.exit(1)


def _numbers(text, param, count=None):
    """Comma-separated numbers of an option (click.BadParameter: exit 2)."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or (count is not None and len(values) != count):
        raise click.BadParameter(
            f"expected {count or 'some'} comma-separated numbers, got {text!r}", param_hint=param
        )
    return values


@click.command("upper-limit")
@_common
@click.option(
    "--level", type=float, default=0.05, show_default=True, help="CLs level (0 < level < 1)."
)
@with_test_stat
@click.option(
    "--scan",
    metavar="START,STOP,NUM",
    default=None,
    help="Test NUM POI values from START to STOP and interpolate the limits on them (pyhf's "
    "upper_limit(scan=np.linspace(START, STOP, NUM))); default: scan the POI's bounds and "
    "refine by root finding.",
)
@click.option(
    "--poi-bounds",
    metavar="LO,HI",
    default=None,
    help="Bounds of the POI in the fits and for the scan, which starts at max(LO, 0) (CLs "
    "tests mu >= 0; the output's poi_range is the range tested, poi_bounds these bounds). "
    "Default: the measurement's.",
)
def upper_limit(output_file, level, test_stat, scan, poi_bounds, **common):
    """Observed and expected upper limits on the POI. A limit outside the tested POI range is
    null, with "outside_range" saying on which side; a hypotest that does not converge
    exits 1 naming its POI values."""
    import numpy as np

    grid = None
    if scan is not None:
        start, stop, num = _numbers(scan, "--scan", 3)
        if num != int(num) or num < 2:
            raise click.BadParameter(
                f"NUM must be an integer >= 2, got {num:g}", param_hint="--scan"
            )
        grid = np.linspace(start, stop, int(num))
    bounds = None if poi_bounds is None else _numbers(poi_bounds, "--poi-bounds", 2)
    res = _on_workspace("upper_limit", common, level=level, test_stat=test_stat,
                        scan=grid, poi_bounds=bounds)  # fmt: skip
    output(res, output_file)


COMMANDS = [cls, fit, upper_limit]
