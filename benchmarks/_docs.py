"""Shared by the benchmark scripts: replace (or append) one section of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(output, heading: str, text: str) -> None:
    """Replace the section that starts with ``heading`` in ``output`` by ``text`` (appended
    when absent; the file is created with a title), written atomically."""
    path = Path(output)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(heading) + r".*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old + "\n" + text
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)
