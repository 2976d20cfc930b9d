"""Safe column expressions for weights, filters and features (``xsec * lumi * genWeight / sumw``).

An expression is parsed with :mod:`ast` and evaluated on a dict of columns; nothing is passed
to ``eval``. Allowed: column names (also dotted, ``Jet.pt``), numbers, ``True``/``False``,
arithmetic (``+ - * / // % **``), comparisons (also chained, ``0 < x < 1``), boolean logic
(``and or not``, ``& | ~``, and ROOT's ``&& || !``), calls of the functions in
:data:`FUNCTIONS`, and leading-object access ``Jet_pt[0]``.

Jagged columns (one list of objects per event, awkward arrays) are reduced to one value per
event by ``Jet_pt[i]`` (the i-th object as stored, **0 when the event has fewer objects**;
``num(Jet_pt) > i`` is the matching mask), ``num`` (objects per event) and ``sum``, ``max``,
``min``, ``mean`` over the objects of an event (0 for an event without objects). Element-wise
functions and arithmetic also work on jagged columns (``sum(Jet_pt * (Jet_btag > 0.5))``).

Example:
    >>> import numpy as np
    >>> e = Expression("xsec * lumi * genWeight / sumw")
    >>> sorted(e.names)
    ['genWeight', 'lumi', 'sumw', 'xsec']
    >>> cols = {"xsec": np.array([2.0, 2.0]), "lumi": 10.0, "genWeight": np.array([1.0, -1.0]),
    ...         "sumw": np.array([4.0, 4.0])}
    >>> e.evaluate(cols, 2).tolist()
    [5.0, -5.0]
    >>> Expression("x > 1 && !(y < 0)").evaluate({"x": np.array([0, 2]), "y": np.ones(2)}, 2)
    array([False,  True])
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

import numpy as np

from ..errors import DiffhepError

__all__ = ["BIG", "FUNCTIONS", "Expression", "ExpressionError", "windows"]


class ExpressionError(DiffhepError):
    """An expression that cannot be parsed or evaluated (names the expression)."""


def _ak():
    import awkward as ak

    return ak


def _is_jagged(v) -> bool:
    return type(v).__module__.startswith("awkward") and v.ndim > 1


def _reducer(name):
    def reduce(v):
        if not _is_jagged(v):
            raise TypeError(f"{name}() needs a jagged (per-object) column")
        ak = _ak()
        if name == "num":
            return ak.to_numpy(ak.num(v, axis=1))
        if name == "mean":
            return ak.to_numpy(ak.sum(v, axis=1)) / np.maximum(ak.to_numpy(ak.num(v, axis=1)), 1)
        out = getattr(ak, name)(v, axis=1)
        return ak.to_numpy(ak.fill_none(out, 0), allow_missing=False)

    return reduce


#: Functions an expression may call: numpy's element-wise functions and per-event reducers
#: of jagged collections.
FUNCTIONS = {
    **{
        n: getattr(np, n)
        for n in (
            "abs sqrt exp expm1 log log1p log2 log10 sin cos tan arcsin arccos arctan arctan2 "
            "sinh cosh tanh arcsinh arccosh arctanh hypot minimum maximum where clip floor ceil "
            "sign isfinite"
        ).split()
    },
    **{n: _reducer(n) for n in ("num", "sum", "max", "min", "mean")},
}

_BINOPS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
    ast.BitXor: np.logical_xor,
}
_COMPARE = {
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_FIX = (
    "use column names, numbers, arithmetic, comparisons, and/or/not, x[i] on collections "
    "and the functions of diffhep.io.expressions.FUNCTIONS (sqrt, log, abs, num, sum, max, ...)"
)
# ROOT / C++ spellings -> Python's: && -> and, || -> or, ! (not before =) -> not
_ROOT = (
    (re.compile(r"&&"), " and "),
    (re.compile(r"\|\|"), " or "),
    (re.compile(r"!(?!=)"), " not "),
)


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


class Expression:
    """A parsed expression.

    Args:
        text: The expression (Python or ROOT-style logic).

    Attributes:
        text: The expression as given.
        names: The column names it reads (functions are not names).

    Raises:
        ExpressionError: Syntax errors and anything outside the allowed grammar.
    """

    def __init__(self, text: str):
        self.text = str(text)
        source = self.text
        for pattern, repl in _ROOT:
            source = pattern.sub(repl, source)
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(
                f"cannot parse expression {self.text!r}: {exc.msg}",
                fix=_FIX,
            ) from None
        self._tree = tree.body
        self.names: frozenset = frozenset(self._check(self._tree))

    def __repr__(self):
        return f"Expression({self.text!r})"

    def _bad(self, what) -> ExpressionError:
        return ExpressionError(
            f"expression {self.text!r}: {what} is not allowed",
            fix=_FIX,
        )

    def _check(self, node) -> set:
        """Validate the grammar; return the column names."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float):
                return set()
            raise self._bad(f"the constant {node.value!r}")
        name = _dotted(node)
        if name is not None:
            if "__" in name:
                raise self._bad(f"the name {name!r}")
            return {name}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return self._check(node.left) | self._check(node.right)
        if isinstance(node, ast.UnaryOp) and isinstance(
            node.op, ast.USub | ast.UAdd | ast.Not | ast.Invert
        ):
            return self._check(node.operand)
        if isinstance(node, ast.BoolOp):
            return set().union(*(self._check(v) for v in node.values))
        if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
            return set().union(*(self._check(v) for v in (node.left, *node.comparators)))
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
                raise self._bad(f"calling {ast.unparse(node.func)!r}")
            if node.keywords:
                raise self._bad("a keyword argument")
            return set().union(set(), *(self._check(a) for a in node.args))
        if isinstance(node, ast.Subscript):
            i = node.slice
            if not (isinstance(i, ast.Constant) and type(i.value) is int and i.value >= 0):
                raise self._bad(f"the index [{ast.unparse(i)}] (use a number >= 0)")
            return self._check(node.value)
        raise self._bad(f"{type(node).__name__} ({ast.unparse(node)!r})")

    @property
    def canonical(self) -> str:
        """The expression in Python spelling, normalised (``a&&b`` -> ``a and b``)."""
        return ast.unparse(self._tree)

    def renamed(self, columns: Mapping[str, str]) -> Expression:
        """The same expression reading other columns (``{"Jet_pt": "Jet_pt_jesTotalUp"}``).

        Example:
            >>> Expression("sum(Jet_pt > 30) >= 4 && MET_pt > 20").renamed(
            ...     {"Jet_pt": "Jet_pt_jerUp"}).text
            'sum(Jet_pt_jerUp > 30) >= 4 and MET_pt > 20'
        """
        if not set(columns) & self.names:
            return self

        class _Rename(ast.NodeTransformer):
            def visit_Name(self, node):
                return ast.Name(columns.get(node.id, node.id), node.ctx)

        tree = _Rename().visit(ast.parse(ast.unparse(self._tree), mode="eval"))
        return Expression(ast.unparse(tree.body))

    def evaluate(self, columns: Mapping, n: int) -> np.ndarray:
        """The values for ``n`` events: a 1-D numpy array (booleans for a logical expression).

        Args:
            columns: Name -> 1-D numpy array, awkward jagged array or scalar constant.
            n: Number of events (a constant expression is broadcast to it).

        Raises:
            ExpressionError: Evaluation failed, or the result is per object (jagged) rather
                than per event.
        """
        try:
            with np.errstate(all="ignore"):
                v = self._eval(self._tree, columns)
        except ExpressionError:
            raise
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise ExpressionError(f"cannot evaluate {self.text!r}: {exc}") from None
        if _is_jagged(v):
            raise ExpressionError(
                f"expression {self.text!r} gives one value per object (a jagged collection), "
                "not one per event",
                fix="reduce it: x[0] (leading object), num(x), sum(x), max(x), or declare a "
                "collection under data.collections",
            )
        if type(v).__module__.startswith("awkward"):
            v = _ak().to_numpy(_ak().fill_none(v, 0))
        v = np.asarray(v)
        if v.ndim == 0:
            return np.full(n, v[()])
        return v

    def _eval(self, node, cols):
        if isinstance(node, ast.Constant):
            return node.value
        name = _dotted(node)
        if name is not None:
            return cols[name]
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, cols), self._eval(node.right, cols))
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, cols)
            if isinstance(node.op, ast.USub):
                return np.negative(v)
            if isinstance(node.op, ast.UAdd):
                return v
            return np.logical_not(v)
        if isinstance(node, ast.BoolOp):
            f = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = self._eval(node.values[0], cols)
            for other in node.values[1:]:
                out = f(out, self._eval(other, cols))
            return out
        if isinstance(node, ast.Compare):
            out, left = True, self._eval(node.left, cols)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comp, cols)
                out = np.logical_and(out, _COMPARE[type(op)](left, right))
                left = right
            return out
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*(self._eval(a, cols) for a in node.args))
        # ast.Subscript: the i-th object of each event, 0 where the event has fewer
        v, i = self._eval(node.value, cols), node.slice.value
        if not _is_jagged(v):
            raise ExpressionError(
                f"expression {self.text!r}: {ast.unparse(node.value)!r} is not a jagged "
                "collection, it cannot be indexed"
            )
        ak = _ak()
        return ak.to_numpy(ak.fill_none(ak.pad_none(v, i + 1, axis=1)[:, i], 0))


#: The open ends of a window (the largest float32: features are float32 and finite).
BIG = float(np.finfo(np.float32).max)


def _f32_next(c: float) -> float:
    """The next float32 above ``c`` (features are float32: ``v > c`` is ``v >= next(c)``)."""
    return float(np.nextafter(np.float32(c), np.float32(np.inf)))


def windows(text: str, features) -> list[tuple[str, float, float]]:
    """A conjunction of comparisons of features with numbers as windows ``[lo, hi)``.

    ``text`` is a filter (``&&``/``and`` of comparisons such as ``nb >= 2``, ``0 < x < 1``,
    ``n == 4``); each compared side that is not a number must be one of ``features`` (written
    as that feature is, up to spacing and ROOT/Python spelling). Strict bounds become the next
    float32 value (features are float32); open ends are ``+-BIG`` (the largest float32, so
    that the windows stay finite numbers in JSON).

    Example:
        >>> w = windows("sum(Jet_btag > 0.5) >= 2 && MET_pt < 80", ["MET_pt", "sum(Jet_btag>0.5)"])
        >>> w == [("sum(Jet_btag>0.5)", 2.0, BIG), ("MET_pt", -BIG, 80.0)]
        True

    Raises:
        ExpressionError: Anything but a conjunction of feature-number comparisons, or a
            feature that is not among ``features``.
    """
    e = Expression(text)
    canon = {Expression(f).canonical: f for f in features}
    fix = (
        "write the filter as comparisons of features with numbers joined by && "
        "(e.g. 'nb >= 2 && MET_pt > 20'); a compared quantity must be one of data.features: "
        + ", ".join(map(str, features))
    )
    parts = e._tree.values if isinstance(e._tree, ast.BoolOp) else [e._tree]
    if isinstance(e._tree, ast.BoolOp) and not isinstance(e._tree.op, ast.And):
        raise ExpressionError(f"filter {text!r}: 'or' is not a window", fix=fix)
    out = []

    def number(node):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = number(node.operand)
            return None if v is None else -v
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in ("inf",):
            return BIG
        return None

    flip = {ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Eq: ast.Eq}
    for node in parts:
        if not isinstance(node, ast.Compare):
            raise ExpressionError(
                f"filter {text!r}: {ast.unparse(node)!r} is not a comparison", fix=fix
            )
        sides = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, sides, sides[1:], strict=False):
            kind = type(op)
            if kind not in flip:
                raise ExpressionError(
                    f"filter {text!r}: the comparison {type(op).__name__} is not a window", fix=fix
                )
            if number(a) is not None and number(b) is None:
                a, b, kind = b, a, flip[kind]
            c = number(b)
            f = canon.get(ast.unparse(a))
            if c is None or f is None:
                what = ast.unparse(a if f is None else b)
                raise ExpressionError(
                    f"filter {text!r}: {what!r} is not "
                    + ("a feature" if f is None else "a number"),
                    fix=fix,
                )
            lo, hi = {
                ast.GtE: (c, BIG),
                ast.Gt: (_f32_next(c), BIG),
                ast.Lt: (-BIG, c),
                ast.LtE: (-BIG, _f32_next(c)),
                ast.Eq: (c, _f32_next(c)),
            }[kind]
            out.append((f, lo, hi))
    return out
