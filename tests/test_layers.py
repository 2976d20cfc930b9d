"""The package's layers: imports only go downward, no cycles, no cross-package private names.

The layers (ARCHITECTURE.md), from the bottom: the top-level helpers (errors, types, writers),
plotting, stats, cache (the on-disk cache of the statistics' kernels), nn, analysis, io,
weights, problems, runs, search, studies, cli, and the public API (``diffhep/__init__``). A
module may import from its own layer and the layers below it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffhep"
LAYERS = [
    {"errors", "lazy", "types", "writers"},
    {"plotting"},
    {"stats"},
    {"cache"},
    {"nn"},
    {"surrogate"},
    {"analysis"},
    {"io"},
    {"weights"},
    {"problems"},
    {"runs"},
    {"search"},
    {"studies"},
    {"cli", "__main__"},
    {"__init__", "infer"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """(imported module, imported names) of every import in ``path`` (function-level too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("diffhep"):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("diffhep"):
                continue
            names = [a.name for a in node.names]
            subs = [
                f"{mod}.{n}"
                for n in names
                if (SRC.parent / f"{mod}.{n}".replace(".", "/")).with_suffix(".py").exists()
                or (SRC.parent / f"{mod}.{n}".replace(".", "/")).is_dir()
            ]
            if subs:
                for s in subs:
                    yield s, []
                rest = [n for n in names if f"{mod}.{n}" not in subs]
                if rest:
                    yield mod, rest
            else:
                yield mod, names


def _graph():
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        graph[_module_name(path)] = list(_imports(path))
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    assert not {_layer(m) for m in _graph()} - set(RANK)


def test_imports_only_go_downward():
    upward = [
        f"{m} -> {dep}"
        for m, deps in _graph().items()
        for dep, _ in deps
        if dep != "diffhep" and RANK[_layer(dep)] > RANK[_layer(m)]
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_cross_package_private_names():
    bad = [
        f"{m} takes {dep}.{n}"
        for m, deps in _graph().items()
        for dep, names in deps
        for n in names
        if n.startswith("_") and n != "__version__" and _layer(dep) != _layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {d for d, _ in deps if d in _graph_names()} for m, deps in _graph().items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == node or (nxt in stack and nxt == node.rpartition(".")[0]):
                continue
            if state.get(nxt) == 1 and not _is_package_parent(nxt, node):
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _graph_names():
    return {_module_name(p) for p in SRC.rglob("*.py")}


def _is_package_parent(a: str, b: str) -> bool:
    """A package's ``__init__`` and its own submodules may refer to each other lazily."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def _loaded(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("code", "forbidden"),
    [
        ("import diffhep", {"jax", "diffhep.stats.solver"}),
        ("import diffhep.cli", {"jax", "diffhep.stats.solver"}),
        ("import diffhep.io.sources", {"diffhep.stats.solver", "diffhep.stats.hypotest"}),
        ("import diffhep.runs.config", {"diffhep.stats.solver", "diffhep.analysis.pipeline"}),
        # a warm `cls` loads its compiled kernel: no schema validation of a text validated
        # before, no special functions that only a trace needs (~30 ms of CPU of each command)
        ("import diffhep.stats.workflows", {"jsonschema", "jax._src.scipy.special"}),
        *[
            (f"from diffhep.cli import main\nmain({args!r}, standalone_mode=False)", {"jax"})
            for args in (
                ["--help"],
                ["cls", "--help"],
                ["train", "--help"],
                ["fit", "-h"],
                ["optimize", "--help"],
                *[
                    [c, "--help"]
                    for c in (
                        "pulls",
                        "ranking",
                        "correlations",
                        "yields",
                        "scan",
                        "significance",
                        "gof",
                    )
                ],
            )
        ],
    ],
)
def test_light_imports(code, forbidden):
    """A reader, the config and the CLI's start-up load no statistics (and no JAX); the
    help of any command starts no JAX (the set-up runs when a command runs)."""
    assert not _loaded(code) & forbidden


def test_every_package_is_a_regular_package_and_tracked():
    """Each source folder has an ``__init__.py`` and no source file is git-ignored.

    A folder without ``__init__.py`` imports as a namespace package here, but
    ``--doctest-modules`` on a clean clone cannot import its modules (this broke CI
    once, when ``.gitignore``'s ``runs/`` also matched ``src/diffhep/runs/``).
    """
    folders = {p.parent for p in SRC.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders without __init__.py: {missing}"
    root = SRC.parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(root)) for p in SRC.rglob("*.py") if "__pycache__" not in p.parts]
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *files], cwd=root, capture_output=True, text=True
    )
    assert out.stdout.strip() == "", f"source files ignored by .gitignore:\n{out.stdout}"


def test_every_module_is_listed_in_architecture():
    """ARCHITECTURE.md's module list has a line for every module (package ``__init__`` and
    ``__main__`` files apart): a new or moved module gets its line in the same change."""
    text = (SRC.parents[1] / "ARCHITECTURE.md").read_text()
    block = text.split("## Modules")[1].split("```")[1]
    listed = set()
    for line in block.splitlines():
        words = line.split()
        names = words[:1]
        while names and names[-1].endswith(",") and len(names) < len(words):
            names.append(words[len(names)])
        names = [n.rstrip(",") for n in names]
        folder = names[0].rpartition("/")[0] if names else ""
        listed |= {(folder, n.rpartition("/")[2]) for n in names}
    missing = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py")
        and (str(p.parent.relative_to(SRC)).replace(".", ""), p.name) not in listed
    ]
    assert not missing, "modules without a line in ARCHITECTURE.md:\n" + "\n".join(missing)
