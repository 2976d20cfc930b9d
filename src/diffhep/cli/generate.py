"""``diffhep generate``: the built-in event generators written as files."""

from __future__ import annotations

import sys

import click

from .common import emit


@click.group()
def generate():
    """Write the events of a built-in generator as files (ROOT, parquet)."""


@generate.command("ttbar-resonance")
@click.option("--events", required=True, type=click.IntRange(min=1),
              help="Simulated events in total (shared between the samples; pseudo-data "
              "follow the luminosity).")  # fmt: skip
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--seed", default=0, show_default=True, help="Seed of every chunk's stream.")
@click.option("--chunk-size", default=500_000, show_default=True, type=click.IntRange(min=1),
              help="Events per file (memory follows it).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["root", "parquet", "both"]), default="root",
              show_default=True, help="File format.")  # fmt: skip
@click.option("--lumi", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Integrated luminosity (fb^-1) of the yields and the pseudo-data.")  # fmt: skip
@click.option("--data/--no-data", default=True, show_default=True, help="Write pseudo-data.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def ttbar_resonance(events, out, seed, chunk_size, fmt, lumi, data, progress):
    """A semileptonic Z' -> ttbar search in NanoAOD layout: three Z' masses, ttbar, single top,
    W+jets, QCD and pseudo-data, with JES/JER jet-pT variations and weight variations
    (src/diffhep/data/ttbar_resonance.yaml is its analysis config)."""
    from ..errors import DiffhepError
    from ..problems.ttbar_resonance import SAMPLES
    from ..problems.ttbar_resonance import generate as run_generator
    from ..writers import check_writable_dir

    formats = ("root", "parquet") if fmt == "both" else (fmt,)
    try:
        check_writable_dir(out, where="--out")
        mc = sum(max(1, round(events * s[3])) for s in SAMPLES.values())
        with click.progressbar(length=mc, label="generating", file=sys.stderr,
                               hidden=not progress) as bar:  # fmt: skip
            record = run_generator(out, events=events, seed=seed, chunk_size=chunk_size,
                                   formats=formats, lumi=lumi, data=data,
                                   progress=bar.update)  # fmt: skip
    except DiffhepError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    emit({k: {"events": v["events"], "files": len(v["files"])}
          for k, v in record["samples"].items()})  # fmt: skip


COMMANDS = [generate]
