"""``diffhep exclusion`` (issue 21): the CLs of every signal point of a patchset in vmapped
batches, each equal to a single ``diffhep cls`` call and to pyhf; CSV and JSON output;
non-converged points reported (exit 1); bad patch files exit 2 naming the file.

The patchset is built from the published sbottom likelihoods (ATLAS ins1748602, RegionA)
the way HEPData's are, with pyhf's own digest (the reference)."""

from __future__ import annotations

import csv
import json

import pyhf
import pytest
from click.testing import CliRunner

import oracle
from diffhep.cli import main
from diffhep.stats.workspace import example_spec
from specs import make_sbottom_patchset

POINTS = ("sbottom_1300_850_60", "sbottom_1000_205_60", "sbottom_800_131_1")


def run(args):
    return CliRunner().invoke(main, args)


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sbottom_patchset(sbottom_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exclusion")
    region = sbottom_dir / "RegionA"
    bkg, patchset = make_sbottom_patchset(region, POINTS)
    ws_path, ps_path = tmp / "BkgOnly.json", tmp / "patchset.json"
    ws_path.write_text(json.dumps(bkg))
    ps_path.write_text(json.dumps(patchset))
    return ws_path, ps_path, tmp


@pytest.fixture(scope="module")
def sbottom_grid(sbottom_patchset):
    """One run over the three points, in batches of 2 (the last one padded)."""
    ws_path, ps_path, tmp = sbottom_patchset
    out = tmp / "grid.csv"
    result = run(["exclusion", str(ws_path), str(ps_path), "--batch-size", "2", "--out", str(out)])
    return result, out


@pytest.mark.slow
def test_every_point_equals_single_cls_and_pyhf(sbottom_patchset, sbottom_grid):
    ws_path, ps_path, _ = sbottom_patchset
    result, _ = sbottom_grid
    assert result.exit_code == 0, result.output
    rows = lines(result)
    assert [r["point"] for r in rows] == list(POINTS)
    ws = pyhf.Workspace(json.loads(ws_path.read_text()))
    ps = pyhf.PatchSet(json.loads(ps_path.read_text()))
    assert all(row["converged"] is True for row in rows)
    for row in rows[1:]:  # the padded last batch, and a point of a full batch
        single = run(["cls", str(ws_path), "-p", str(ps_path), "--patch-name", row["point"]])
        assert single.exit_code == 0, single.output
        one = json.loads(single.stdout)
        assert row["CLs_obs"] == pytest.approx(one["CLs_obs"], rel=1e-6, abs=1e-9)
        assert row["CLs_exp"] == pytest.approx(one["CLs_exp"], rel=1e-6, abs=1e-9)
    for row in rows[:1]:  # pyhf (numpy, guarded): ~8 s per point
        model = ws.model(patches=[ps[row["point"]]])
        obs, exp = oracle.hypotest(1.0, ws.data(model), model, return_expected_set=True)
        assert row["CLs_obs"] == pytest.approx(float(obs), abs=1e-5)
        assert row["CLs_exp"] == pytest.approx([float(e) for e in exp], abs=1e-5)


@pytest.mark.slow
def test_csv_matches_the_json_lines(sbottom_grid):
    result, out = sbottom_grid
    assert result.exit_code == 0, result.output
    with out.open() as f:
        table = list(csv.DictReader(f))
    rows = lines(result)
    assert [t["point"] for t in table] == [r["point"] for r in rows]
    for t, r in zip(table, rows, strict=True):
        assert float(t["CLs_obs"]) == r["CLs_obs"]
        exp = [float(t[k]) for k in ("CLs_exp_m2", "CLs_exp_m1", "CLs_exp_0", "CLs_exp_p1",
                                     "CLs_exp_p2")]  # fmt: skip
        assert exp == r["CLs_exp"] and t["converged"] == "True"


def _small_points(tmp_path):
    """The 2-bin example workspace without signal, and two signal patch files."""
    spec = example_spec()
    bkg = json.loads(json.dumps(spec))
    signal = bkg["channels"][0]["samples"].pop(0)
    ws_path = tmp_path / "bkg.json"
    ws_path.write_text(json.dumps(bkg))
    for name, scale in (("s1", 1.0), ("s2", 2.0)):
        sample = {**signal, "name": f"signal_{name}", "data": [scale * x for x in signal["data"]]}
        ops = [{"op": "add", "path": "/channels/0/samples/0", "value": sample}]
        (tmp_path / f"patch.{name}.json").write_text(json.dumps(ops))
    return ws_path, spec


def test_small_grid_from_a_glob_equals_pyhf(tmp_path):
    ws_path, spec = _small_points(tmp_path)
    result = run(["exclusion", str(ws_path), str(tmp_path / "patch.*.json")])
    assert result.exit_code == 0, result.output
    rows = lines(result)
    assert [r["point"] for r in rows] == ["s1", "s2"]
    for row, scale in zip(rows, (1.0, 2.0), strict=True):
        s = json.loads(json.dumps(spec))
        s["channels"][0]["samples"][0]["data"] = [scale * x for x in [12.0, 11.0]]
        ws = pyhf.Workspace(s)
        model = ws.model()
        obs, exp = oracle.hypotest(1.0, ws.data(model), model, return_expected_set=True)
        assert row["CLs_obs"] == pytest.approx(float(obs), abs=1e-6)
        assert row["CLs_exp"] == pytest.approx([float(e) for e in exp], abs=1e-6)


def test_one_point_at_a_time_is_the_cls_kernel_compiled_once(tmp_path):
    """On CPU (batch size 1) every point runs the kernel of ``diffhep cls``: the same
    numbers, bit for bit, and one compilation for both points (their signal samples are
    named differently) and for the single ``cls`` calls after them."""
    from diffhep.stats import exported

    ws_path, _ = _small_points(tmp_path)
    exported._LOADED.clear()
    result = run(["exclusion", str(ws_path), str(tmp_path / "patch.*.json")])
    assert result.exit_code == 0, result.output
    assert len(exported._LOADED) == 1
    for row in lines(result):
        single = run(["cls", str(ws_path), "-p", str(tmp_path / f"patch.{row['point']}.json")])
        assert single.exit_code == 0, single.output
        one = json.loads(single.stdout)
        assert (row["CLs_obs"], row["CLs_exp"]) == (one["CLs_obs"], one["CLs_exp"])
    assert len(exported._LOADED) == 1


def test_non_converged_points_are_reported_and_exit_1(tmp_path):
    ws_path, _ = _small_points(tmp_path)
    out = tmp_path / "grid.csv"
    result = run(
        ["exclusion", str(ws_path), str(tmp_path / "patch.*.json"), "--max-steps", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = lines(result)
    assert [r["point"] for r in rows] == ["s1", "s2"]  # reported, not dropped
    assert all(r["converged"] is False and r["CLs_obs"] is None for r in rows)
    assert "did not converge" in result.stderr and "s1" in result.stderr
    assert "False" in out.read_text()


@pytest.mark.parametrize("batch", ["1", "2"])
def test_a_point_whose_own_patch_is_bad_is_reported_and_the_others_computed(tmp_path, batch):
    """A new user's trial: RegionB's published patch.sbottom_1500_1495_60.json only removes a
    channel (no signal sample, so no POI): at that point the whole grid of 218 stopped with
    exit 2, no CSV and no plot. Now the point is reported with its error (CLs null) in the
    JSON lines and the CSV, every other point is computed as before, and the command exits 2
    (bad input) naming the point and the message."""
    ws_path, _ = _small_points(tmp_path)
    other = {"name": "other", "data": [1.0, 1.0], "modifiers": []}  # no normfactor mu
    nosignal = [{"op": "add", "path": "/channels/0/samples/0", "value": other}]
    (tmp_path / "patch.s0.json").write_text(json.dumps(nosignal))  # (sorted first)
    # a channel without samples (a traceback in the check of the patched document before)
    empty = [{"op": "remove", "path": "/channels/0/samples/0"}]
    (tmp_path / "patch.s3.json").write_text(json.dumps(empty))
    good = run(["exclusion", str(ws_path), str(tmp_path / "patch.s1.json"),
                str(tmp_path / "patch.s2.json"), "--batch-size", batch])  # fmt: skip
    assert good.exit_code == 0, good.output
    out = tmp_path / "grid.csv"
    result = run(["exclusion", str(ws_path), str(tmp_path / "patch.*.json"), "--batch-size",
                  batch, "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    rows = lines(result)
    assert [r["point"] for r in rows] == ["s0", "s1", "s2", "s3"]
    assert all(rows[i]["CLs_obs"] is None and rows[i]["converged"] is False for i in (0, 3))
    assert "parameter of interest" in rows[0]["error"] and rows[0]["error"].startswith("s0: ")
    assert "this point's patch adds no signal sample" in rows[0]["error"]  # (its fix)
    assert "has no sample" in rows[3]["error"] and rows[3]["error"].startswith("s3: ")
    assert rows[1:3] == lines(good)  # the other points as without the bad ones
    assert "2 of 4 point(s) could not be computed" in result.stderr
    assert "error: s0: " in result.stderr and "error: s3: " in result.stderr
    table = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["point"] for r in table] == ["s0", "s1", "s2", "s3"]
    assert "parameter of interest" in table[0]["error"] and table[1]["error"] == ""


def test_invalid_patched_documents_and_options_are_reported_as_cls_reports_them(tmp_path):
    """A review: a point's patched document is not checked against the schema (fast), and a
    patch adding a sample without 'modifiers' (KeyError) or removing the only measurement
    (IndexError) ended the whole grid with a traceback, exit 1; a batch's renaming of the
    added samples changed the message; a mistaken --measurement was blamed on every point.
    Now such a point gets the schema's message as in ``cls -p``, the same at every batch
    size, and --measurement is checked once, before any point."""
    ws_path, _ = _small_points(tmp_path)
    nomod = [{"op": "add", "path": "/channels/0/samples/0",
              "value": {"name": "sig_str", "data": [1.0, 2.0]}}]  # fmt: skip
    (tmp_path / "patch.a.json").write_text(json.dumps(nomod))
    (tmp_path / "patch.b.json").write_text(
        json.dumps([{"op": "remove", "path": "/measurements/0"}])
    )
    args = ["exclusion", str(ws_path), str(tmp_path / "patch.a.json"),
            str(tmp_path / "patch.b.json"), str(tmp_path / "patch.s1.json")]  # fmt: skip
    rows = {}
    for batch in ("1", "2"):
        result = run([*args, "--batch-size", batch])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        rows[batch] = lines(result)
        assert [r["point"] for r in rows[batch]] == ["a", "b", "s1"]
        assert "'modifiers' is a required property" in rows[batch][0]["error"]
        assert "fix: add the missing key in the patch; or " in rows[batch][0]["error"]
        assert "at measurements: " in rows[batch][1]["error"]
        assert rows[batch][2]["converged"] is True
    assert [r.get("error") for r in rows["1"]] == [r.get("error") for r in rows["2"]]
    typo = run([*args, "--measurement", "nope"])
    assert typo.exit_code == 2 and not lines(typo), typo.output  # before any point
    assert "no measurement named 'nope'" in typo.output and "at --measurement" in typo.output


def test_a_mass_pattern_is_checked_before_any_fit_also_without_a_plot(tmp_path):
    """A review: with --out but no --plot the pattern was compiled once the points were
    computed, and a field named twice or not a name ('{0}') ended in a traceback (exit 1, no
    CSV); the CSV's mass columns were numbers formatted with 6 digits (1234567 ->
    1.23457e+06). Now a bad pattern exits 2 before any fit; the columns hold the text."""
    from diffhep.plotting.exclusion import point_fields

    ws_path, _ = _small_points(tmp_path)
    out = tmp_path / "grid.csv"
    for pattern in ("s{m}{m}", "s{0}"):
        result = run(["exclusion", str(ws_path), str(tmp_path / "patch.*.json"), "--out",
                      str(out), "--mass-pattern", pattern])  # fmt: skip
        assert result.exit_code == 2 and not lines(result), result.output
        assert "Traceback" not in result.output and "at --mass-pattern" in result.output
        assert not out.exists()
    found = point_fields(["sb_1234567_1300.125", "other"], "sb_{a}_{b}", text=True)
    assert found == [{"a": "1234567", "b": "1300.125"}, None]


def test_a_mass_field_that_is_no_axis_must_be_fixed_before_any_fit(tmp_path):
    """A new user's trial: the README's own example (RegionA, 'sbottom_{m1}_{m2}_{m3}' with
    --x m1 --y m2) drew one contour through points of eleven values of m3 (spurious fingers
    and islands), silently, and a pattern with a literal (one slice) was refused once the
    points were computed. Now a field that varies without being an axis is an error before
    any fit (it names the field and the largest slice); a literal selects the slice, the
    other points are computed and not drawn (a note), and the CSV has the mass columns."""
    ws_path, _ = _small_points(tmp_path)
    names = {"sb_100_10_60": 1.0, "sb_200_10_60": 2.0, "sb_100_50_60": 0.5,
             "sb_200_50_60": 3.0, "sb_100_10_1": 1.5}  # fmt: skip
    signal = example_spec()["channels"][0]["samples"][0]
    for name, scale in names.items():
        sample = {**signal, "name": name, "data": [scale * x for x in signal["data"]]}
        ops = [{"op": "add", "path": "/channels/0/samples/0", "value": sample}]
        (tmp_path / f"patch.{name}.json").write_text(json.dumps(ops))
    args = ["exclusion", str(ws_path), str(tmp_path / "patch.sb_*.json"), "--plot",
            str(tmp_path / "excl.png"), "--x", "m1", "--y", "m2"]  # fmt: skip
    mixed = run([*args, "--mass-pattern", "sb_{m1}_{m2}_{m3}"])
    assert mixed.exit_code == 2 and not lines(mixed), mixed.output  # before any fit
    assert "'m3' takes 2 values" in mixed.output and "'sb_{m1}_{m2}_60'" in mixed.output
    assert "Traceback" not in mixed.output
    nothing = run([*args, "--mass-pattern", "sbottom_{m1}_{m2}"])
    assert nothing.exit_code == 2 and not lines(nothing)
    assert "no point name matches" in nothing.output
    out = tmp_path / "grid.csv"
    sliced = run([*args, "--mass-pattern", "sb_{m1}_{m2}_60", "--out", str(out)])
    assert sliced.exit_code == 0, sliced.output
    assert len(lines(sliced)) == 5  # every point computed
    assert "1 of 5 point(s) do not match" in sliced.stderr
    assert (tmp_path / "excl.png").stat().st_size > 1000
    table = {r["point"]: r for r in csv.DictReader(out.read_text().splitlines())}
    assert (table["sb_200_50_60"]["m1"], table["sb_200_50_60"]["m2"]) == ("200", "50")
    assert table["sb_100_10_1"]["m1"] == ""  # not of the slice


def test_bad_patch_file_exits_2_naming_it(tmp_path):
    ws_path, _ = _small_points(tmp_path)
    bad = tmp_path / "broken.json"
    bad.write_text('{"op": "add"')
    result = run(["exclusion", str(ws_path), str(tmp_path / "patch.s1.json"), str(bad)])
    assert result.exit_code == 2, result.output
    assert str(bad) in result.output and "Traceback" not in result.output
    notpatch = tmp_path / "notpatch.json"
    notpatch.write_text('{"channels": []}')
    result = run(["exclusion", str(ws_path), str(notpatch)])
    assert result.exit_code == 2 and str(notpatch) in result.output
    result = run(["exclusion", str(ws_path), str(tmp_path / "nothing*.json")])
    assert result.exit_code == 2 and "nothing*.json" in result.output


def test_plot_draws_the_contours(tmp_path):
    from diffhep.plotting.exclusion import parse_points, plot_exclusion

    names = [f"sb_{a}_{b}_60" for a in (100, 200, 300) for b in (10, 50, 90)]
    xy = parse_points(names, "sb_{m1}_{m2}_{m3}", "m1", "m2")
    assert xy[4].tolist() == [200.0, 50.0]
    obs = [0.5 * 10 ** (-(x - 100) / 100) for x, _ in xy]  # crosses 0.05 near m1 = 200
    exp = [[c * f for f in (0.5, 0.7, 1.0, 1.4, 2.0)] for c in obs]
    path = tmp_path / "excl.png"
    plot_exclusion(xy, obs, exp, path)
    assert path.stat().st_size > 1000


@pytest.mark.slow
def test_workers_give_the_same_points(tmp_path):
    ws_path, _ = _small_points(tmp_path)
    args = ["exclusion", str(ws_path), str(tmp_path / "patch.*.json"), "--batch-size", "1"]
    local, spread = run(args), run([*args, "--workers", "1"])
    assert local.exit_code == 0 and spread.exit_code == 0, spread.output
    assert lines(spread) == lines(local)


def test_a_poi_value_outside_the_bounds_exits_2_as_cls_does(tmp_path):
    ws_path, _ = _small_points(tmp_path)
    grid = run(["exclusion", str(ws_path), str(tmp_path / "patch.*.json"), "--poi-value", "1e9"])
    single = run(["cls", str(ws_path), "-p", str(tmp_path / "patch.s1.json"), "--poi-value",
                  "1e9"])  # fmt: skip
    assert grid.exit_code == single.exit_code == 2
    assert "outside the bounds" in grid.output and "a fit cannot test it" in grid.output
    message = next(x for x in grid.stderr.splitlines() if "outside the bounds" in x)
    # said once for every point (an option, not the points' own input), as cls says it
    assert message.startswith("error: all 2 point(s) without CLs (of 2), for one reason: ")
    cut = "at --poi-value: "
    assert message.split(cut)[1] == single.output.splitlines()[0].split(cut)[1]


def test_collinear_points_and_a_bad_figure_suffix_exit_2_without_a_traceback(tmp_path):
    """A new user's review: points on a line (every m1 the same) made qhull's Delaunay
    triangulation raise after the work (a traceback, exit 1); a --plot suffix matplotlib
    cannot write failed in savefig after the work. Now a clear error, exit 2: the suffix
    before any work, the line of points where the figure is drawn (the results printed)."""
    from diffhep.errors import DiffhepError
    from diffhep.plotting.exclusion import plot_exclusion

    xy = [[400.0, m2] for m2 in (10.0, 50.0, 90.0, 130.0)]
    exp = [[0.01, 0.02, 0.05, 0.1, 0.2]] * 4
    with pytest.raises(DiffhepError, match="lie on a line"):
        plot_exclusion(xy, [0.05] * 4, exp, tmp_path / "line.png")
    ws_path, _ = _small_points(tmp_path)
    args = ["exclusion", str(ws_path), str(tmp_path / "patch.*.json"), "--mass-pattern",
            "s{m1}", "--x", "m1", "--y", "m1"]  # fmt: skip
    result = run([*args, "--plot", str(tmp_path / "g.xyz")])
    assert result.exit_code == 2 and "no figure format" in result.output
    assert "Traceback" not in result.output and not lines(result)  # refused before the work
    result = run([*args, "--plot", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "a contour needs" in result.output, result.output
    assert "Traceback" not in result.output and len(lines(result)) == 2  # (two points here)


def test_interpolation_codes_as_for_cls(tmp_path):
    """``exclusion`` takes --normsys-code/--histosys-code like the other statistics
    commands (it had none): each point as the single ``cls`` with the same codes."""
    ws_path, _ = _small_points(tmp_path)
    codes = ["--normsys-code", "code1", "--histosys-code", "code0"]
    grid = run(["exclusion", str(ws_path), str(tmp_path / "patch.s1.json"), *codes])
    single = run(["cls", str(ws_path), "-p", str(tmp_path / "patch.s1.json"), *codes])
    assert grid.exit_code == single.exit_code == 0, grid.output
    one = json.loads(single.stdout)
    assert lines(grid)[0]["CLs_obs"] == one["CLs_obs"]


def test_patch_errors_name_the_patch_and_a_patch_is_no_workspace(tmp_path):
    """A patch that does not fit the workspace was reported against the workspace alone
    (`BkgOnly.json: the patch does not apply`), so with several -p one could not tell which;
    a patch given as WORKSPACE dumped its operations as a schema error."""
    ws_path, _ = _small_points(tmp_path)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"op": "remove", "path": "/channels/0/samples/7"}]))
    result = run(["cls", str(ws_path), "-p", str(tmp_path / "patch.s1.json"), "-p", str(wrong)])
    assert result.exit_code == 2 and f"with the patch {wrong}" in result.output, result.output
    result = run(["cls", str(tmp_path / "patch.s1.json")])
    assert result.exit_code == 2 and "this is a JSON patch" in result.output, result.output
    assert "-p" in result.output and "'op'" not in result.output


def test_output_file_in_a_new_directory_and_ranking_top_at_least_1(tmp_path):
    """--output-file made its directory no more than --plot did (exit 2 'cannot write' for
    a directory --plot would have made); ranking's --top accepted 0 and negative numbers
    (an empty plot, or all but the last parameters)."""
    ws_path, _ = _small_points(tmp_path)
    out = tmp_path / "new" / "dir" / "cls.json"
    result = run(["cls", str(ws_path), "-p", str(tmp_path / "patch.s1.json"),
                  "--output-file", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["CLs_obs"] > 0
    for top in ("0", "-3"):
        result = run(["ranking", str(ws_path), "-p", str(tmp_path / "patch.s1.json"), "--top", top])
        assert result.exit_code == 2 and "--top" in result.output
