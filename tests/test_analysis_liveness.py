"""KV liveness (compiler.liveness) against brute-force search for future readers."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.formula import T, NoFormula
from attnc.compiler.liveness import Region, brute_live, cache_layout
from attnc.compiler.lower import lower_expr
from tests.strategies import examples, lowered, op, prim

C = prim("causal")


def horizon(t: int) -> int:
    """Future queries the brute force tries: q in [t, t + horizon).

    Enough for every layout that claims to be exact: a term whose readers of k are bounded
    (band hi, chunk, q-range) has them within t + max constant, and the strategies' constants
    are below 64 (band 8 + 6, dilated 12 * 4, chunk 12, global 5); an unbounded term with a
    (q - k) modulus m <= 6 has a reader within m of any point; with power(B <= 5), the block
    distance reaches the next power of two within a factor 2, q <= 2t + 4B; a negated chunk or
    power is satisfied one chunk or three blocks further on. 4t + 256 covers all of these.
    Layouts that are not exact are checked only for containing the brute-force set, which
    holds for any horizon.
    """
    return 4 * t + 256


@examples(80)
@given(lowered(causal=True), st.lists(st.integers(0, 80), min_size=1, max_size=4))
def test_live_keys_equal_brute_force(case, ts):
    p = case[0]
    layout = cache_layout(p)
    try:
        size = layout.size_formula()
    except NoFormula:
        size = None
    for t in ts:
        live, want = layout.live(t), brute_live(p, t, horizon(t))
        assert not (want & ~live).any(), ("lossy layout", str(p), t, layout.describe())
        if layout.exact:
            assert (live == want).all(), (str(p), t, layout.describe(), np.flatnonzero(live != want))
        if size is not None:
            assert size.at(t) == int(live.sum()), (str(p), t, str(size))


COMMON = {
    "streaming": op("&", C, op("|", prim("sink", size=4), prim("window", size=1020))),
    "window": op("&", C, prim("window", size=4096)),
    "dilated": op("&", C, prim("dilated", size=1024, dilation=4)),
    "stride": op("&", C, prim("stride", stride=64, offset=63)),
    "stride_window": op("&", C, op("|", prim("stride", stride=8, offset=0), prim("window", size=128))),
    "chunk": op("&", C, prim("chunk", size=8192)),
    "dense": C,
    "power": op("&", C, op("|", prim("power", block=64), prim("window", size=256))),
    "longformer": op("&", C, op("|", prim("window", size=512), prim("global", size=8))),
    "strided": op("&", C, prim("strided", stride=128)),
}


@pytest.mark.parametrize("name", sorted(COMMON))
def test_common_decoder_layouts_are_exact(name):
    assert cache_layout(lower_expr(COMMON[name])).exact


def kinds(e) -> list[str]:
    return sorted(r.kind for r in cache_layout(lower_expr(e)).regions)


def test_streaming_llm_keeps_sink_and_ring():
    layout = cache_layout(lower_expr(COMMON["streaming"]))
    assert set(layout.regions) == {Region(k_lo=0, k_hi=3), Region(recent=1019)}
    f = layout.size_formula()
    assert sp.simplify(f.as_expr() - sp.Piecewise((T, T <= 1023), (1023, True))) == 0
    # at t the cache holds keys < t: the 4 sinks and keys t-1019 .. t-1 (then token t is appended)
    t = 5000
    assert list(np.flatnonzero(layout.live(t))) == [0, 1, 2, 3] + list(range(t - 1019, t))


def test_window_keeps_last_w_minus_one_keys():
    layout = cache_layout(lower_expr(COMMON["window"]))
    assert layout.regions == (Region(recent=4095),)
    assert layout.size_at(10_000) == 4095


def test_dense_keeps_everything():
    layout = cache_layout(lower_expr(COMMON["dense"]))
    assert layout.is_full and kinds(COMMON["dense"]) == ["full"]
    assert sp.expand(layout.size_formula().as_expr() - T) == 0
    assert kinds(COMMON["strided"]) == ["full"]  # every key has a future reader at distance 0 mod s
    assert kinds(COMMON["power"]) == ["full"]


def test_column_stripes_keep_every_sth_key():
    layout = cache_layout(lower_expr(COMMON["stride"]))
    assert layout.regions == (Region(stride=(64, 63)),)
    assert sp.expand(layout.size_formula().as_expr() - sp.ceiling((T - 63) / 64)) == 0
    assert list(np.flatnonzero(layout.live(200))) == [63, 127, 191]


def test_chunk_keeps_the_current_chunk():
    layout = cache_layout(lower_expr(COMMON["chunk"]))
    assert kinds(COMMON["chunk"]) == ["chunk"]
    assert sp.expand((layout.size_formula().as_expr() - sp.Mod(T, 8192)).rewrite(sp.floor)) == 0
    assert list(np.flatnonzero(layout.live(8195))) == [8192, 8193, 8194]


def test_dilated_ring_covers_the_widest_offset():
    assert cache_layout(lower_expr(COMMON["dilated"])).regions == (Region(recent=4092),)


def test_global_queries_die_and_global_keys_stay():
    layout = cache_layout(lower_expr(COMMON["longformer"]))
    assert set(layout.regions) == {Region(k_hi=7), Region(recent=511)}


def test_union_of_layouts_for_a_shared_kv_head():
    a = cache_layout(lower_expr(COMMON["streaming"]))
    b = cache_layout(lower_expr(COMMON["stride"]))
    u = a.union(b)
    t = 9000
    assert (u.live(t) == (a.live(t) | b.live(t))).all()
    assert u.size_formula().at(t) == int(u.live(t).sum())


@pytest.mark.parametrize("name", sorted(COMMON))
def test_common_layouts_size_formula_at_long_t(name):
    layout = cache_layout(lower_expr(COMMON[name]))
    for t in (0, 1, 1023, 1024, 8191, 8192, 131072):
        assert layout.size_formula().at(t) == layout.size_at(t)
