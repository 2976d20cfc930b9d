"""Toy-based tests on the command line: the ``--toys`` options of ``cls`` and
``significance``, their progress bar and output, and ``merge-toys`` (thin over
:mod:`diffhep.stats.toys`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import output, run

#: Non-converged toys above this fraction (default of ``--max-nonconverged``) exit 1.
MAX_NONCONVERGED = 0.01

_save = click.option(
    "--save-toys",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write the toys' test statistics (and what merging needs) to this .npz file, "
    "atomically; 'diffhep merge-toys' combines such files from several machines.",
)
_max_nonconverged = click.option(
    "--max-nonconverged",
    type=click.FloatRange(0.0, 1.0),
    default=MAX_NONCONVERGED,
    show_default=True,
    help="Toys whose fits do not converge are kept (test statistic at the fits' last point) "
    "and counted in toys.nonconverged; above this fraction the command exits 1.",
)

TOY_OPTIONS = [
    click.option(
        "--toys",
        "ntoys",
        type=click.IntRange(1, None),
        default=None,
        help="Toy-based instead of asymptotic: N toys per hypothesis (pyhf's "
        "calctype='toybased'), all fits batched; a progress bar on a terminal.",
    ),
    click.option(
        "--seed", type=click.IntRange(0, None), default=None, help="Seed of the toys (default 0)."
    ),
    click.option(
        "--first-toy",
        type=click.IntRange(0, None),
        default=None,
        help="Index of the first toy (default 0): machines running one seed over disjoint "
        "ranges (--first-toy k*N --toys N) merge into exactly the single run.",
    ),
    _save,
    _max_nonconverged,
    click.option(
        "--chunk-size",
        type=click.IntRange(1, None),
        default=None,
        help="Toys per compiled batch (memory does not grow with --toys; default 256).",
    ),
    click.option(
        "--workers",
        type=click.IntRange(1, None),
        default=None,
        help="Run the toys in N local processes (a Dask cluster), each on its own CPU core "
        "where there are enough; their toy ranges merge exactly into the single run.",
    ),
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Run the toys on this Dask scheduler (e.g. tcp://host:8786), merged as with "
        "--workers.",
    ),
]


def toy_options(f):
    """The ``--toys`` options (for ``cls`` and ``significance``)."""
    for deco in reversed(TOY_OPTIONS):
        f = deco(f)
    return f


def check_toy_options(ntoys, seed, first_toy, save_toys, chunk_size, workers=None,
                      scheduler=None) -> None:  # fmt: skip
    """Toy options without ``--toys``, ``--workers`` with ``--scheduler`` and an unwritable
    ``--save-toys`` directory: exit 2 before any work."""
    if ntoys is None:
        given = [n for n, v in (("--seed", seed), ("--first-toy", first_toy),
                                ("--save-toys", save_toys), ("--chunk-size", chunk_size),
                                ("--workers", workers), ("--scheduler", scheduler))
                 if v is not None]  # fmt: skip
        if given:
            raise click.BadParameter(f"{', '.join(given)} need --toys N", param_hint="--toys")
    if workers is not None and scheduler is not None:
        raise click.UsageError("--scheduler and --workers are mutually exclusive")
    if save_toys is not None and not Path(save_toys).resolve().parent.is_dir():
        raise click.BadParameter(f"the directory of {save_toys} does not exist",
                                 param_hint="--save-toys")  # fmt: skip


def progress_bar(total: int):
    """A rich progress bar on standard error (a terminal), and its update callback."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]toys"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
        transient=True,
    )
    task = bar.add_task("toys", total=total)
    return bar, lambda done: bar.update(task, completed=done)


def run_toys(workflow_kwargs: dict, ntoys, seed, first_toy, chunk_size, on_workspace,
             workers=None, scheduler=None):  # fmt: skip
    """The toys of a workspace with a progress bar: ``on_workspace(fn, **kwargs)`` runs the
    workflow as the command runs others (errors -> exit codes); with ``workers`` or
    ``scheduler`` spread over Dask (:func:`diffhep.cli.spread_toys.spread_toys`)."""
    from ..stats import workflows

    bar, update = progress_bar(2 * ntoys)
    options = {"chunk": chunk_size} if chunk_size is not None else {}
    fn = workflows.toys
    if workers is not None or scheduler is not None:
        from .spread_toys import spread_toys

        fn, options = spread_toys, {**options, "workers": workers, "scheduler": scheduler}
    with bar:
        return on_workspace(fn, ntoys=ntoys, seed=seed or 0, first=first_toy or 0,
                            progress=update, **workflow_kwargs, **options)  # fmt: skip


def finish(result, save_toys, output_file, max_nonconverged) -> None:
    """Save the toys, print the JSON (``cls``'s fields, or ``significance``'s for q0), and
    exit 1 when too many toys did not converge or CLs is 0/0."""
    if save_toys is not None:
        try:
            result.save(save_toys)
        except OSError as exc:
            click.echo(f"error: cannot write {save_toys}: {exc.strerror or exc}", err=True)
            click.echo("  fix: choose a writable --save-toys file", err=True)
            sys.exit(2)
    is_q0 = result.test_stat == "q0"
    out = result.significance_json() if is_q0 else result.cls_json()
    output(out, output_file)
    bad = result.nonconverged
    nbad, total = bad["sb"] + bad["b"], result.ts_sb.size + result.ts_b.size
    if nbad:
        click.echo(
            f"diffhep: warning: {nbad} of {total} toys ({bad['sb']} signal+background, "
            f"{bad['b']} background-only) have a fit that did not converge; they are kept "
            "with the test statistic at the fits' last point (toys.nonconverged)",
            err=True,
        )
    if nbad > max_nonconverged * total:
        click.echo(f"error: {nbad / total:.3%} of the toys did not converge (more than "
                   f"--max-nonconverged {max_nonconverged:g})", err=True)  # fmt: skip
        click.echo("  fix: check the model (e.g. with 'diffhep fit'), or accept them with a "
                   "larger --max-nonconverged", err=True)  # fmt: skip
        sys.exit(1)
    if is_q0 and out["Z_obs"] is None:
        n = result.ts_sb.size
        click.echo(f"diffhep: note: no mu = 0 toy is as extreme as the data: p0_obs < 1/{n} "
                   "and Z_obs is null (run more toys)", err=True)  # fmt: skip
    if not is_q0 and out["CLs_obs"] is None:
        click.echo("error: CLs_obs is 0/0: no background-only toy has a test statistic as "
                   "large as the observed one", err=True)  # fmt: skip
        click.echo("  fix: run more toys (--toys), e.g. on several machines and merge them "
                   "with 'diffhep merge-toys'", err=True)  # fmt: skip
        sys.exit(1)


@click.command("merge-toys")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_save
@_max_nonconverged
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the JSON to this file (atomically) instead of standard output.",
)
def merge_toys(files, save_toys, max_nonconverged, output_file):
    """Merge toy files (--save-toys of 'cls --toys' or 'significance --toys', e.g. from
    several machines) into one result, printed as the command that made them prints it.
    Files of other workspaces or settings, or holding the same toys twice, exit 2."""
    check_toy_options(1, None, None, save_toys, None)

    def work():
        from ..stats import toy_results

        return toy_results.merge([toy_results.load(f) for f in files], list(files))

    finish(run(work), save_toys, output_file, max_nonconverged)


COMMANDS = [merge_toys]
