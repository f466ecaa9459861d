"""The shared matrix of pattern cases that every stage's tests draw from (no tests here).

Each case is a small `.attn` text (or a file of patterns/, by name, or for the rare shape
the language cannot write, an IR pattern) with the length to test it at. Its features
(primitives, operators, grid options, sections, cache, GQA) are read off the resolved spec,
not declared, and tests/test_cases.py checks that together the cases cover every primitive
of the language and every feature in FEATURES: adding a primitive means adding a row here.

Stages: parsing and checking (test_cases.py), analyses against brute force (test_cases.py),
the prefill kernel against the dense reference (test_codegen_kernel.py), decoding against
prefill (test_decode_patterns.py), the simulator (test_cases.py). The 1-D single-pattern
cases are also `EXPRS` of tests/test_codegen_support.py, by the same names.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnc.spec.names import module_name_problem
from attnc.compiler.ir import Band, DiffMod, Lit, Neighborhood, Pattern, Program, Term
from attnc.compiler.lower import lower
from attnc.spec.resolve import load, resolve_text
from attnc.spec.resolved import ROp, Spec

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
FILES = sorted(PATTERNS.glob("*.attn"))

# what the matrix must cover besides the primitives of the language (spec/primitives.py)
FEATURES = {
    "|",
    "&",
    "-",
    "causal-only",
    "non-causal",
    "empty",
    "grid",
    "grid-dilation",
    "grid-causal-axis",
    "grid-prefix",
    "grid-union",
    "heads",
    "layers",
    "cache",
    "gqa",
    "file",
}


@dataclass(frozen=True)
class Case:
    """One pattern to test every stage on.

    text: `.attn` source; path: a file of patterns/ (parameters of 16 or more shrunk to 8 by
    `small`, so that windows wrap within a short sequence); ir: a hand-built pattern for the
    few shapes no text writes. n: the length tests use (no multiple of a tile; a grid case's
    own grid size, so that the tile-order kernel runs)."""

    name: str
    text: str | None = None
    path: Path | None = None
    ir: Pattern | None = None
    n: int = 77
    small: bool = False

    @property
    def spec(self) -> Spec | None:
        return _spec(self)

    @property
    def program(self) -> Program:
        return _program(self)

    @property
    def pattern(self) -> Pattern:
        """The pattern of the first group (the only one unless the case has sections)."""
        return self.program.groups[0].pattern

    @property
    def features(self) -> frozenset[str]:
        return _features(self)

    @property
    def causal(self) -> bool:
        return all(g.pattern.is_causal for g in self.program.groups)

    @property
    def grid(self) -> bool:
        return self.program.grid is not None

    @property
    def single(self) -> bool:
        """One pattern for every head and layer, no grid: a 1-D case, usable as an EXPRS entry."""
        return len(self.program.groups) == 1 and not self.grid

    def __str__(self) -> str:
        return self.name


def _shrunk(path: Path) -> dict[str, int]:
    """Every `param` of 16 or more (or not a plain number) becomes 8."""
    defines = {}
    for name, value in re.findall(r"^\s*param\s+(\w+)\s*=\s*([^#\n]+)", path.read_text(), re.M):
        value = value.strip()
        if not value.isdigit() or int(value) >= 16:
            defines[name] = 8
    return defines


@functools.cache
def _spec(case: Case) -> Spec | None:
    if case.path is not None:
        return load(case.path, _shrunk(case.path) if case.small else None)
    if case.text is not None:
        return resolve_text(case.text, f"{case.name}.attn")
    return None


@functools.cache
def _program(case: Case) -> Program:
    if case.ir is not None:
        from attnc.compiler.ir import HeadGroup, ModelShape

        return Program(
            name=case.name,
            source=f"{case.name}.attn",
            model=ModelShape(),
            groups=(HeadGroup(case.ir, frozenset({(0, 0)})),),
        )
    return lower(case.spec)


def _walk(expr: Any):
    yield expr
    if isinstance(expr, ROp):
        yield from _walk(expr.left)
        yield from _walk(expr.right)


@functools.cache
def _features(case: Case) -> frozenset[str]:
    """Primitive names, operators and options that the case exercises, read off its spec and IR."""
    out: set[str] = set()
    program = case.program
    spec = case.spec
    if spec is not None:
        for a in spec.assignments:
            for e in _walk(a.expr):
                out.add(e.op if isinstance(e, ROp) else e.name)
        out |= {"cache"} if spec.cache else set()
    if case.path is not None:
        out.add("file")
    out.add("causal-only" if case.causal else "non-causal")
    if any(not g.pattern.terms for g in program.groups):
        out.add("empty")
    model = program.model
    if model.heads and model.kv_heads and model.kv_heads < model.heads:
        out.add("gqa")
    table = program.group_table()
    if any(len(set(row)) > 1 for row in table):
        out.add("heads")
    if program.varies_by_layer:
        out.add("layers")
    nbs = [
        lit.atom
        for g in program.groups
        for t in g.pattern.terms
        for lit in t.lits
        if isinstance(lit.atom, Neighborhood)
    ]
    if nbs:
        out.add("grid")
        out |= {"grid-dilation"} if any(d > 1 for nb in nbs for d in nb.dilation) else set()
        out |= {"grid-causal-axis"} if any(any(nb.causal) for nb in nbs) else set()
        out |= {"grid-prefix"} if any(nb.prefix for nb in nbs) else set()
        out |= {"grid-union"} if len(set(nbs)) > 1 else set()
    return frozenset(out)


def _c(name: str, expr: str, n: int = 77) -> Case:
    clash = keyword.iskeyword(name) or module_name_problem(name) is not None  # `global`, `chunk`: not names
    return Case(name, text=f"pattern {name}{'_' if clash else ''} = {expr}\n", n=n)


# ---------------------------------------------------------------- 1-D patterns, one for all heads

ONE_D = [
    _c("causal", "causal"),
    _c("full", "full"),
    _c("sink_window", "causal & (sink(4) | window(20))"),
    _c("dilated", "causal & dilated(6, 3)"),
    _c("strided", "causal & (window(8) | strided(9))"),
    _c("stripes", "causal & (window(8) | stride(8, 7))"),  # column stripes
    _c("chunk", "causal & chunk(32)"),
    _c("power", "causal & power(16)"),
    _c("global", "global(3) | window(left = 4, right = 4)"),
    _c("window_lr", "window(left = 9, right = 21)"),
    _c("difference", "causal - window(10)"),
    _c("difference_mod", "(causal & window(40)) - strided(3)"),
    _c("chunk_not", "causal - chunk(16)"),
    _c("nothing", "causal - causal"),
    _c("band_gap", "band(5, 9)"),
    _c("strided_only", "causal & strided(4)"),
    _c("dilated_two_sided", "window(left = 20, right = 9) & strided(4)"),
    _c("strided_long", "causal & (window(8) | strided(64))"),
    _c("many_terms", "(sink(2) | window(3)) | (stride(7, 3) | chunk(20)) | (global(2) | band(-3, -1))"),
    _c("select_mean", "causal & (sink(4) | window(20) | select(mean, top = 2, block = 16))"),
    # diagonals q - k = 65, 129, ... (a (q - k) modulus whose first difference is not 0), plus a band
    Case("diagonals", ir=Pattern((Term((Lit(Band(3, None)), Lit(DiffMod(64, 1)))), Term((Lit(Band(0, 5)),))))),
]

# ---------------------------------------------------------------- grids, sections, caches

GRIDS = [
    Case("nb_prefix", text="grid(6, 9) prefix = 2\npattern nb_prefix = neighborhood(kernel = (3, 5))\n", n=56),
    Case(
        "nb_dilated_causal",
        n=120,
        text="grid(4, 5, 6)\npattern nb_dilated_causal = neighborhood(kernel = "
        "(2, 2, 3), dilation = (1, 2, 2), causal = (true, false, false))\n",
    ),
    Case(
        "nb_union",
        n=63,
        text="grid(7, 9)\npattern nb_union = neighborhood(kernel = (1, 9)) | "
        "neighborhood(kernel = (3, 3), dilation = (2, 1))\n",
    ),
    Case(
        "nb_and_causal",
        n=43,
        text="grid(5, 8) prefix = 3\npattern nb_and_causal = causal & (neighborhood(kernel = (3, 3)) | global(2))\n",
    ),
    Case(
        "nb_minus_window",
        n=48,
        text="grid(6, 8)\npattern nb_minus_window = neighborhood(kernel = 5) - window(left = 1, right = 1)\n",
    ),
]

SECTIONS = [
    Case(
        "per_head",
        n=61,
        text="model { layers = 1, heads = 4, kv_heads = 2 }\npattern per_head {\n"
        "  heads 0: causal & window(8)\n  heads 1, 3: causal & (sink(2) | chunk(16))\n  rest: causal\n}\n",
    ),
    Case(
        "per_layer",
        n=45,
        text="model { layers = 3, heads = 2, kv_heads = 1 }\npattern per_layer {\n"
        "  layers 0: causal\n  layers 1 {\n    heads 0: causal & window(12)\n    rest: causal & dilated(5, 2)\n"
        "  }\n  rest: causal & dilated(5, 2)\n}\n",
    ),
    Case(
        "select_heads",
        n=61,
        text="model { layers = 2, heads = 4, kv_heads = 2 }\npattern select_heads {\n"
        "  layers 0: causal & (window(8) | select(quest, mass = 80, block = 32))\n"
        "  rest { kv_heads 0: causal & (sink(2) | select(antidiagonal, top = 2, block = 32, stride = 2))\n"
        "    rest: causal & window(12) }\n}\n",
    ),
    Case(
        "cache_streaming",
        n=40,
        text="model { layers = 2, heads = 4, kv_heads = 2 }\n"
        "pattern cache_streaming = causal & (sink(2) | window(6))\n"
        "cache {\n  keep sink(2)\n  keep recent(6)\n}\n",
    ),
]

# the grid files at 40 tokens, a prefix of their grid (their kernels' masks are costly to interpret)
FILE_CASES = [Case(p.stem, path=p, n=40 if "grid(" in p.read_text() else 70, small=True) for p in FILES]

CASES = ONE_D + GRIDS + SECTIONS + FILE_CASES
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names are unique (a file named like a case?)"


def cases(
    *, file: bool | None = None, causal: bool | None = None, grid: bool | None = None, single: bool | None = None
) -> list[Case]:
    """The cases with the given properties (None: either)."""

    def keep(c: Case) -> bool:
        return (
            (file is None or (c.path is not None) == file)
            and (causal is None or c.causal == causal)
            and (grid is None or c.grid == grid)
            and (single is None or c.single == single)
        )

    return [c for c in CASES if keep(c)]


def grid_tokens(case: Case) -> int:
    """The grid's tokens, prefix included (0 without a grid)."""
    g = case.program.grid
    return 0 if g is None else g.prefix + math.prod(g.dims)


def sampled(params: list, keep: int) -> list:
    """`params` for pytest.mark.parametrize with `keep` of them, spread evenly, in the default
    run and the others marked `exhaustive` (they run under `make test-all`): large matrices
    stay whole in the thorough run without costing every `make test`."""
    import pytest

    step = max(len(params) / max(keep, 1), 1)
    chosen = {int(i * step) for i in range(min(keep, len(params)))}
    return [p if i in chosen else pytest.param(p, marks=pytest.mark.exhaustive) for i, p in enumerate(params)]
