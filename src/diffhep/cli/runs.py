"""Training runs: ``train``, ``evaluate``, ``demo``, ``apply``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import emit, overrides, run


def _print_summary(summary: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"test-set results ({out})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("expected_cls", "z0", "sigma_mu"):
        table.add_row(key, f"{summary[key]:.4g}")
    if "observed_cls" in summary:
        table.add_row("observed_cls", f"{summary['observed_cls']:.4g}")
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
    if summary.get("trusted") is False or summary.get("best_epoch_trusted") is False:
        table.add_row("trusted (test, best epoch)",
                      f"{summary.get('trusted')}, {summary.get('best_epoch_trusted')}")  # fmt: skip
    Console(stderr=False).print(table)
    for note in summary.get("untrusted", []):
        click.echo(f"warning: {note}", err=True)


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Run directory."
)
@overrides
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from a checkpoint in the run directory.",
)
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--signal", default=None, metavar="NAME",
              help="The signal sample of this run among several (analysis.signal).")  # fmt: skip
def train(config, out, overrides, resume, progress, signal):
    """Train the analysis described by CONFIG (YAML) into the run directory OUT."""
    from ..runs.config import load_config
    from ..runs.train import train_run

    def choose(doc):  # --signal: analysis.signal, named as --signal in the errors
        if isinstance(doc.get("analysis"), dict):
            doc["analysis"]["signal"] = signal
        else:
            doc["analysis"] = {"signal": signal}
        return [(("analysis", "signal"), f"--signal {signal}")]

    cfg = run(load_config, config, overrides, edit=choose if signal is not None else None)
    try:
        summary = run(train_run, cfg, out, file=config, resume=resume, progress=progress)
    except KeyboardInterrupt:  # (then "Aborted!", exit 130: cli._Main)
        click.echo(f"\ninterrupted: the run checkpoints every epoch in {out}; the same command "
                   "resumes from the last one (--no-resume starts again)", err=True)  # fmt: skip
        raise
    _print_summary(summary, out)
    click.echo(_written(out))
    _exit_if_incomplete(summary, out)


#: The artefacts of a run directory named after training, in this order.
_ARTEFACTS = ("summary.json", "workspace.json", "histograms.json", "model.eqx", "model.onnx",
              "plots", "report.html")  # fmt: skip


def _written(out) -> str:
    """The line naming the artefacts the run directory holds."""
    names = [n + ("/" if n == "plots" else "") for n in _ARTEFACTS if (Path(out) / n).exists()]
    return f"run directory: {out} ({', '.join(names)})"


def _exit_if_incomplete(summary: dict, out) -> None:
    """Exit 1 naming the artefacts that failed when a run is incomplete."""
    if summary.get("status") == "incomplete":
        click.echo(f"error: the run in {out} is incomplete (summary.json says so):", err=True)
        for name, why in summary.get("failed", {}).items():
            click.echo(f"  {name}: {why}", err=True)
        click.echo("  fix: the other artefacts are written; `diffhep evaluate "
                   f"{out}` writes them again", err=True)  # fmt: skip
        sys.exit(1)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def evaluate(run_dir):
    """Recompute the test-set metrics of the saved run RUN_DIR (writes summary.json)."""
    from ..runs.evaluate import evaluate_run

    summary = run(evaluate_run, run_dir)
    _print_summary(summary, run_dir)
    _exit_if_incomplete(summary, run_dir)


@click.command()
@click.option(
    "--out",
    default="diffhep-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory.",
)
@overrides
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
        ctx = click.get_current_context()
        from click.core import ParameterSource

        given = [flag for name, flag in (("out", "--out"), ("overrides", "--set"))
                 if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]  # fmt: skip
        if given:  # (silently ignored before)
            raise click.UsageError(
                f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} for the training "
                "demo: --statistics-only trains nothing and writes no files (it prints the CLs)"
            )
        from ..stats import workflows

        res = run(workflows.demo)
        click.echo(f"diffhep demo: {res['workspace']}")
        click.echo(f"  observed CLs  = {res['CLs_obs']:.6g}")
        band = ", ".join(f"{x:.4g}" for x in res["CLs_exp"])
        click.echo(f"  expected CLs  = [{band}]  (-2..+2 sigma)")
        click.echo(f"  ({time.perf_counter() - start:.1f} s including compilation)")
        return
    from ..runs.config import load_config
    from ..runs.prepare import DEMO_CONFIG
    from ..runs.train import train_run

    cfg = run(load_config, DEMO_CONFIG, overrides)
    click.echo("diffhep demo: training a neural observable on the expected CLs (neos blobs)")
    summary = run(train_run, cfg, out, file=str(DEMO_CONFIG), resume=False)
    _print_summary(summary, out)
    click.echo(f"run directory: {out}; plots in {Path(out) / 'plots'}")
    click.echo(f"({time.perf_counter() - start:.1f} s including compilation)")
    _exit_if_incomplete(summary, out)


@click.command()
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
                           yield/scale normalisation): written with --sample, or
                           without it if all samples share one weight expression
                           (else a note says it is missing)

    An input feature more than 10 training standard deviations from the training mean
    in over 1 % of a file's events (a fill value, another unit) is warned of and recorded
    in the output metadata (input_warnings); the scores are written anyway.

    What these mean for the output (filter, cuts, weight) is stored in it as JSON: the
    parquet schema metadata / a ROOT TObjString, both named diffhep_metadata. Local and
    single-process unless --scheduler or --workers is given."""
    from ..io.apply import analysis_selection, apply_run

    if scheduler is not None and workers is not None:
        raise click.UsageError("--scheduler and --workers are mutually exclusive")
    res = run(apply_run, run_dir, files, out, tree=tree, step_size=step_size, keep=keep,
               fmt=fmt, sample=sample, scheduler=scheduler, workers=workers)  # fmt: skip
    emit(res)
    sel = run(analysis_selection, run_dir, sample)
    if sample is None and "--sample" in sel.note:
        click.echo("warning: diffhep_selected holds the selection cuts only: the samples' "
                   "filters differ; choose the sample whose filter applies with --sample",
                   err=True)  # fmt: skip
    if sel.weight is None and sel.weight_expressions:  # an ntuple run, no common weight
        click.echo("note: no diffhep_weight column (metadata weight: null): the samples' "
                   "weight expressions differ (e.g. data has none); choose the sample whose "
                   "weight applies with --sample", err=True)  # fmt: skip


COMMANDS = [train, evaluate, demo, apply]
