"""Integer expressions: params, model fields and arithmetic, evaluated in 64 bits.

An `IntScope` holds the names that one file's integer expressions may use: its `param`s
(overridden by `-D` defines) and the model's fields (`layers`, `heads`, `kv_heads`,
`head_dim`). Names are evaluated lazily and once, in any order, so `param W = 1024 - S`
may come before `param S = 4`; a cycle is an error. Every intermediate value must fit in
int64 (the kernels' index arithmetic), and `**` is checked before it is computed so that
`10 ** 10 ** 10` is an error, not a hung process. Evaluation returns None after
reporting an error, so one mistake is reported once, not at every use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import ast
from .errors import Reporter, suggest

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MODEL_FIELDS = ("layers", "heads", "kv_heads", "head_dim")


@dataclass
class Binding:
    """A name's definition: an expression to evaluate, or a value given on the command line."""

    loc: ast.Loc
    expr: ast.IntExpr | None = None
    value: int | None = None


@dataclass
class IntScope:
    """The integer names of one file, evaluated on demand."""

    reporter: Reporter
    bindings: dict[str, Binding] = field(default_factory=dict)
    fallback: Callable[[str, ast.Loc], int | None] | None = None
    """Where names this scope does not bind are looked up (an imported file's model fields)."""
    _values: dict[str, int | None] = field(default_factory=dict)
    _active: list[str] = field(default_factory=list)

    def bind(self, name: str, binding: Binding) -> None:
        self.bindings[name] = binding

    def names(self) -> list[str]:
        return sorted(self.bindings)

    def value(self, name: str, loc: ast.Loc) -> int | None:
        """The value of a param or model field used at `loc`."""
        if name in self._values:
            return self._values[name]
        binding = self.bindings.get(name)
        if binding is None:
            return self._unbound(name, loc)
        if name in self._active:
            cycle = " -> ".join([*self._active[self._active.index(name) :], name])
            self.reporter.error(binding.loc, f"'{name}' is defined in terms of itself: {cycle}")
            self._values[name] = None
            return None
        self._active.append(name)
        try:
            result = binding.value if binding.expr is None else self.eval(binding.expr)
        finally:
            self._active.pop()
        self._values[name] = result
        return result

    def eval(self, expr: ast.IntExpr) -> int | None:
        """The value of an integer expression, or None after reporting why it has none."""
        if isinstance(expr, ast.Num):
            return expr.value
        if isinstance(expr, ast.ParamRef):
            return self.value(expr.name, expr.loc)
        if isinstance(expr, ast.Neg):
            operand = self.eval(expr.operand)
            return None if operand is None else self._checked(-operand, expr.loc)
        left, right = self.eval(expr.left), self.eval(expr.right)
        if left is None or right is None:
            return None
        return self._apply(expr.op, left, right, expr.loc)

    def _apply(self, op: str, a: int, b: int, loc: ast.Loc) -> int | None:
        if op in ("//", "%") and b == 0:
            self.reporter.error(loc, f"division by zero in {a} {op} {b}")
            return None
        if op == "**":
            return self._power(a, b, loc)
        result = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        if result is None:
            result = a // b if op == "//" else a % b
        return self._checked(result, loc)

    def _power(self, a: int, b: int, loc: ast.Loc) -> int | None:
        if b < 0:
            self.reporter.error(loc, f"negative exponent in {a} ** {b}: the result is not an integer")
            return None
        if abs(a) >= 2 and b >= 64:
            return self._checked(INT64_MAX + 1, loc, f"{a} ** {b}")
        return self._checked(a**b, loc)

    def _checked(self, value: int, loc: ast.Loc, what: str | None = None) -> int | None:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        shown = what or str(value)
        self.reporter.error(loc, f"{shown} does not fit in 64 bits", f"values must lie in [{INT64_MIN}, {INT64_MAX}]")
        return None

    def _unbound(self, name: str, loc: ast.Loc) -> int | None:
        if self.fallback is not None and name in MODEL_FIELDS:
            return self.fallback(name, loc)
        if name in MODEL_FIELDS:
            self.reporter.error(loc, f"the model's {name} is not known", give_model(name))
        else:
            hint = suggest(name, [*self.bindings, *MODEL_FIELDS]) or "define it with `param NAME = value`"
            self.reporter.error(loc, f"parameter '{name}' is not defined", hint)
        self._values[name] = None
        return None


def give_model(field: str) -> str:
    """The hint for a model field that a file needs and nobody gave."""
    return (
        f"add {field} to the file's model {{ ... }}, or give it: --model {field}=N on the command line, "
        f'model={{"{field}": N}} in attnc.check or attnc.load'
    )


def model_bindings(
    decl_fields: Mapping[str, tuple[ast.Loc, ast.IntExpr]], cli: Mapping[str, int], cli_loc: ast.Loc
) -> dict[str, Binding]:
    """Model fields from the file, overridden by `--model`; kv_heads defaults to heads."""
    bindings = {name: Binding(loc, expr=expr) for name, (loc, expr) in decl_fields.items()}
    for name, value in cli.items():
        bindings[name] = Binding(cli_loc, value=value)
    if "kv_heads" not in bindings and "heads" in bindings:
        heads = bindings["heads"]
        bindings["kv_heads"] = Binding(heads.loc, expr=ast.ParamRef(loc=heads.loc, name="heads"))
    return bindings
