"""``diffhep demo``: the options of the training demo are refused with --statistics-only
(a new user's trial: ``--out DIR`` was silently ignored there)."""

from __future__ import annotations

from click.testing import CliRunner

from diffhep.cli import main


def test_statistics_only_refuses_the_options_of_the_training_demo(tmp_path):
    out = tmp_path / "demo"
    both = ["--out", str(out), "--set", "training.epochs=1"]
    cases = ((["--out", str(out)], "--out is"), (both, "--out and --set are"))
    for args, named in cases:
        result = CliRunner().invoke(main, ["demo", "--statistics-only", *args])
        assert result.exit_code == 2, result.output
        assert f"{named} for the training demo" in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()
