"""The README's snippets are valid: every YAML block parses and its expressions are diffhep's."""

import re
from pathlib import Path

import pytest
import yaml

from diffhep.io.expressions import Expression

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("text", _blocks("yaml"))
def test_yaml_snippets_parse(text):
    assert isinstance(yaml.safe_load(text), dict)


def _expressions(node, key=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _expressions(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _expressions(v, key)
    elif key in ("weight", "filter") and isinstance(node, str):
        yield node


def test_ntuple_snippet_expressions_parse():
    """Weights and filters of the README's ntuple config are whole expressions (no '...')."""
    docs = [yaml.safe_load(t) for t in _blocks("yaml") if "samples" in t]
    assert len(docs) >= 2  # the ntuple config and what an analysis needs besides
    found = [e for doc in docs for e in _expressions(doc["analysis"])]
    assert len(found) >= 6
    for text in found:
        Expression(text)
