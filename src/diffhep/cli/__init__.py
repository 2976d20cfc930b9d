"""The ``diffhep`` command line: a thin layer over :mod:`diffhep.stats.workflows`.

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

from ..errors import DiffhepError, FitError

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
    decos = [_workspace, _patch, _patch_name, _measurement, *_codes, _output_file, *_pyhf_ignored]
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


def _output(obj, output_file) -> None:
    """The JSON on standard output, or written atomically to ``--output-file``."""
    if output_file is None:
        _emit(obj)
        return
    from ..writers import write_atomic

    try:
        write_atomic(Path(output_file), json.dumps(obj, indent=4, sort_keys=True) + "\n")
    except OSError as exc:
        click.echo(f"error: cannot write {output_file}: {exc.strerror or exc}", err=True)
        click.echo("  fix: choose a writable --output-file", err=True)
        sys.exit(2)


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
    "--test-poi",
    type=float,
    default=1.0,
    show_default=True,
    help="POI value to test (pyhf: --testpoi / --test-poi).",
)
@click.option(
    "--test-stat",
    "--teststat",
    type=click.Choice(["qtilde", "q"]),
    default="qtilde",
    show_default=True,
)
def cls(
    workspace,
    patches,
    patch_name,
    measurement,
    normsys_code,
    histosys_code,
    output_file,
    backend,
    optimizer,
    optconf,
    poi_value,
    test_stat,
):
    """Observed and expected CLs of WORKSPACE ('-' reads stdin), as `pyhf cls` prints them."""
    from ..stats import workflows

    _note_ignored(backend, optimizer, optconf)
    _output(
        _run(
            workflows.cls,
            workspace,
            patches,
            patch_name=patch_name,
            measurement=measurement,
            poi_value=poi_value,
            test_stat=test_stat,
            modifier_settings=_settings(normsys_code, histosys_code),
        ),
        output_file,
    )


@main.command()
@_common
@click.option("--value", is_flag=True, hidden=True, help="pyhf's flag: twice_nll is always given.")
def fit(
    workspace,
    patches,
    patch_name,
    measurement,
    normsys_code,
    histosys_code,
    output_file,
    backend,
    optimizer,
    optconf,
    value,
):
    """Maximum-likelihood fit: best-fit values and uncertainties by parameter name (and
    pyhf's mle_parameters and twice_nll). Uncertainties the Hessian does not determine
    (singular or indefinite) are null and the command exits 1 naming the parameters."""
    from ..stats import workflows

    _note_ignored(backend, optimizer, optconf)
    res = _run(
        workflows.fit,
        workspace,
        patches,
        patch_name=patch_name,
        measurement=measurement,
        modifier_settings=_settings(normsys_code, histosys_code),
    )
    _output(res, output_file)
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


@main.command("upper-limit")
@_common
@click.option(
    "--level", type=float, default=0.05, show_default=True, help="CLs level (0 < level < 1)."
)
@click.option(
    "--test-stat",
    "--teststat",
    type=click.Choice(["qtilde", "q"]),
    default="qtilde",
    show_default=True,
)
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
    help="Bounds of the POI for the scan and the fits (default: the measurement's).",
)
def upper_limit(
    workspace,
    patches,
    patch_name,
    measurement,
    normsys_code,
    histosys_code,
    output_file,
    backend,
    optimizer,
    optconf,
    level,
    test_stat,
    scan,
    poi_bounds,
):
    """Observed and expected upper limits on the POI. A limit outside the tested POI range is
    null, with "outside_range" saying on which side; a hypotest that does not converge
    exits 1 naming its POI values."""
    import numpy as np

    from ..stats import workflows

    grid = None
    if scan is not None:
        start, stop, num = _numbers(scan, "--scan", 3)
        if num != int(num) or num < 2:
            raise click.BadParameter(
                f"NUM must be an integer >= 2, got {num:g}", param_hint="--scan"
            )
        grid = np.linspace(start, stop, int(num))
    bounds = None if poi_bounds is None else _numbers(poi_bounds, "--poi-bounds", 2)
    _note_ignored(backend, optimizer, optconf)
    _output(
        _run(
            workflows.upper_limit,
            workspace,
            patches,
            patch_name=patch_name,
            measurement=measurement,
            level=level,
            test_stat=test_stat,
            modifier_settings=_settings(normsys_code, histosys_code),
            scan=grid,
            poi_bounds=bounds,
        ),
        output_file,
    )


def _print_summary(summary: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"test-set results ({out})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("expected_cls", "z0", "sigma_mu"):
        table.add_row(key, f"{summary[key]:.4g}")
    for key, value in summary.items():
        if key.startswith("sigma_") and key != "sigma_mu":
            table.add_row(key, f"{value:.4g}")
    for name, value in summary["yields"].items():
        table.add_row(f"yield {name}", f"{value:.4g}")
    if "selection" in summary:
        table.add_row("selection", summary["selection"]["expression"])
        table.add_row("selected fraction", f"{summary['selected_fraction']:.4g}")
    if summary.get("median_step_seconds") is not None:
        table.add_row("median step", f"{1e3 * summary['median_step_seconds']:.1f} ms")
    table.add_row("best epoch", f"{summary.get('best_epoch')} of {summary.get('epochs_run')}")
    Console(stderr=False).print(table)


_overrides = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set training.epochs=3 (repeatable).",
)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Run directory."
)
@_overrides
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from a checkpoint in the run directory.",
)
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def train(config, out, overrides, resume, progress):
    """Train the analysis described by CONFIG (YAML) into the run directory OUT."""
    from ..runs.config import load_config
    from ..runs.core import train_run

    cfg = _run(load_config, config, overrides)
    summary = _run(train_run, cfg, out, file=config, resume=resume, progress=progress)
    _print_summary(summary, out)
    click.echo(f"run directory: {out} (summary.json, workspace.json, model.eqx, plots/)")
    _exit_if_incomplete(summary, out)


def _exit_if_incomplete(summary: dict, out) -> None:
    """Exit 1 naming the artefacts that failed when a run is incomplete."""
    if summary.get("status") == "incomplete":
        click.echo(f"error: the run in {out} is incomplete (summary.json says so):", err=True)
        for name, why in summary.get("failed", {}).items():
            click.echo(f"  {name}: {why}", err=True)
        click.echo("  fix: the other artefacts are written; `diffhep evaluate "
                   f"{out}` writes them again", err=True)  # fmt: skip
        sys.exit(1)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def evaluate(run_dir):
    """Recompute the test-set metrics of the saved run RUN_DIR (writes summary.json)."""
    from ..runs.core import evaluate_run

    summary = _run(evaluate_run, run_dir)
    _print_summary(summary, run_dir)
    _exit_if_incomplete(summary, run_dir)


@main.command()
@click.option(
    "--out",
    default="diffhep-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory.",
)
@_overrides
@click.option(
    "--statistics-only",
    is_flag=True,
    help="Only compute CLs of a real published likelihood (no training).",
)
def demo(out, overrides, statistics_only):
    """Train a neural observable on the expected CLs of the neos Gaussian-blob problem."""
    import time

    start = time.perf_counter()
    if statistics_only:
        from ..stats import workflows

        res = _run(workflows.demo)
        click.echo(f"diffhep demo: {res['workspace']}")
        click.echo(f"  observed CLs  = {res['CLs_obs']:.6g}")
        band = ", ".join(f"{x:.4g}" for x in res["CLs_exp"])
        click.echo(f"  expected CLs  = [{band}]  (-2..+2 sigma)")
        click.echo(f"  ({time.perf_counter() - start:.1f} s including compilation)")
        return
    from ..runs.config import load_config
    from ..runs.core import DEMO_CONFIG, train_run

    cfg = _run(load_config, DEMO_CONFIG, overrides)
    click.echo("diffhep demo: training a neural observable on the expected CLs (neos blobs)")
    summary = _run(train_run, cfg, out, file=str(DEMO_CONFIG), resume=False)
    _print_summary(summary, out)
    click.echo(f"run directory: {out}; plots in {Path(out) / 'plots'}")
    click.echo(f"({time.perf_counter() - start:.1f} s including compilation)")
    _exit_if_incomplete(summary, out)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--tree", default=None,
              help="TTree or RNTuple of ROOT inputs (default: the only one); ROOT outputs "
              "keep its name and kind.")  # fmt: skip
@click.option("--step-size", default=100_000, show_default=True, help="Events per chunk.")
@click.option("--keep", multiple=True, help="Extra column to copy to the output (repeatable).")
@click.option("--sample", default=None, metavar="NAME",
              help="The sample of the run's config whose filter and weight apply "
              "(default: the filter and weight all samples share, if they share one).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["parquet", "root"]), default=None,
              help="Output format (default: that of each input).")  # fmt: skip
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Score on this Dask scheduler (e.g. tcp://host:8786): one output per "
              "partition, OUT/<input stem>/part-<k>.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Score on a local Dask cluster of N worker processes.")  # fmt: skip
def apply(run_dir, files, out, tree, step_size, keep, sample, fmt, scheduler, workers):
    """Score ROOT/parquet FILES with the trained run RUN_DIR (its model.onnx): one output per
    file in OUT, row by row aligned with the input, holding the features, the weight columns
    the config names, the --keep columns and

    \b
    diffhep_score          the neural observable, for every event
    diffhep_selected       the analysis selection: the sample's filter (see --sample)
                           AND the run's selection cuts
    diffhep_bin_<channel>  the bin of selected events in the channel, -1 otherwise
    diffhep_weight         the sample's weight expression (ntuple runs; before the
                           yield/scale normalisation)

    What these mean for the output (filter, cuts, weight) is stored in it as JSON: the
    parquet schema metadata / a ROOT TObjString, both named diffhep_metadata. Local and
    single-process unless --scheduler or --workers is given."""
    from ..io.apply import analysis_selection, apply_run

    if scheduler is not None and workers is not None:
        raise click.UsageError("--scheduler and --workers are mutually exclusive")
    res = _run(apply_run, run_dir, files, out, tree=tree, step_size=step_size, keep=keep,
               fmt=fmt, sample=sample, scheduler=scheduler, workers=workers)  # fmt: skip
    _emit(res)
    if sample is None and "--sample" in _run(analysis_selection, run_dir).note:
        click.echo("warning: diffhep_selected holds the selection cuts only: the samples' "
                   "filters differ; choose the sample whose filter applies with --sample",
                   err=True)  # fmt: skip


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Output file, same format as FILE (default: FILE's stem + '_reweighted', beside it); "
    "never FILE itself (refused, also through links or relative paths).",
)
@click.option("--column", default="w_learned", show_default=True, help="Name of the new weights.")
@click.option("--tree", help="ROOT: the TTree (default: the only one); HDF5: the group.")
@click.option(
    "--weight",
    metavar="EXPR",
    help="The signed weight: a column or an expression, e.g. 'genWeight * xsec' (needed for "
    "ROOT, parquet, HDF5 and CSV; for .npz it reads 1-D arrays as columns).",
)
@click.option(
    "--features",
    help="Columns or expressions for the report, comma-separated (default: every flat numeric "
    "column but the weight's).",
)
@click.option("--weights-key", default="w", show_default=True, help=".npz x/w: weights array.")
@click.option("--names", help="Feature names, comma-separated (default x0, x1, ... or --features).")
@click.option("--inputs", help="Features the weight network reads (names or columns; all).")
@click.option(
    "--region",
    "regions",
    multiple=True,
    metavar="NAME=EXPR",
    help="Region for the sums of weights, e.g. 'central=x0 > -1 && x0 < 1' (repeatable).",
)
@click.option(
    "--method",
    type=click.Choice(["regression", "classifier"]),
    default="regression",
    show_default=True,
)
@click.option("--resample", is_flag=True, help="Nachman-Thaler resampling (keeps sum w^2).")
@click.option("--hidden", default="32,32", show_default=True, help="Hidden layer widths.")
@click.option("--folds", type=int, default=2, show_default=True, help="Cross-fitting folds.")
@click.option("--epochs", type=int, help="Epochs (default: 60, or enough for 800 steps).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--bins", type=int, default=20, show_default=True, help="Bins per feature.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Report directory (default: OUT's stem + '_reweight').",
)
def reweight(
    file,
    out,
    column,
    tree,
    weight,
    features,
    weights_key,
    names,
    inputs,
    regions,
    method,
    resample,
    hidden,
    folds,
    epochs,
    seed,
    bins,
    report_dir,
):
    """Learn positive weights E[w|x] for the events of FILE and write a verification report
    (markdown, JSON, plots). FILE is ROOT, parquet, HDF5 or CSV (with --weight), or .npz
    (arrays x and signed w, or 1-D arrays with --weight). The output, of the same format,
    holds every original column unchanged plus the new weights (--column): ROOT one TTree of
    the same name (jagged collections nX/X_* carried over, other non-flat branches are an
    error), parquet every column type kept, HDF5 a copy of the file plus a dataset, CSV every
    line plus a value. Written atomically: nothing on error."""
    from ..weights.files import reweight_file

    region_map = {}
    for r in regions:
        name, _, expr = r.partition("=") if "=" in r else (r, "", r)
        region_map[name.strip()] = expr.strip()
    try:
        widths = tuple(int(h) for h in _list(hidden) or ())
    except ValueError:
        raise click.BadParameter(
            "not a list of integers (e.g. 64,64)", param_hint="--hidden"
        ) from None
    res = _run(
        reweight_file,
        file,
        out,
        tree=tree,
        weight=weight,
        features=_list(features),
        weights_key=weights_key,
        column=column,
        names=_list(names),
        inputs=_list(inputs),
        regions=region_map or None,
        report_dir=report_dir,
        bins=bins,
        method=method,
        resampling=resample,
        folds=folds,
        seed=seed,
        hidden=widths,
        epochs=epochs,
    )
    _emit(res)


STUDY_DEFAULTS = {  # seeds, epochs
    "neos-blobs": (7, 15),
    "cuts": (3, 20),
    "inferno": (5, 80),
    "significance": (3, 20),
    "negative-weights": (3, 60),
}


@main.command()
@click.argument("name", type=click.Choice(sorted(STUDY_DEFAULTS)))
@click.option("--out", default="docs/studies", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--seeds",
    type=int,
    help="Seeds (neos-blobs: 7, cuts: 3, inferno: 5, significance: 3, negative-weights: 3).",
)
@click.option(
    "--epochs", type=int, help="Epochs per run (neos-blobs: 15, cuts: 20, inferno: 80, ...)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="inferno only: runs trained at once, each in its own process (default 1; on a CPU "
    "machine, its number of cores).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    help="Where the training runs go (reused; default runs/NAME).",
)
@_overrides
def study(name, out, seeds, epochs, runs_dir, workers, overrides):
    """Run a reproducible study into OUT: neos-blobs (the neos paper's Figure 3), cuts
    (selection cuts and a neural observable, alone and together, and the skim trade-off),
    inferno (INFERNO's benchmark: every model on one protocol) or significance (the
    Elwood-Kruecker significance losses) or negative-weights (training weight strategies
    for negative event weights)."""
    from ..studies.cuts import cuts_study
    from ..studies.inferno import inferno_study
    from ..studies.negative_weights import negative_weights_study
    from ..studies.neos_blobs import neos_blobs
    from ..studies.significance import significance_study

    fn = {
        "neos-blobs": neos_blobs,
        "cuts": cuts_study,
        "inferno": inferno_study,
        "significance": significance_study,
        "negative-weights": negative_weights_study,
    }[name]
    default_seeds, default_epochs = STUDY_DEFAULTS[name]
    extra = {}
    if workers is not None:
        if name != "inferno":
            raise click.UsageError("--workers applies to the inferno study only")
        extra["workers"] = workers
    path = _run(
        fn,
        out,
        seeds=seeds or default_seeds,
        epochs=epochs or default_epochs,
        overrides=overrides,
        runs_dir=runs_dir or f"runs/{name}",
        **extra,
    )
    click.echo(f"study written to {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
