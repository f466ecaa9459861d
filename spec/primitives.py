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
from .shape import span
from .limits import position_problem

REQUIRED = object()
"""Default of an argument that has to be given."""

# Argument kinds: an integer; one integer per grid axis; one boolean per grid axis; a word
# (a bare name from a fixed list, such as the score of `select`).
INT, AXES_INT, AXES_BOOL, WORD = "int", "axes_int", "axes_bool", "word"

SCORES = ("mean", "quest", "antidiagonal", "vslash")
"""The scores `select` ranks key blocks by (docs/selection.md)."""

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
    """A primitive's call forms (tried in order), its usage hint, its value checks and what it
    lets a query see in words (`attnc check`). What it means as a set of pairs is its lowering
    to IR atoms (compiler/lower.py, one line per primitive; compiler/atoms.py)."""

    name: str
    forms: tuple[tuple[Param, ...], ...]
    usage: str
    check: Check
    words: Callable[[Mapping[str, Any]], str]
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
    """NATTEN's rules per axis: 1 <= kernel, 1 <= dilation, kernel * dilation <= axis, and
    1 <= stride <= kernel (a stride group shares one window, which holds the whole group only
    when the group is no wider than the kernel)."""
    kernel, dilation, stride = args["kernel"], args["dilation"], args["stride"]
    problems: list[Problem] = []
    for name, values in (("kernel", kernel), ("dilation", dilation), ("stride", stride)):
        bad = [v for v in values if v < 1]
        if bad:
            problems.append((name, f"{name} must be at least 1 on every axis, got {name}={_tup(values)}"))
    if problems:
        return problems
    for axis, (k, s) in enumerate(zip(kernel, stride, strict=False)):
        if s > k:
            problems.append(
                (
                    "stride",
                    f"stride {s} is larger than kernel {k} on axis {axis} (NATTEN's rule: use a stride of at most {k})",
                )
            )
    if problems or grid is None:
        return problems
    for axis, (k, d, n) in enumerate(zip(kernel, dilation, grid, strict=False)):
        if k * d > n:
            what = f"kernel {k}" if d == 1 else f"kernel {k} x dilation {d} = {k * d}"
            problems.append(("kernel", f"{what} is larger than grid axis {axis} of length {n}"))
    return problems


def _is_pow2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


def _select(args: Mapping[str, Any], _grid: tuple[int, ...] | None) -> list[Problem]:
    """A known score; a budget of at least one block or a share in 1..100 percent; blocks a
    power of two from 16 to 1024 (whole kernel tiles); an antidiagonal stride that leaves at
    least 16 rows of a block (a matrix-multiply tile)."""
    problems: list[Problem] = []
    score = args["score"]
    if score not in SCORES:
        hint = suggest(score, list(SCORES))
        problems.append(
            ("score", f"unknown score '{score}'{f' ({hint})' if hint else ''}; the scores are {', '.join(SCORES)}")
        )
    problems += _at_least(1, "top", "stride", "last")(args, _grid)
    if "mass" in args and not 1 <= args["mass"] <= 100:
        problems.append(
            ("mass", f"mass is a percentage of the estimated attention mass, 1 to 100, got mass={args['mass']}")
        )
    block = args["block"]
    if not (_is_pow2(block) and 16 <= block <= 1024):
        problems.append(("block", f"block must be a power of two from 16 to 1024, got block={block}"))
    elif score == "antidiagonal" and args["stride"] >= 1 and (block % args["stride"] or block // args["stride"] < 16):
        problems.append(
            (
                "stride",
                f"stride must divide block and leave at least 16 rows: block // stride >= 16, got {block} // {args['stride']}",
            )
        )
    return problems


def _select_words(a: Mapping[str, Any]) -> str:
    how = {
        "mean": "mean-pooled q . mean key",
        "quest": "Quest's bound from per-channel key min and max",
        "antidiagonal": f"antidiagonal sums (stride {a['stride']})",
        "vslash": f"vertical and slash lines of the last {a['last']} queries",
    }.get(a["score"], a["score"])
    budget = f"the top {a['top']}" if "top" in a else f"the fewest reaching {a['mass']}% of the estimated mass of"
    return f"{budget} key blocks of {a['block']} by {how}, chosen at run time per query block and KV head"


def _tup(values: Any) -> str:
    items = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
    return f"({items})"


# ---------------------------------------------------------------- in words


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _window_words(a: Mapping[str, Any]) -> str:
    if "size" in a:
        return f"the last {a['size']} positions"
    return f"keys from {a['left']} before to {a['right']} after the query"


def _dilated_words(a: Mapping[str, Any]) -> str:
    if a["dilation"] == 1:
        return f"the last {a['size']} positions"
    return f"every {_nth(a['dilation'])} of the last {a['size'] * a['dilation']} positions"


def _neighborhood_words(a: Mapping[str, Any]) -> str:
    text = "a " + "x".join(map(str, a["kernel"])) + " neighborhood on the grid"
    if any(d != 1 for d in a["dilation"]):
        text += " with dilation " + "x".join(map(str, a["dilation"]))
    if any(s != 1 for s in a.get("stride", ())):
        text += ", stride " + "x".join(map(str, a["stride"]))
    causal_axes = [str(i) for i, c in enumerate(a["causal"]) if c]
    if causal_axes:
        text += ", causal along axis " + ", ".join(causal_axes)
    return text


def _global_words(a: Mapping[str, Any]) -> str:
    return (
        f"the first {a['size']} positions ({span(0, a['size'])}) as global positions, which see and are "
        "seen by every position"
    )


# ---------------------------------------------------------------- the registry


def _prim(
    name: str,
    usage: str,
    words: Callable[[Mapping[str, Any]], str],
    check: Check = _no_check,
    *forms: tuple[Param, ...],
    grid: bool = False,
) -> Primitive:
    return Primitive(name, forms or ((),), usage, check, words, grid)


PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        _prim("full", "full takes no arguments: write full", lambda a: "every key"),
        _prim("causal", "causal takes no arguments: write causal", lambda a: "causal"),
        _prim(
            "window",
            "window takes one size, as in window(1024), or window(left = L, right = R)",
            _window_words,
            _window,
            (Param("size"),),
            (Param("left"), Param("right")),
        ),
        _prim(
            "sink",
            "sink takes one size, as in sink(4)",
            lambda a: f"the first {a['size']} positions",
            _at_least(1, "size"),
            (Param("size"),),
        ),
        _prim(
            "dilated",
            "dilated takes a size and a dilation, as in dilated(512, 2)",
            _dilated_words,
            _dilated,
            (Param("size"), Param("dilation")),
        ),
        _prim(
            "strided",
            "strided takes one stride, as in strided(128)",
            lambda a: f"every {_nth(a['stride'])} position back from the query",
            _at_least(1, "stride"),
            (Param("stride"),),
        ),
        _prim(
            "stride",
            "stride takes a stride and an offset in [0, stride), as in stride(8, 0)",
            lambda a: f"positions k with k mod {a['stride']} = {a['offset']}",
            _stride,
            (Param("stride"), Param("offset")),
        ),
        _prim(
            "chunk",
            "chunk takes one size, as in chunk(8192)",
            lambda a: f"the query's own chunk of {a['size']}",
            _at_least(1, "size"),
            (Param("size"),),
        ),
        _prim(
            "global", "global takes one size, as in global(16)", _global_words, _at_least(1, "size"), (Param("size"),)
        ),
        _prim(
            "band",
            "band takes lo and hi (lo <= q - k <= hi), as in band(0, 127)",
            lambda a: f"keys {a['lo']} to {a['hi']} positions back",
            _band,
            (Param("lo"), Param("hi")),
        ),
        _prim(
            "power",
            "power takes one block size, as in power(64)",
            lambda a: f"blocks of {a['block']} at power-of-two block distances",
            _at_least(1, "block"),
            (Param("block"),),
        ),
        _prim(
            "neighborhood",
            "neighborhood takes a kernel and optionally dilation, causal and stride, one value per grid "
            "axis, as in neighborhood(kernel = (3, 7, 7), causal = (true, false, false)); "
            "1 <= stride <= kernel",
            _neighborhood_words,
            _neighborhood,
            (
                Param("kernel", AXES_INT),
                Param("dilation", AXES_INT, 1),
                Param("causal", AXES_BOOL, False),
                Param("stride", AXES_INT, 1),
            ),
            grid=True,
        ),
        _prim(
            "select",
            "select takes a score (" + ", ".join(SCORES) + ") and a budget, top = K blocks or mass = P percent, "
            "as in select(mean, top = 16, block = 128) or select(antidiagonal, mass = 90)",
            _select_words,
            _select,
            *(
                (
                    Param("score", WORD),
                    Param(budget),
                    Param("block", INT, 64),
                    Param("stride", INT, 8),
                    Param("last", INT, 64),
                )
                for budget in ("top", "mass")
            ),
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


def _bind_form(
    form: tuple[Param, ...], positional: list[ast.Arg], keywords: dict[str, ast.Arg]
) -> dict[str, ast.Arg] | None:
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
    following = sorted({f[n_positional].name for f in prim.forms if len(f) > n_positional})
    if not keywords and len(prim.forms) > 1 and len(following) > 1:  # select(mean): which budget?
        return f"{prim.name} needs {' or '.join(following)} after {n_positional} argument{'s' * (n_positional != 1)}"
    if not keywords:
        return f"{prim.name} cannot take {n_positional} argument{'s' if n_positional != 1 else ''}"
    given = (
        [f"{n_positional} positional argument{'s' if n_positional != 1 else ''}"] if n_positional else []
    ) + keywords
    return f"{prim.name} cannot take {' and '.join(given)} together"
