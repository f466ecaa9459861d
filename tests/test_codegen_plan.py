"""The kernel plan against the exact block map: which tiles the generated kernel visits.

The kernel's TRACE mode records, instead of computing, every key block that each query
block visits and whether it was masked. Every tile with an allowed pair must be visited
exactly once, and every tile visited without the mask must be fully allowed
(compiler.blocks.block_map). Runs under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.plan import MAX_TERMS, plan_group, plan_program
from attnc.compiler.blocks import block_map
from attnc.compiler.ir import Status
from tests.strategies import causal_expressions, examples, expressions, op, prim
from tests.test_codegen_support import EXPRS, as_pattern, check_visits, grouped, single, tile_visits, visits

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIGS = [dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=32, BLOCK_N=16), dict(BLOCK_M=16, BLOCK_N=32)]


def _against_block_map(program, n, cfg):
    cfg = dict(cfg, BLOCK_N_NARROW=cfg["BLOCK_N"])
    tiles = tile_visits(program, n, cfg)[0]
    status = block_map(program.groups[0].pattern, n, cfg["BLOCK_M"], cfg["BLOCK_N"]).status
    assert tiles.shape == status.shape
    assert (tiles[status != Status.NONE] > 0).all(), "a tile with allowed pairs was skipped"
    assert (status[tiles == 2] == Status.ALL).all(), "an unmasked tile is not fully allowed"
    return tiles, status


@pytest.mark.parametrize("name", sorted(EXPRS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['BLOCK_M']}x{c['BLOCK_N']}")
def test_visits_match_block_map(name, cfg):
    program = single(EXPRS[name], name)
    for n in (1, 64, 77):  # one row, whole tiles, a last tile cut short (test_simulate_kernel's too)
        check_visits(program, n, dict(cfg, BLOCK_N_NARROW=16))
        if not _stripes(program):  # a stripe tile's keys lie in many key blocks: check_visits covers it
            _against_block_map(program, n, cfg)


def _stripes(program) -> bool:
    return any(t.loop is not None and t.loop.kind == "stripe" for g in plan_program(program) for t in g.terms)


def test_causal_window_masks_only_edge_blocks():
    program = single(op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=64))), "sw")
    tiles, status = _against_block_map(program, 256, dict(BLOCK_M=16, BLOCK_N=16))
    # every fully allowed tile of the window runs unmasked; masked tiles are the partial ones
    # plus the sink block of rows whose window does not reach key 0
    assert (tiles[status == Status.ALL] == 2).all()
    masked = (tiles == 1) & (status != Status.SOME)
    assert not masked[:, 1:].any()
    assert (tiles[:, 0] > 0).all(), "the sink block is visited by every query block"
    assert not ((tiles > 0) & (status == Status.NONE)).any()


def test_sinks_are_a_narrow_loop():
    program = single(op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=64))), "sw")
    masked, unmasked = visits(program, 256, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_N_NARROW=16))
    # query block 7 (rows 224..255): the window covers keys 161.. ; the sinks are one 16-key tile
    assert masked[0, 7, :16].tolist() == [1] * 16 and (masked[0, 7, 16:160] == 0).all()


def test_power_visits_only_power_distances():
    program = single(op("&", prim("causal"), prim("power", block=16)), "pw")
    tiles, status = _against_block_map(program, 300, dict(BLOCK_M=16, BLOCK_N=16))
    assert not ((tiles > 0) & (status == Status.NONE)).any()
    assert (tiles[status == Status.ALL] == 2).all()


def test_two_groups_in_one_launch_visit_their_own_tiles():
    a = op("&", prim("causal"), prim("window", size=8))
    b = op("&", prim("causal"), prim("chunk", size=16))
    program = grouped([[a, b, b, a]], "two")
    check_visits(program, 70, dict(BLOCK_M=16, BLOCK_N=16), heads=4)


def test_many_terms_fall_back_to_one_hull():
    pattern = as_pattern(EXPRS["many_terms"])
    assert len(pattern.terms) > MAX_TERMS
    assert plan_group(0, pattern).mode == "hull"


@examples(12)
@given(
    st.one_of(expressions(5), causal_expressions(4)),
    st.integers(1, 70),
    st.sampled_from(CONFIGS),
    st.sampled_from([16, 32]),
)
def test_random_patterns_visit_every_needed_key_once(expr, n, cfg, narrow):
    program = single(expr, "rand")
    check_visits(program, n, dict(cfg, BLOCK_N_NARROW=min(narrow, cfg["BLOCK_N"])))


@examples(8)
@given(causal_expressions(4), st.integers(1, 70), st.sampled_from(CONFIGS))
def test_random_patterns_against_block_map(expr, n, cfg):
    program = single(expr, "rand")
    if not _stripes(program):  # stripe tiles: test_random_patterns_visit_every_needed_key_once
        _against_block_map(program, n, cfg)


def _loop_patterns():
    """Patterns with the loop terms (Power blocks, large (q - k) moduli, k mod m stripes, with
    parameters the shared strategies do not produce); unioned with random terms."""
    from attnc.compiler.algebra import union
    from attnc.compiler.ir import Band, DiffMod, KMod, Lit, Pattern, Power, Term

    band = st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(5, 200))).map(lambda t: Lit(Band(*t)))
    power = st.sampled_from([16, 24, 32, 48]).map(lambda b: Lit(Power(b)))
    diag = st.integers(64, 90).flatmap(lambda m: st.integers(0, m - 1).map(lambda r: Lit(DiffMod(m, r))))
    stripe = st.integers(2, 40).flatmap(lambda m: st.integers(0, m - 1).map(lambda r: Lit(KMod(m, r))))
    loop_term = st.tuples(band, st.one_of(power, diag, stripe)).map(lambda t: Pattern((Term(t),)))
    other = st.one_of(st.none(), causal_expressions(2))
    return st.tuples(loop_term, other).map(lambda t: t[0] if t[1] is None else union(t[0], as_pattern(t[1])))


@examples(4)
@given(_loop_patterns(), st.integers(1, 260), st.sampled_from(CONFIGS))
def test_loop_terms_visit_every_needed_key_once(pattern, n, cfg):
    program = single(pattern, "loops")
    check_visits(program, n, dict(cfg, BLOCK_N_NARROW=16))


def test_stripes_visit_only_their_keys():
    """A k mod m term reads its stripe's keys only: every key the kernel visits outside the
    window's blocks is on the stripe, and the stripe's keys below every row run unmasked."""
    program = single(op("&", prim("causal"), op("|", prim("window", size=4), prim("stride", stride=8, offset=3))), "s")
    masked, unmasked = visits(program, 200, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_N_NARROW=16))
    for i in range(masked.shape[1]):
        q0 = 16 * i
        below = np.arange(200) < (q0 - 3) // 16 * 16  # keys under the window's first block
        seen = (masked[0, i] + unmasked[0, i]) > 0
        assert (np.flatnonzero(seen & below) % 8 == 3).all(), f"block {i} reads keys off the stripe"
        stripe = below & (np.arange(200) % 8 == 3)
        assert seen[stripe].all() and (unmasked[0, i][stripe] > 0).sum() >= stripe.sum() - 16


SPLITS = {  # name: (expression, m of its split, or None: no split)
    "window3_strided4": (op("&", prim("causal"), op("|", prim("window", size=3), prim("strided", stride=4))), 4),
    "window20_strided9": (op("&", prim("causal"), op("|", prim("window", size=20), prim("strided", stride=9))), 9),
    "band_strided5": (
        op("|", op("&", prim("causal"), prim("window", size=7)), op("&", prim("causal"), prim("strided", stride=5))),
        5,
    ),
    "two_sided": (op("|", prim("window", left=20, right=9), prim("strided", stride=4)), None),
    "sink_window_strided": (
        op(
            "&",
            prim("causal"),
            op("|", op("|", prim("sink", size=4), prim("window", size=3)), prim("strided", stride=4)),
        ),
        None,
    ),
    "strided_alone": (op("&", prim("causal"), prim("strided", stride=4)), None),
}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_split_pattern_against_brute_force(name):
    # the rest plus the residue band lifted to positions = the pattern, with no pair twice
    from attnc.compiler.plan import split_pattern

    expr, m = SPLITS[name]
    pattern = as_pattern(expr)
    split = split_pattern(pattern)
    assert (split is None) == (m is None)
    if split is None:
        return
    assert split[0] == m
    n = 3 * m + 5
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    rest = split[1].holds(q, k)
    same = (q - k) % m == 0
    lifted = same & split[2].holds(q // m, k // m)  # q' - k' = (q - k) / m within a class
    assert not (rest & lifted).any()
    assert np.array_equal(rest | lifted, pattern.holds(q, k))
    plan = plan_group(0, pattern)
    assert plan.split == m and plan.split_plan.pattern == split[1] and plan.residue_plan.pattern == split[2]
    assert plan.tuning["split"] == m and plan.tuning["residue"] == 0
