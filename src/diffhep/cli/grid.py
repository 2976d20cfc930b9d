"""``diffhep exclusion``: CLs of every signal point of a patchset (or of patch files)."""

from __future__ import annotations

import csv
import io
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from . import common
from .common import run, setup, with_test_stat
from .stats import _codes, _settings

COLUMNS = ["point", "CLs_obs", "CLs_exp_m2", "CLs_exp_m1", "CLs_exp_0", "CLs_exp_p1",
           "CLs_exp_p2", "converged", "error"]  # fmt: skip


def _batch_task(spec, points, options):
    """One batch on a Dask worker (or here): the JAX set-up, then the library."""
    from ..stats import grid

    setup()
    return grid.run_batch(spec, points, **options)


def _csv(rows, pattern: str | None = None) -> str:
    """The rows as CSV; with a mass pattern, its fields as columns after the point's name
    (the text the name has there; empty where it does not match). An error in one line."""
    fields: list[str] = []
    masses: list = [None] * len(rows)
    if pattern:
        from ..plotting.exclusion import pattern_fields, point_fields

        fields = pattern_fields(pattern)
        masses = point_fields([r["point"] for r in rows], pattern, text=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([COLUMNS[0], *fields, *COLUMNS[1:]])
    for r, m in zip(rows, masses, strict=True):
        exp = r["CLs_exp"] or [None] * 5
        at = [None if m is None else m[f] for f in fields]
        error = r.get("error")
        error = None if error is None else "; ".join(x.strip() for x in error.split("\n"))
        w.writerow([r["point"], *at, r["CLs_obs"], *exp, r["converged"], error])
    return buf.getvalue()


#: Points per batch by JAX backend: on CPU a vmapped batch costs more than its points one
#: by one (measured on sbottom RegionA: 16 points in 14 s one at a time, 25 s in batches
#: of 4, 31 s in one batch of 16), an accelerator runs the batch in parallel.
_DEFAULT_BATCH = {"cpu": 1, "gpu": 32}


def _compute(spec, points, batch_size, workers, scheduler, options):
    from ..stats import grid

    if batch_size is None:
        import jax

        batch_size = _DEFAULT_BATCH.get(jax.default_backend(), _DEFAULT_BATCH["gpu"])
    chunks = grid.batches(points, batch_size)
    opts = {**options, "pad_to": min(batch_size, len(points))}
    if workers is None and scheduler is None:
        if batch_size == 1:  # one stream: the next model is built while a kernel runs
            yield from grid.run_points(spec, points, **options)
            return
        for chunk in chunks:
            yield from grid.run_batch(spec, chunk, **opts)
        return
    from ..io.dask_apply import dask_client

    with dask_client(scheduler, workers) as client:
        spec_f = client.scatter(spec, broadcast=True)
        futures = [client.submit(_batch_task, spec_f, c, opts, pure=False) for c in chunks]
        for fut in futures:  # in order, as they finish
            yield from fut.result()


def _plot(rows, drawn, coords, path, xlabel, ylabel):
    """The contours of the points ``drawn`` (indices into ``rows``, at ``coords``) that
    converged."""
    from ..plotting.exclusion import plot_exclusion

    ok = [k for k, i in enumerate(drawn) if rows[i]["converged"]]
    plot_exclusion(
        coords[ok],
        [rows[drawn[k]]["CLs_obs"] for k in ok],
        [rows[drawn[k]]["CLs_exp"] for k in ok],
        path,
        xlabel=xlabel,
        ylabel=ylabel,
    )


def _report(rows) -> int:
    """The points without CLs on standard error; the exit status: 2 where a point's input
    is bad (its patch, its model, an option), 1 where fits did not converge, else 0. An
    error that every failed point shares (an option, e.g. --poi-value) is said once."""
    failed = [r for r in rows if r.get("error")]
    bad = [r["point"] for r in rows if not r["converged"] and not r.get("error")]
    if bad:
        click.echo(
            f"error: {len(bad)} of {len(rows)} point(s) did not converge (CLs null): "
            f"{', '.join(bad[:20])}{' ...' if len(bad) > 20 else ''}\n"
            "  fix: check these models with 'diffhep fit -p PATCH' (parameters at bounds and "
            "empty bins are common causes)",
            err=True,
        )
    if not failed:
        return 1 if bad else 0
    reasons = {r["error"].removeprefix(f"{r['point']}: ") for r in failed}
    if len(failed) > 1 and len(reasons) == 1:
        click.echo(f"error: all {len(failed)} point(s) without CLs (of {len(rows)}), for "
                   f"one reason: {reasons.pop()}", err=True)  # fmt: skip
        return 2
    click.echo(
        f"error: {len(failed)} of {len(rows)} point(s) could not be computed (CLs null, the "
        "message in their 'error'), the others were:",
        err=True,
    )
    for r in failed[:10]:
        click.echo(f"error: {r['error']}", err=True)
    if len(failed) > 10:
        click.echo(f"error: ... and {len(failed) - 10} more", err=True)
    return 2


@click.command()
@click.argument("workspace", type=str)
@click.argument("patches", nargs=-1, required=True)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Points per vectorised batch (memory grows with it). Default: 1 on CPU, where "
    "the fits of a batch wait for its slowest and one point at a time is faster "
    "(docs/benchmarks-commands.md); 32 on GPU.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results as CSV (atomically).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Spread the batches over a local Dask cluster of N processes.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Spread the batches over this Dask scheduler (e.g. tcp://host:8786).",
)
@click.option(
    "--no-digest-check",
    is_flag=True,
    default=False,
    help="Apply patchsets even if their metadata.digests do not match WORKSPACE.",
)
@click.option(
    "--poi-value",
    type=float,
    default=1.0,
    show_default=True,
    help="POI value tested at every point.",
)
@with_test_stat
@click.option("--measurement", default=None, help="Measurement name.")
@_codes[0]
@_codes[1]
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Newton iteration cap of each fit (default: the library's).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    callback=common.figure_path,
    help="Draw the observed and expected contours (CLs = 0.05) to this file.",
)
@click.option(
    "--mass-pattern",
    default=None,
    metavar="PATTERN",
    help="Point names as e.g. 'sbottom_{m1}_{m2}_{m3}' (for --plot).",
)
@click.option("--x", "x_axis", default=None, help="Pattern field on the x axis (e.g. m1).")
@click.option("--y", "y_axis", default=None, help="Pattern field on the y axis (e.g. m2).")
@click.option("--xlabel", default=None, help="x-axis label of --plot (default: the --x field).")
@click.option("--ylabel", default=None, help="y-axis label of --plot (default: the --y field).")
def exclusion(workspace, patches, batch_size, out, workers, scheduler, no_digest_check,
              poi_value, test_stat, measurement, normsys_code, histosys_code, max_steps,
              plot_path, mass_pattern, x_axis, y_axis, xlabel, ylabel):  # fmt: skip
    """Observed and expected CLs of every signal point: WORKSPACE (background only) with
    each PATCH applied (a pyhf patchset: all its patches; a JSON patch file: one point;
    globs allowed). One JSON line per point; points whose fits do not converge are
    reported with null CLs and the command exits 1; a point whose own patch is bad input
    (it adds no signal, it belongs to another workspace) has null CLs and its 'error', the
    others are computed, and the command exits 2."""
    if scheduler is not None and workers is not None:
        raise click.UsageError("--scheduler and --workers are mutually exclusive")
    if batch_size is not None and batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    if plot_path and not (mass_pattern and x_axis and y_axis):
        raise click.UsageError("--plot needs --mass-pattern, --x and --y")
    options = {"poi_value": poi_value, "test_stat": test_stat, "measurement": measurement,
               "modifier_settings": _settings(normsys_code, histosys_code)}  # fmt: skip
    if max_steps is not None:
        options["max_steps"] = max_steps

    if workers is None and scheduler is None:  # (a Dask cluster is closed by its finaliser)
        common.QUICK_EXIT = True
        common.ONE_CORE = batch_size in (None, 1)  # one point at a time: small kernels

    def compute():
        rows = []
        local = workers is None and scheduler is None  # (a cluster's workers load their own)
        given = {**options, "batch_size": batch_size}
        with common.prefetching("exclusion", workspace, given) if local else nullcontext():
            from ..stats import grid
            from ..stats.schema import load_json

            spec, _ = load_json(workspace, schema="workspace.json")
            points = grid.load_points(spec, patches, digest_check=not no_digest_check)
            grid.check_measurement(spec, measurement, file=workspace)  # (not at every point)
            if mass_pattern:  # checked before any point is computed
                from ..plotting.exclusion import pattern_fields

                pattern_fields(mass_pattern)
            if plot_path:
                from ..plotting.exclusion import select_points

                names = [name for name, _ in points]
                drawn, coords = select_points(names, mass_pattern, x_axis, y_axis)
                if len(drawn) < len(names):
                    click.echo(
                        f"note: {len(names) - len(drawn)} of {len(names)} point(s) do not match "
                        f"--mass-pattern {mass_pattern!r}: computed, not drawn",
                        err=True,
                    )
            for row in _compute(spec, points, batch_size, workers, scheduler, options):
                click.echo(json.dumps(row))
                rows.append(row)
        if out is not None:
            from ..writers import write_atomic

            write_atomic(Path(out), _csv(rows, mass_pattern))
        if plot_path:
            _plot(rows, drawn, coords, plot_path, xlabel or x_axis, ylabel or y_axis)
        return rows

    code = _report(run(compute))
    if code:
        sys.exit(code)


COMMANDS = [exclusion]
