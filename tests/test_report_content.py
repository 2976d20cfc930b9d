"""What report.html says (issue 18 item 8): its metrics defined, the yields of the nominal
samples apart from the variation templates, and a per-bin table (edges, yields, S/B)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import yaml

from diffhep.runs.report import write_html


class _Tables(HTMLParser):
    """Every table as (preceding heading, rows of cell texts)."""

    def __init__(self):
        super().__init__()
        self.tables, self.heading, self._cell, self._row, self._in = [], "", None, None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3"):
            self._in, self.heading = tag, ""
        elif tag == "table":
            self.tables.append((self.heading, []))
        elif tag == "tr":
            self._row = []
            self.tables[-1][1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._in:
            self.heading += data


@pytest.fixture
def run_dir(tmp_path):
    cfg = {
        "analysis": {
            "samples": [
                {"name": "sig", "role": "signal"},
                {"name": "ttbar", "role": "background"},
                {"name": "wjets", "role": "background"},
            ],
            "shape_systematics": [
                {"name": "jes", "sample": "ttbar", "up": {"weight": "w"}, "down": "tt_dn"}
            ],
            "channels": [{"name": "SR", "bins": 2}],
        }
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    sumw = {"sig": [1.0, 4.0], "ttbar": [10.0, 2.0], "wjets": [6.0, 0.0],
            "ttbar_jes_up": [11.0, 2.5], "tt_dn": [9.0, 1.5]}  # fmt: skip
    sumw2 = {n: [0.25 * v for v in w] for n, w in sumw.items()}
    doc = {"format": "diffhep-histograms/1", "set": "test",
           "channels": {"SR": {"observable": "nn", "edges": [0.0, 0.25, 1.0],
                               "sumw": sumw, "sumw2": sumw2}}}  # fmt: skip
    (tmp_path / "histograms.json").write_text(json.dumps(doc))
    summary = {
        "expected_cls": 0.01,
        "sigma_mu": 0.4,
        "sigma_jes": 0.8,
        "yields": {n: sum(w) for n, w in sumw.items()},
        "status": "finished",
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def _parse(run_dir):
    p = _Tables()
    p.feed(write_html(run_dir).read_text())
    return {h.strip(): rows for h, rows in p.tables}, p


def test_metrics_are_defined(run_dir):
    tables, _ = _parse(run_dir)
    rows = {r[0]: r for r in tables["Test-set metrics"][1:]}
    assert tables["Test-set metrics"][0] == ["metric", "value", "meaning"]
    assert "test-split" in rows["expected_cls"][2] and "Asimov" in rows["expected_cls"][2]
    assert "diffhep fit" in rows["sigma_mu"][2] and "Fisher" in rows["sigma_mu"][2]
    assert "jes" in rows["sigma_jes"][2]
    page = (run_dir / "report.html").read_text()
    assert "test split" in page and "data.split.test" in page


def test_yields_table_has_no_variation_templates(run_dir):
    tables, _ = _parse(run_dir)
    (heading,) = [h for h in tables if h.startswith("Yields")]
    rows = {r[0]: float(r[1]) for r in tables[heading][1:]}
    assert list(rows) == ["sig", "ttbar", "wjets", "total background", "S/B"]
    assert rows["total background"] == 18.0 and rows["S/B"] == pytest.approx(5.0 / 18.0)
    templates = tables["Systematic variation templates"]
    assert [r[0] for r in templates[1:]] == ["ttbar_jes_up", "tt_dn"]
    assert [r[1] for r in templates[1:]] == ["jes up", "jes down"]
    assert float(templates[1][4]) == pytest.approx(13.5 / 12.0 - 1)


def test_per_bin_table(run_dir):
    tables, _ = _parse(run_dir)
    rows = tables["SR (neural observable)"]
    assert rows[0] == ["bin", "low edge", "high edge", "sig", "ttbar", "wjets",
                       "total background", "background MC stat.", "S/B"]  # fmt: skip
    first, second = rows[1], rows[2]
    assert [float(x) for x in first[1:3]] == [0.0, 0.25] and float(second[2]) == 1.0
    assert float(first[6]) == 16.0 and float(first[8]) == pytest.approx(1 / 16)
    assert float(first[7]) == pytest.approx((0.25 * 16) ** 0.5)  # sqrt(sum of sumw2)
    assert float(second[8]) == pytest.approx(4.0 / 2.0)
    assert "tt_dn" not in rows[0] and "ttbar_jes_up" not in rows[0]


def test_per_bin_table_without_background_says_so(run_dir):
    doc = json.loads((run_dir / "histograms.json").read_text())
    for n in ("ttbar", "wjets"):
        doc["channels"]["SR"]["sumw"][n] = [0.0, 0.0]
    (run_dir / "histograms.json").write_text(json.dumps(doc))
    tables, _ = _parse(run_dir)
    assert [r[8] for r in tables["SR (neural observable)"][1:]] == ["n/a", "n/a"]


def test_report_without_config_still_written(run_dir):
    (run_dir / "config.yaml").unlink()
    tables, _ = _parse(run_dir)
    (heading,) = [h for h in tables if h.startswith("Yields")]
    assert len(tables[heading]) == 1 + 5  # every event set, as it is
