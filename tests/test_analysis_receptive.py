"""Receptive field (compiler.receptive): exact vectors and closed forms against a networkx BFS."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.ir import HeadGroup, Lit, ModelShape, Neighborhood, Pattern, Program, Term
from attnc.compiler.lower import lower_expr
from attnc.compiler.receptive import (
    _axis_reach,
    _axis_relation,
    closed_form,
    graph_receptive_field,
    layer_patterns,
    receptive_field,
    step,
)
from tests.strategies import examples, lowered, op, prim

C = prim("causal")


def check_against_graph(patterns, n):
    rf = receptive_field(patterns, n)
    for row, want in zip(rf.rows, graph_receptive_field(patterns, n)):
        got = set(range(n)) - {x for a, b in row.gaps for x in range(a, b)} if len(row.gaps) < 8 else None
        assert row.covered == len(want) and row.earliest == min(want), (row, sorted(want))
        if got is not None:
            assert got == want
    return rf


@examples(30)
@given(st.lists(lowered(4), min_size=1, max_size=3), st.integers(1, 28), st.booleans())
def test_vectors_equal_networkx(cases, n, uniform):
    patterns = [p for p, _ in cases]
    if uniform:
        patterns = [patterns[0]] * len(patterns)
    check_against_graph(patterns, n)


@examples(20)
@given(st.integers(1, 12), st.integers(0, 5), st.integers(2, 90), st.integers(1, 6))
def test_window_and_sink_closed_forms_equal_the_graph(w, s, n, layers):
    e = op("&", C, prim("window", size=w))
    if s:
        e = op("&", C, op("|", prim("sink", size=s), prim("window", size=w)))
    p = lower_expr(e)
    assert closed_form(p, n) is not None
    rf = check_against_graph([p] * layers, n)
    assert rf.closed_form is not None and "disagreed" not in rf.full_note  # closed form == vectors
    earliest, covered = closed_form(p, n)[1](layers)
    assert (earliest, covered) == (rf.rows[-1].earliest, rf.rows[-1].covered)
    full = closed_form(p, n)[2]
    if full is not None and full <= layers:
        assert rf.rows[full - 1].covered == n and (full == 1 or rf.rows[full - 2].covered < n)


def test_window_stack_reaches_w_minus_one_per_layer():
    """DESIGN.md: a stack of window(1020) layers sees 30 * 1019 tokens back after 30 layers."""
    rf = receptive_field([lower_expr(op("&", C, prim("window", size=1020)))] * 30, 131072)
    assert [r.back for r in rf.rows] == [1019 * l for l in range(1, 31)]
    assert rf.full_at == -(-131071 // 1019) and rf.closed_form.startswith("window")


def test_sinks_join_at_layer_one():
    rf = receptive_field([lower_expr(op("&", C, op("|", prim("sink", size=4), prim("window", size=1020))))] * 3, 131072)
    assert [r.earliest for r in rf.rows] == [0, 0, 0]
    assert [r.span for r in rf.rows] == [1019, 2038, 3057]
    assert rf.rows[0].covered == 4 + 1020 and rf.rows[0].gaps[0] == (4, 131071 - 1019)


@pytest.mark.parametrize("b,n", [(1, 64), (4, 256), (64, 131072)])
def test_power_attention_reaches_2_to_the_d_blocks_in_d_layers(b, n):
    p = lower_expr(op("&", C, prim("power", block=b)))
    layers = 8
    rf = receptive_field([p] * layers, n)
    nb = -(-n // b)
    reached = np.zeros(n, dtype=bool)
    reached[n - 1] = True
    for d in range(1, layers + 1):
        reached = step(p, reached)
        first = max(0, (nb - 2**d) * b)  # every block at distance < 2^d, after d layers
        assert reached[first:].all(), d
        assert int(reached.sum()) == rf.rows[d - 1].covered
    assert rf.full_at == max(1, nb.bit_length() - 1)
    if n <= 256:
        check_against_graph([p] * 4, n)


def test_chunk_never_leaves_its_chunk():
    rf = receptive_field([lower_expr(op("&", C, prim("chunk", size=8192)))] * 4, 131072)
    assert all(r.earliest == 131072 - 8192 for r in rf.rows) and rf.full_at is None


def test_dilated_stack_stops_growing():
    rf = receptive_field([lower_expr(op("&", C, prim("dilated", size=8, dilation=4)))] * 3, 200)
    assert rf.full_at is None and "never" in rf.full_note
    assert [r.back for r in rf.rows] == [28, 56, 84]


def test_neighborhood_reach_equals_the_graph():
    rng = random.Random(5)
    for _ in range(30):
        dims = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3)))
        dilation = tuple(rng.randint(1, max(1, d // 2)) for d in dims)
        kernel = tuple(rng.randint(1, max(1, d // g)) for d, g in zip(dims, dilation))
        nb = Neighborhood(
            dims,
            kernel,
            dilation,
            tuple(rng.random() < 0.5 for _ in dims),
            rng.randint(0, 2),
            tuple(rng.randint(1, k) for k in kernel),
        )
        n = nb.prefix + int(np.prod(dims))
        check_against_graph([Pattern((Term((Lit(nb),)),))] * 2, n)


def test_axis_reach_equals_the_relation_product():
    """One axis of a neighbourhood's step (cumulative counts) against the 0/1 matrix product."""
    rng = np.random.default_rng(3)
    for length in range(1, 12):
        for kernel, dilation, causal, stride in itertools.product(range(1, 5), range(1, 4), (False, True), (1, 2, 3)):
            if kernel > -(-length // dilation) or stride > kernel:
                continue
            window = (kernel, dilation, causal, stride)
            src = rng.random((3, length)) < 0.3
            rel = _axis_relation(length, window).astype(np.int64)
            assert (_axis_reach(src, length, window) == (src.astype(np.int64) @ rel > 0)).all(), window


def program(per_layer: list, heads: int = 2) -> Program:
    groups: dict = {}
    for l, row in enumerate(per_layer):
        for h, e in enumerate(row if isinstance(row, list) else [row] * heads):
            groups.setdefault(lower_expr(e), set()).add((l, h))
    return Program(
        "p",
        "",
        ModelShape(layers=len(per_layer), heads=heads, kv_heads=1),
        tuple(HeadGroup(p, frozenset(m)) for p, m in groups.items()),
    )


def test_per_layer_patterns_apply_the_last_layer_first():
    w4 = op("&", C, prim("window", size=4))
    chunk = op("&", C, prim("chunk", size=16))
    sink = op("&", C, prim("sink", size=1))
    prog = program([w4, chunk, [w4, sink]])  # layer 2: head 0 a window, head 1 a sink (union)
    patterns = layer_patterns(prog)
    assert patterns[2] == lower_expr(op("|", w4, sink))
    rf = check_against_graph(patterns, 40)
    assert not rf.uniform and rf.rows[0].earliest == 36  # layer 1 alone: window(4)
    with pytest.raises(ValueError, match="at most 3"):
        layer_patterns(prog, 5)


def test_step_keeps_the_residual_stream():
    p = lower_expr(op("&", C, prim("band", lo=2, hi=3)))
    src = np.zeros(10, dtype=bool)
    src[9] = True
    assert list(np.flatnonzero(step(p, src))) == [6, 7, 9]
