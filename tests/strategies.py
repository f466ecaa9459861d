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


def expressions(max_leaves: int = 6):
    """Random expressions over every primitive and operator."""
    return st.recursive(
        primitives,
        lambda children: st.tuples(st.sampled_from(["|", "&", "-"]), children, children).map(
            lambda t: op(t[0], t[1], t[2])),
        max_leaves=max_leaves,
    )


def causal_expressions(max_leaves: int = 5):
    """Random expressions intersected with causal: what a decoder uses."""
    return expressions(max_leaves).map(lambda e: op("&", prim("causal"), e))
