"""Symbolic cost (compiler.cost, compiler.formula) and exact counts (compiler.count) against brute force."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.blocks import brute_block_map
from attnc.compiler.cost import CLASSES, NoFormula, growth_class, pairs_formula, structural_class, tile_bytes
from attnc.compiler.count import count_pairs
from attnc.compiler.formula import N, T, Formula, Piece, _ceil_div, flog2
from attnc.compiler.ir import Lit, Neighborhood, Pattern, Term
from attnc.compiler.lower import lower_expr
from attnc.compiler.blocks import block_map
from tests.strategies import examples, op, prim
from tests.strategies import lowered as lowered_cases

C = prim("causal")
KNOWN_GAPS = (
    "several chunk/power atoms",
    "power(B) combined",
    "does not divide chunk",
    "residue classes",
    "range constants span",
    "neighbourhood",
)


def lowered(e):
    return lower_expr(e)


# ---------------------------------------------------------------- exact counts


@examples(75)
@given(lowered_cases(most=60))
def test_count_pairs_equals_mask_sum(case):
    p, n = case
    assert count_pairs(p, n) == int(p.mask(n).sum())


def _random_neighborhood(rng: random.Random) -> Neighborhood:
    nd = rng.randint(1, 3)
    dims = tuple(rng.randint(1, 6) for _ in range(nd))
    kernel = tuple(rng.randint(1, d) for d in dims)
    dilation = tuple(rng.randint(1, max(1, d // k)) for d, k in zip(dims, kernel))
    stride = tuple(rng.randint(1, k) for k in kernel)
    return Neighborhood(dims, kernel, dilation, tuple(rng.random() < 0.4 for _ in dims), rng.randint(0, 3), stride)


@pytest.mark.exhaustive  # a fixed sweep; the hypothesis tests above draw neighbourhoods too
def test_neighborhood_counts_and_tiles_equal_enumeration():
    rng = random.Random(7)
    for _ in range(120):
        nb = _random_neighborhood(rng)
        p = Pattern((Term((Lit(nb, rng.random() < 0.2),)),))
        grid = nb.prefix + int(np.prod(nb.dims))
        n = rng.choice([grid, max(1, grid - rng.randint(1, 4)), grid + rng.randint(1, 5)])
        assert count_pairs(p, n) == int(p.mask(n).sum()), (nb, n)
        bm, bn = rng.randint(1, 6), rng.randint(1, 6)
        assert (block_map(p, n, bm, bn).status == brute_block_map(p, n, bm, bn).status).all(), (nb, n)


# ---------------------------------------------------------------- formulas against counts


@examples(75)
@given(lowered_cases(), st.lists(st.integers(1, 400), min_size=1, max_size=5))
def test_pairs_formula_equals_exact_count(case, ns):
    p = case[0]
    try:
        f = pairs_formula(p)
    except NoFormula as exc:
        assert any(g in str(exc) for g in KNOWN_GAPS), str(exc)
        return
    for n in ns:
        want = count_pairs(p, n) if n > 60 else int(p.mask(n).sum())
        assert f.at(n) == want, (str(p), n, str(f))
    cls = growth_class(f)
    assert CLASSES.index(cls) <= CLASSES.index(structural_class(p)), (str(p), cls)


@pytest.mark.parametrize(
    "n", [1, 2, 1019, 1020, 1021, 1023, 1024, 1025, 4093, 4096, 4097, 8191, 8192, 8193, 100_003, 131_072]
)
def test_named_formulas_at_edges(n):
    for e in (
        op("&", C, op("|", prim("sink", size=4), prim("window", size=1020))),
        op("&", C, prim("dilated", size=1024, dilation=4)),
        op("&", C, prim("chunk", size=8192)),
        op("&", C, op("|", prim("power", block=64), prim("window", size=256))),
        op("&", C, op("|", prim("stride", stride=64, offset=63), prim("window", size=128))),
    ):
        p = lowered(e)
        assert pairs_formula(p).at(n) == count_pairs(p, n)


# ---------------------------------------------------------------- symbolic equality with hand-written forms


def assert_same(f: Formula, pieces: list[tuple[int, int | None, sp.Expr]]) -> None:
    """f equals the hand-written piecewise function: on every common sub-interval the two
    expressions are symbolically equal (after rewriting Mod as floor), except on a bounded
    sub-interval where two correct forms may differ in shape (floor(N/C) is 0 there, say):
    those are compared at every integer. The unbounded tail is always compared symbolically."""
    cuts = sorted({p.lo for p in f.pieces} | {lo for lo, _, _ in pieces})
    hand = Formula(N, tuple(Piece(lo, hi, e) for lo, hi, e in pieces), f.period)
    for i, lo in enumerate(cuts):
        hi = cuts[i + 1] - 1 if i + 1 < len(cuts) else None
        mine, theirs = f.expr_at(lo), hand.expr_at(lo)
        diff = sp.expand((mine - theirs).rewrite(sp.floor))
        if sp.simplify(diff) == 0:
            continue
        assert hi is not None, ("tails differ", mine, theirs)
        assert all(diff.subs(N, n) == 0 for n in range(lo, hi + 1)), (lo, hi, mine, theirs)


def test_dense_formulas_are_symbolic():
    assert sp.expand(pairs_formula(lowered(prim("full"))).as_expr() - N**2) == 0
    assert sp.expand(pairs_formula(lowered(C)).as_expr() - N * (N + 1) / 2) == 0


def test_window_formula_is_symbolic():
    W = 1020
    assert_same(
        pairs_formula(lowered(op("&", C, prim("window", size=W)))),
        [(1, W, N * (N + 1) / 2), (W + 1, None, W * N - sp.Rational(W * (W - 1), 2))],
    )


def test_streaming_llm_formula_is_symbolic():
    S, W = 4, 1020
    f = pairs_formula(lowered(op("&", C, op("|", prim("sink", size=S), prim("window", size=W)))))
    window = W * N - sp.Rational(W * (W - 1), 2)
    assert_same(
        f,
        [
            (1, W, N * (N + 1) / 2),
            (W + 1, W + S, window + (N - W) * (N - W + 1) / 2),  # sink keys beyond the window
            (W + S + 1, None, window + S * (N - W) - sp.Rational(S * (S - 1), 2)),
        ],
    )


def test_dilated_formula_is_symbolic():
    W, d = 1024, 4
    J = sp.ceiling(N / d)  # diagonals 0, d, 2d, ... that fit below N
    f = pairs_formula(lowered(op("&", C, prim("dilated", size=W, dilation=d))))
    assert_same(
        f,
        [
            (1, (W - 1) * d + 1, J * N - d * J * (J - 1) / 2),
            ((W - 1) * d + 2, None, W * N - sp.Rational(d * W * (W - 1), 2)),
        ],
    )


@pytest.mark.parametrize("causal", [False, True])
def test_chunk_formula_is_symbolic(causal):
    c = 8192
    rho, full = sp.Mod(N, c), sp.floor(N / c)
    e = op("&", C, prim("chunk", size=c)) if causal else prim("chunk", size=c)
    want = full * c * (c + 1) / 2 + rho * (rho + 1) / 2 if causal else full * c**2 + rho**2
    assert_same(pairs_formula(lowered(e)), [(1, None, want)])


def test_power_formula_is_n_log_n():
    b = 64
    f = pairs_formula(lowered(op("&", C, prim("power", block=b))))
    assert growth_class(f) == "O(N log N)"
    assert f.tail.has(flog2)
    nb = sp.floor(N / b)
    k = flog2(nb) + 1  # distances 1, 2, 4, ..., 2^(k-1) <= nb
    rho = N - b * nb
    want = nb * b * (b + 1) / 2 + rho * (rho + 1) / 2 + b * b * (nb * k - (2**k - 1)) + rho * b * k
    assert_same(f, [(1, b, N * (N + 1) / 2), (b + 1, None, want)])


def test_growth_classes():
    assert growth_class(pairs_formula(lowered(op("&", C, prim("window", size=64))))) == "O(N)"
    assert growth_class(pairs_formula(lowered(C))) == "O(N^2)"
    bounded = op("&", C, op("&", prim("sink", size=4), prim("window", size=64)))
    assert growth_class(pairs_formula(lowered(bounded))) == "O(1)"
    assert growth_class(pairs_formula(lowered(op("&", C, prim("strided", stride=8))))) == "O(N^2)"


def test_term_without_formula_says_why_and_counts_exactly():
    nb = Neighborhood((4, 5), (3, 3), (1, 1), (False, False), 2)
    p = Pattern((Term((Lit(nb),)),))
    with pytest.raises(NoFormula, match="neighbourhood"):
        pairs_formula(p)
    assert count_pairs(p, 22) == int(p.mask(22).sum())


# ---------------------------------------------------------------- bytes


@examples(25)
@given(lowered_cases(4, most=50), st.integers(1, 8), st.integers(1, 8))
def test_tile_bytes_match_the_mask(case, bm, bn):
    p, n = case
    mask = p.mask(n)
    kv = q = 0
    for i in range(0, n, bm):
        visited = [j for j in range(0, n, bn) if mask[i : i + bm, j : j + bn].any()]
        kv += 2 * sum(min(bn, n - j) for j in visited)
        q += min(bm, n - i) if visited else 0
    bmap = block_map(p, n, bm, bn)
    assert tile_bytes(bmap, 16, 2) == (kv + q + n) * 16 * 2
    q_all = sum(min(bm, n - i) for i in range(0, n, bm) for j in range(0, n, bn) if mask[i : i + bm, j : j + bn].any())
    assert tile_bytes(bmap, 16, 2, q_per_tile=True) == (kv + q_all + n) * 16 * 2


def test_count_stays_cheap_at_long_n():
    """Exact counts at N = 131072 come from diagonals, not masks: a dense mask would need 17 GB."""
    for e in (
        op("&", C, op("|", prim("sink", size=4), prim("window", size=1020))),
        op("&", C, op("|", prim("chunk", size=8192), prim("stride", stride=8, offset=0))),
        op("-", C, prim("chunk", size=4096)),
        op("|", prim("global", size=16), prim("window", left=256, right=256)),
    ):
        p = lowered(e)
        assert count_pairs(p, 131072) == pairs_formula(p).at(131072)


@given(st.integers(-600, 600), st.integers(-9, 9), st.integers(1, 16), st.sampled_from([N, T]))
def test_ceil_div_is_sympys_ceiling(c, e, m, var):
    """The lattice engine's quotient, built without sympy's evaluation, is the very expression
    sympy's ceiling gives (the same tree: the reports print it), for N and t."""
    want = sp.ceiling(sp.Rational(c, m) + sp.Rational(e, m) * var)
    assert sp.srepr(_ceil_div(c, e, m, var)) == sp.srepr(want)
