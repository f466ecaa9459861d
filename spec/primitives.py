"""The primitives of the language: their call forms, argument kinds and value checks.

One registry entry per primitive says how it may be called (`window(W)` or
`window(left = L, right = R)`), which arguments are integers and which are per-axis
tuples (`neighborhood`), and which values are meaningless (a zero window, a stride offset
outside [0, s), a kernel larger than its grid axis). `bind` turns the arguments of a call,
positional or by keyword, into the keyword normal form that `resolved.RPrim` documents.
The usage line of each entry is the hint shown when a call is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import ast
from .errors import suggest
from .limits import position_problem

REQUIRED = object()
"""Default of an argument that has to be given."""

# Argument kinds: an integer; one integer per grid axis; one boolean per grid axis.
INT, AXES_INT, AXES_BOOL = "int", "axes_int", "axes_bool"

Problem = tuple[str, str]
"""(argument name, message): a value that the primitive cannot mean anything with."""

Check = Callable[[Mapping[str, Any], "tuple[int, ...] | None"], list[Problem]]


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = INT
    default: object = REQUIRED


@dataclass(frozen=True)
class Primitive:
    """A primitive's call forms (tried in order), its usage hint and its value checks."""

    name: str
    forms: tuple[tuple[Param, ...], ...]
    usage: str
    check: Check
    needs_grid: bool = False

    def arg_names(self) -> list[str]:
        return sorted({p.name for form in self.forms for p in form})


# ---------------------------------------------------------------- value checks


def _at_least(minimum: int, *names: str) -> Check:
    """A check that each named integer argument is at least `minimum`."""

    def check(args: Mapping[str, Any], _grid: tuple[int, ...] | None) -> list[Problem]:
        return [
            (n, f"{n} must be at least {minimum}, got {n}={args[n]}")
            for n in names
            if n in args and isinstance(args[n], int) and args[n] < minimum
        ]

    return check


def _all(*checks: Check) -> Check:
    def check(args: Mapping[str, Any], grid: tuple[int, ...] | None) -> list[Problem]:
        return [p for c in checks for p in c(args, grid)]

    return check


def _no_check(_args: Mapping[str, Any], _grid: tuple[int, ...] | None) -> list[Problem]:
    return []


def _window(args: Mapping[str, Any], grid: tuple[int, ...] | None) -> list[Problem]:
    if "size" in args:
        return _at_least(1, "size")(args, grid)
    return _at_least(0, "left", "right")(args, grid)


def _dilated(args: Mapping[str, Any], grid: tuple[int, ...] | None) -> list[Problem]:
    """Both at least 1, and the span of keys, (size - 1) * dilation + 1, a position constant."""
    problems = _at_least(1, "size", "dilation")(args, grid)
    if not problems:
        span = (args["size"] - 1) * args["dilation"] + 1
        problem = position_problem(span, "the span (size - 1) * dilation + 1")
        problems += [("dilation", problem)] if problem else []
    return problems


def _stride(args: Mapping[str, Any], grid: tuple[int, ...] | None) -> list[Problem]:
    problems = _at_least(1, "stride")(args, grid)
    s, offset = args["stride"], args["offset"]
    if not problems and not 0 <= offset < s:
        problems.append(("offset", f"offset must be in [0, {s}), got offset={offset}"))
    return problems


def _band(args: Mapping[str, Any], _grid: tuple[int, ...] | None) -> list[Problem]:
    lo, hi = args["lo"], args["hi"]
    if lo > hi:
        return [("lo", f"lo must be at most hi, got lo={lo}, hi={hi}")]
    return []


def _neighborhood(args: Mapping[str, Any], grid: tuple[int, ...] | None) -> list[Problem]:
    """NATTEN's rules per axis: 1 <= kernel, 1 <= dilation, kernel * dilation <= axis."""
    kernel, dilation = args["kernel"], args["dilation"]
    problems: list[Problem] = []
    for name, values in (("kernel", kernel), ("dilation", dilation)):
        bad = [v for v in values if v < 1]
        if bad:
            problems.append((name, f"{name} must be at least 1 on every axis, got {name}={_tup(values)}"))
    if problems or grid is None:
        return problems
    for axis, (k, d, n) in enumerate(zip(kernel, dilation, grid, strict=False)):
        if k * d > n:
            what = f"kernel {k}" if d == 1 else f"kernel {k} x dilation {d} = {k * d}"
            problems.append(("kernel", f"{what} is larger than grid axis {axis} of length {n}"))
    return problems


def _tup(values: Any) -> str:
    items = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
    return f"({items})"


# ---------------------------------------------------------------- the registry


def _prim(name: str, usage: str, check: Check = _no_check, *forms: tuple[Param, ...], grid: bool = False) -> Primitive:
    return Primitive(name, forms or ((),), usage, check, grid)


PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        _prim("full", "full takes no arguments: write full"),
        _prim("causal", "causal takes no arguments: write causal"),
        _prim(
            "window",
            "window takes one size, as in window(1024), or window(left = L, right = R)",
            _window,
            (Param("size"),),
            (Param("left"), Param("right")),
        ),
        _prim("sink", "sink takes one size, as in sink(4)", _at_least(1, "size"), (Param("size"),)),
        _prim(
            "dilated",
            "dilated takes a size and a dilation, as in dilated(512, 2)",
            _dilated,
            (Param("size"), Param("dilation")),
        ),
        _prim("strided", "strided takes one stride, as in strided(128)", _at_least(1, "stride"), (Param("stride"),)),
        _prim(
            "stride",
            "stride takes a stride and an offset in [0, stride), as in stride(8, 0)",
            _stride,
            (Param("stride"), Param("offset")),
        ),
        _prim("chunk", "chunk takes one size, as in chunk(8192)", _at_least(1, "size"), (Param("size"),)),
        _prim("global", "global takes one size, as in global(16)", _at_least(1, "size"), (Param("size"),)),
        _prim("band", "band takes lo and hi (lo <= q - k <= hi), as in band(0, 127)", _band, (Param("lo"), Param("hi"))),
        _prim("power", "power takes one block size, as in power(64)", _at_least(1, "block"), (Param("block"),)),
        _prim(
            "neighborhood",
            "neighborhood takes a kernel and optionally dilation and causal, one value per grid axis, "
            "as in neighborhood(kernel = (3, 7, 7), causal = (true, false, false))",
            _neighborhood,
            (Param("kernel", AXES_INT), Param("dilation", AXES_INT, 1), Param("causal", AXES_BOOL, False)),
            grid=True,
        ),
    )
}


def usage(name: str) -> str | None:
    """The usage hint of a primitive, or None for a name that is not one."""
    prim = PRIMITIVES.get(name)
    return prim.usage if prim else None


# ---------------------------------------------------------------- binding


@dataclass(frozen=True)
class Bound:
    """A call's arguments matched to one form: parameter name -> the argument as written."""

    form: tuple[Param, ...]
    args: dict[str, ast.Arg]


@dataclass(frozen=True)
class BindError:
    loc: ast.Loc
    message: str
    hint: str | None


def bind(prim: Primitive, call: ast.Prim) -> Bound | BindError:
    """Match a call's arguments, positional or by keyword, to the first form they fit."""
    problem = _argument_order(prim, call)
    if problem is not None:
        return problem
    positional = [a for a in call.args if a.name is None]
    keywords = {a.name: a for a in call.args if a.name is not None}
    for form in prim.forms:
        bound = _bind_form(form, positional, keywords)
        if bound is not None:
            return Bound(form, bound)
    return BindError(call.loc, _arity_message(prim, len(positional), sorted(keywords)), prim.usage)


def _argument_order(prim: Primitive, call: ast.Prim) -> BindError | None:
    """Positional arguments before keywords, each keyword once and known to the primitive."""
    seen: set[str] = set()
    for arg in call.args:
        if arg.name is None and seen:
            return BindError(arg.loc, "a positional argument follows a keyword argument", prim.usage)
        if arg.name is None:
            continue
        if arg.name not in prim.arg_names():
            message = f"{prim.name} has no argument '{arg.name}'"
            return BindError(arg.loc, message, suggest(arg.name, prim.arg_names()) or prim.usage)
        if arg.name in seen:
            return BindError(arg.loc, f"argument '{arg.name}' is given twice", prim.usage)
        seen.add(arg.name)
    return None


def _bind_form(form: tuple[Param, ...], positional: list[ast.Arg], keywords: dict[str, ast.Arg]) -> dict[str, ast.Arg] | None:
    if len(positional) > len(form):
        return None
    names = [p.name for p in form]
    bound = dict(zip(names, positional, strict=False))
    if any(k in bound or k not in names for k in keywords):
        return None
    bound.update(keywords)
    if any(p.default is REQUIRED and p.name not in bound for p in form):
        return None
    return bound


def _arity_message(prim: Primitive, n_positional: int, keywords: list[str]) -> str:
    """Why no form fits: a missing argument when the keywords name one form, else the count."""
    if not prim.forms[0]:
        return f"{prim.name} takes no arguments"
    for form in prim.forms:
        names = [p.name for p in form]
        if keywords and set(keywords) <= set(names) and n_positional + len(keywords) < len(names):
            missing = [n for n in names[n_positional:] if n not in keywords]
            return f"{prim.name} needs {' and '.join(missing)} too"
    if not keywords:
        return f"{prim.name} cannot take {n_positional} argument{'s' if n_positional != 1 else ''}"
    given = ([f"{n_positional} positional argument{'s' if n_positional != 1 else ''}"] if n_positional else []) + keywords
    return f"{prim.name} cannot take {' and '.join(given)} together"
