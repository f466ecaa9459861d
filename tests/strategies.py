"""Hypothesis strategies shared by the test suite: random resolved pattern expressions over
every primitive (neighbourhoods on random grids included), and the example budget helper."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st

from attnc.spec.ast import Loc
from attnc.spec.resolved import Grid, ROp, RPrim

LOC = Loc(file="<random>", line=1, col=1)


def examples(n: int) -> settings:
    """Settings for a test that runs n examples under the `ci` profile (tests/conftest.py);
    the `thorough` profile scales n by its max_examples / 100."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 100))


def prim(name: str, **args) -> RPrim:
    return RPrim(name=name, args=args, loc=LOC)


def op(symbol: str, left, right) -> ROp:
    return ROp(op=symbol, left=left, right=right, loc=LOC)


small = st.integers(min_value=1, max_value=12)

primitives = st.one_of(
    st.just(prim("full")),
    st.just(prim("causal")),
    small.map(lambda w: prim("window", size=w)),
    st.tuples(st.integers(0, 8), st.integers(0, 8)).map(lambda t: prim("window", left=t[0], right=t[1])),
    small.map(lambda s: prim("sink", size=s)),
    st.tuples(small, st.integers(1, 4)).map(lambda t: prim("dilated", size=t[0], dilation=t[1])),
    st.integers(1, 6).map(lambda s: prim("strided", stride=s)),
    st.integers(1, 6).flatmap(lambda s: st.integers(0, s - 1).map(lambda o: prim("stride", stride=s, offset=o))),
    small.map(lambda c: prim("chunk", size=c)),
    st.integers(1, 5).map(lambda g: prim("global", size=g)),
    st.tuples(st.integers(-6, 6), st.integers(0, 8)).map(lambda t: prim("band", lo=t[0], hi=t[0] + t[1])),
    st.integers(1, 5).map(lambda b: prim("power", block=b)),
)


def _tree(leaves, max_leaves: int):
    return st.recursive(
        leaves,
        lambda children: st.tuples(st.sampled_from(["|", "&", "-"]), children, children).map(
            lambda t: op(t[0], t[1], t[2])
        ),
        max_leaves=max_leaves,
    )


def expressions(max_leaves: int = 6):
    """Random expressions over every 1-D primitive and operator."""
    return _tree(primitives, max_leaves)


def causal_expressions(max_leaves: int = 5):
    """Random expressions intersected with causal: what a decoder uses."""
    return expressions(max_leaves).map(lambda e: op("&", prim("causal"), e))


# ---------------------------------------------------------------- grids and neighbourhoods


@st.composite
def token_grids(draw, max_dim: int = 12, max_tokens: int = 150) -> Grid:
    """A random token grid: 1 to 3 axes, at most max_tokens grid tokens, 0 to 3 prefix tokens."""
    dims: list[int] = []
    for _ in range(draw(st.integers(1, 3))):
        budget = max(1, min(max_dim, max_tokens // max(1, math.prod(dims))))
        dims.append(draw(st.integers(1, budget)))
    return Grid(dims=tuple(dims), prefix=draw(st.integers(0, 3)))


def neighborhoods(grid: Grid):
    """A random NATTEN-valid neighbourhood on the grid: per-axis kernel, dilation (kernel *
    dilation fits the axis), causal flags and stride (at most the kernel), in resolved normal form."""
    dilation = st.tuples(*(st.integers(1, length) for length in grid.dims))
    kernel_causal = lambda d: st.tuples(  # noqa: E731
        st.tuples(*(st.integers(1, length // x) for length, x in zip(grid.dims, d))),
        st.tuples(*(st.booleans() for _ in grid.dims)),
    )
    return dilation.flatmap(
        lambda d: kernel_causal(d).flatmap(
            lambda kc: st.tuples(*(st.integers(1, k) for k in kc[0])).map(
                lambda s: prim("neighborhood", kernel=kc[0], dilation=d, causal=kc[1], stride=s)
            )
        )
    )


def grid_expressions(max_leaves: int = 5, max_tokens: int = 120):
    """(expression, grid): random expressions over a random grid whose leaves are
    neighbourhoods on it as often as 1-D primitives, for lower_expr(expr, grid)."""

    def over(grid: Grid):
        leaves = st.booleans().flatmap(lambda nb: neighborhoods(grid) if nb else primitives)  # half each
        return st.tuples(_tree(leaves, max_leaves), st.just(grid))

    return token_grids(max_tokens=max_tokens).flatmap(over)


def grid_size(grid: Grid | None) -> int:
    """Tokens of a grid, prefix included (0 without a grid)."""
    return 0 if grid is None else grid.prefix + math.prod(grid.dims)


def any_expressions(max_leaves: int = 5):
    """(expression, grid or None): a grid expression or a 1-D one."""
    return st.one_of(grid_expressions(max_leaves), expressions(max_leaves).map(lambda e: (e, None)))


def lengths(grid: Grid | None, most: int = 70):
    """A sequence length: 1..most without a grid; within 9 tokens of the grid's size with one
    (shorter and longer than the grid, so that analyses see tokens past it)."""
    if grid is None:
        return st.integers(1, most)
    g = grid_size(grid)
    return st.integers(max(1, g - 9), g + 9)


def lowered(max_leaves: int = 5, causal: bool = False, most: int = 70):
    """(Pattern, n): a random 1-D or grid expression lowered to the IR, and a length for it."""
    from attnc.compiler.lower import lower_expr

    def pick(eg):
        expr, grid = eg
        expr = op("&", prim("causal"), expr) if causal else expr
        return st.tuples(st.just(lower_expr(expr, grid)), lengths(grid, most))

    return any_expressions(max_leaves).flatmap(pick)
