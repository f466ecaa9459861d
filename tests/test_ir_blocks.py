"""The IR's meaning and the block-sparsity analysis, against brute-force enumeration."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.blocks import block_map, brute_block_map
from attnc.compiler.lower import lower_expr
from tests.strategies import examples, expressions, lowered, op, prim


def brute_mask(expr, n: int) -> np.ndarray:
    """DESIGN.md's table, evaluated pair by pair in plain Python."""

    def allowed(e, q: int, k: int) -> bool:
        if e.__class__.__name__ == "ROp":
            a, b = allowed(e.left, q, k), allowed(e.right, q, k)
            return {"|": a or b, "&": a and b, "-": a and not b}[e.op]
        a, d = e.args, q - k
        return {
            "full": lambda: True,
            "causal": lambda: k <= q,
            "window": lambda: (0 <= d < a["size"]) if "size" in a else (-a["right"] <= d <= a["left"]),
            "sink": lambda: k < a["size"],
            "dilated": lambda: 0 <= d < a["size"] * a["dilation"] and d % a["dilation"] == 0,
            "strided": lambda: d % a["stride"] == 0,
            "stride": lambda: k % a["stride"] == a["offset"],
            "chunk": lambda: q // a["size"] == k // a["size"],
            "global": lambda: q < a["size"] or k < a["size"],
            "band": lambda: a["lo"] <= d <= a["hi"],
            "power": lambda: (q // a["block"] - k // a["block"]) in {0} | {2**i for i in range(40)},
        }[e.name]()

    return np.array([[allowed(expr, q, k) for k in range(n)] for q in range(n)], dtype=bool)


@examples(50)
@given(expressions(), st.integers(1, 40))
def test_lowered_pattern_means_what_the_table_says(expr, n):
    assert (lower_expr(expr).mask(n) == brute_mask(expr, n)).all()


@examples(75)
@given(lowered(), st.integers(1, 9), st.integers(1, 9))
def test_block_map_equals_enumeration(case, bm, bn):
    """Every atom, neighbourhoods on random grids included, at lengths around the grid's."""
    pattern, n = case
    assert (block_map(pattern, n, bm, bn).status == brute_block_map(pattern, n, bm, bn).status).all()


def test_causal_window_is_one_band():
    p = lower_expr(op("&", prim("causal"), prim("window", size=16)))
    assert str(p) == "(0 <= q-k <= 15)"


def test_sink_window_ranges_skip_the_middle():
    p = lower_expr(op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=64))))
    bmap = block_map(p, 1024, 64, 64)
    assert bmap.ranges(10) == [(0, 1), (9, 11)]
    assert bmap.ranges(0) == [(0, 1)]
