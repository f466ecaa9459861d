"""Pattern expressions: `let` names inlined, primitives normalised and checked.

An `ExprScope` resolves the set expressions of one file into `resolved.RPrim` / `ROp`
trees. `let` names are resolved lazily and once (a let may use one defined after it; a
cycle is an error) and inlined, so the compiler never sees a name. Names from imported
files come in as `Exported` values. Primitive calls are matched to their forms
(`primitives.bind`), their arguments evaluated and normalised (one value per grid axis for
`neighborhood`) and their values checked against DESIGN.md's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import ast
from .errors import Reporter, suggest
from .intexpr import IntScope
from .parser import MAX_DEPTH
from .limits import position_problem
from .primitives import AXES_INT, INT, PRIMITIVES, WORD, BindError, Param, Primitive, bind
from .resolved import ArgValue, RExpr, ROp, RPrim

MAX_NODES = 10_000
"""Most primitives and operators in one resolved expression."""


def selections(expr: RExpr, memo: dict[int, tuple[RExpr, list[RPrim]]] | None = None) -> list[RPrim]:
    """The distinct `select` calls of a resolved expression, in source order (`memo`: results
    by node, for trees whose lets share subtrees)."""
    memo = {} if memo is None else memo
    if id(expr) in memo:
        return memo[id(expr)][1]
    if isinstance(expr, ROp):
        out = selections(expr.left, memo)
        out = out + [s for s in selections(expr.right, memo) if all(s.args != o.args for o in out)]
    else:
        out = [expr] if expr.name == "select" else []
    memo[id(expr)] = (expr, out)
    return out


@dataclass(frozen=True)
class Exported:
    """A name another file makes usable: its value on demand, and where it comes from."""

    origin: str
    value: Callable[[ast.Loc], RExpr | None]


@dataclass
class ExprScope:
    """The set-expression names of one file: its lets and the names it imports."""

    ints: IntScope
    reporter: Reporter
    grid: tuple[int, ...] | None
    lets: dict[str, ast.Let] = field(default_factory=dict)
    imported: dict[str, Exported] = field(default_factory=dict)
    _values: dict[str, RExpr | None] = field(default_factory=dict)
    _active: list[str] = field(default_factory=list)
    _shape: dict[int, tuple[RExpr | None, int, int]] = field(default_factory=dict)
    _selects: dict[int, tuple[RExpr, list[RPrim]]] = field(default_factory=dict)

    def resolve(self, expr: ast.SetExpr) -> RExpr | None:
        """The resolved tree of an expression, or None after reporting its problems."""
        if isinstance(expr, ast.SetOp):
            left, right = self.resolve(expr.left), self.resolve(expr.right)
            if left is None or right is None or not self._selections_compose(expr.op, left, right):
                return None
            return self._op(ROp(op=expr.op, left=left, right=right, loc=expr.loc))
        if isinstance(expr, ast.PatternRef):
            return self.name(expr.name, expr.loc)
        return self.primitive(expr)

    def _op(self, op: ROp) -> ROp | None:
        """Keep inlined trees as shallow as written ones (MAX_DEPTH) and of a sane size:
        lets share subtrees, so `let b = a | a` doubles the tree without doubling the text."""
        left, right = self._shape.get(id(op.left), (None, 0, 1)), self._shape.get(id(op.right), (None, 0, 1))
        depth, size = 1 + max(left[1], right[1]), 1 + left[2] + right[2]
        if depth > MAX_DEPTH or size > MAX_NODES:
            what = (
                f"nested more than {MAX_DEPTH} levels deep"
                if depth > MAX_DEPTH
                else f"larger than {MAX_NODES} primitives and operators"
            )
            self.reporter.error(op.loc, f"expression {what} once its lets are inlined")
            return None
        self._shape[id(op)] = (op, depth, size)  # the node is kept alive so its id stays unique
        return op

    def _selections_compose(self, op: str, left: RExpr, right: RExpr) -> bool:
        """A selection is chosen at run time, so it has no complement to subtract, and one
        expression holds at most one selection (with one budget and one score); anything else
        is reported at the offending `select`."""
        right_sel = selections(right, self._selects)
        if op == "-" and right_sel:
            self.reporter.error(
                right_sel[0].loc,
                "a selection cannot be subtracted: which keys it picks is known only at run time",
                "subtract from the static part instead, as in (causal - window(8)) | select(mean, top = 4)",
            )
            return False
        first = selections(left, self._selects)
        other = [s for s in right_sel if first and s.args != first[0].args]
        if other:
            self.reporter.error(
                other[0].loc,
                "an expression may hold only one selection (one score and one budget)",
                "use one select(...) term, or give each head its own section with its own selection",
            )
            return False
        return True

    def name(self, name: str, loc: ast.Loc) -> RExpr | None:
        """The value of a let or imported name used at `loc`."""
        if name in self.lets:
            return self._let(name)
        if name in self.imported:
            return self.imported[name].value(loc)
        known = [*self.lets, *self.imported, *PRIMITIVES]
        hint = suggest(name, known) or "define it with `let NAME = expr`, or import a file that does"
        self.reporter.error(loc, f"unknown name '{name}'", hint)
        return None

    def _let(self, name: str) -> RExpr | None:
        if name in self._values:
            return self._values[name]
        let = self.lets[name]
        if name in self._active:
            cycle = " -> ".join([*self._active[self._active.index(name) :], name])
            self.reporter.error(let.loc, f"let '{name}' is defined in terms of itself: {cycle}")
            self._values[name] = None
            return None
        self._active.append(name)
        try:
            value = self.resolve(let.expr)
        finally:
            self._active.pop()
        self._values[name] = value
        return value

    # ---------------------------------------------------------------- primitives

    def primitive(self, call: ast.Prim) -> RPrim | None:
        prim = PRIMITIVES.get(call.name)
        if prim is None:
            hint = suggest(call.name, [*PRIMITIVES, *self.lets, *self.imported]) or (
                "the primitives are " + ", ".join(PRIMITIVES)
            )
            self.reporter.error(call.loc, f"unknown primitive '{call.name}'", hint)
            return None
        bound = bind(prim, call)
        if isinstance(bound, BindError):
            self.reporter.error(bound.loc, bound.message, bound.hint)
            return None
        args: dict[str, ArgValue] = {}
        for param in bound.form:
            value = self._argument(prim, param, bound.args.get(param.name))
            if value is None:
                return None
            args[param.name] = value
        if not self._valid(prim, call, args, bound.args):
            return None
        return RPrim(name=prim.name, args=args, loc=call.loc)

    def _valid(self, prim: Primitive, call: ast.Prim, args: dict[str, ArgValue], written: dict[str, ast.Arg]) -> bool:
        if prim.needs_grid and self.grid is None:
            self.reporter.error(call.loc, f"{prim.name} needs a token grid", "declare one, as in grid(16, 48, 80)")
            return False
        problems = prim.check(args, self.grid)
        for name, message in problems:
            where = written[name].loc if name in written else call.loc
            self.reporter.error(where, f"{prim.name}: {message}", prim.usage)
        return not problems

    def _argument(self, prim: Primitive, param: Param, arg: ast.Arg | None) -> ArgValue | None:
        """One argument evaluated to its normal form (defaults filled in)."""
        if arg is None:  # bind() leaves out only arguments that have defaults
            return param.default if param.kind in (INT, WORD) else self._axes((param.default,), prim, param, None)  # type: ignore[return-value]
        value = arg.value
        if param.kind == INT:
            return self._int(prim, param, value)
        if param.kind == WORD:
            if isinstance(value, (ast.Word, ast.ParamRef)):
                return value.name
            self._kind_error(prim, param, value, "a name")
            return None
        if param.kind == AXES_INT:
            items = value.items if isinstance(value, ast.TupleLit) else [value]
            return self._axes(tuple(self._int(prim, param, v) for v in items), prim, param, value)
        items = value.items if isinstance(value, ast.TupleLit) else [value]
        return self._axes(tuple(self._bool(prim, param, v) for v in items), prim, param, value)

    def _int(self, prim: Primitive, param: Param, value: ast.ArgValue) -> int | None:
        if isinstance(value, ast.Word):
            return self.ints.value(value.name, value.loc)
        if isinstance(value, (ast.BoolLit, ast.TupleLit)):
            self._kind_error(prim, param, value, "an integer")
            return None
        result = self.ints.eval(value)
        problem = None if result is None else position_problem(result, f"{prim.name}'s {param.name}")
        if problem:
            self.reporter.error(
                value.loc, problem, "positions and position constants lie within +-2**30 (docs/language.md, Limits)"
            )
            return None
        return result

    def _bool(self, prim: Primitive, param: Param, value: ast.ArgValue) -> bool | None:
        if isinstance(value, ast.BoolLit):
            return value.value
        self._kind_error(prim, param, value, "true or false")
        return None

    def _axes(self, values: tuple, prim: Primitive, param: Param, written: ast.ArgValue | None) -> tuple | None:
        """Per-axis values: one value stands for every axis; a tuple needs one per axis."""
        if any(v is None for v in values):
            return None
        axes = len(self.grid) if self.grid is not None else len(values)
        if len(values) == 1 and not isinstance(written, ast.TupleLit):
            return values * axes  # one bare value stands for every axis
        if len(values) != axes and written is not None:
            count = f"{len(values)} value{'s' if len(values) != 1 else ''}"
            self.reporter.error(
                written.loc,
                f"{prim.name}: {param.name} has {count} but the grid has {axes} ax{'e' if axes != 1 else 'i'}s",
                prim.usage,
            )
            return None
        return values

    def _kind_error(self, prim: Primitive, param: Param, value: ast.ArgValue, wanted: str) -> None:
        what = {ast.BoolLit: "a boolean", ast.TupleLit: "a tuple"}.get(type(value), "an integer")
        self.reporter.error(value.loc, f"{prim.name}: {param.name} must be {wanted}, got {what}", prim.usage)
