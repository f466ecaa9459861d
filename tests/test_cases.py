"""The shared case matrix (tests/cases.py) through the stages that need no kernel: it covers the
language, every case parses and checks, and its analyses (block map, pair count, liveness,
receptive field, the grid tile order) and the simulator agree with brute force on it."""

from __future__ import annotations

import numpy as np
import pytest

from attnc.compiler import simulate as sim
from attnc.compiler.blocks import block_map, brute_block_map
from attnc.compiler.count import count_pairs
from attnc.compiler.grid_blocks import brute_tiled_block_map, tiled_block_map
from attnc.compiler.ir import Status
from attnc.compiler.liveness import brute_live, cache_layout
from attnc.compiler.receptive import layer_patterns
from attnc.compiler.tiling import choose_tiling, grid_terms
from attnc.spec.describe import describe
from attnc.spec.primitives import PRIMITIVES
from tests.cases import CASES, FEATURES, FILES, BY_NAME, grid_tokens
from tests.test_analysis_liveness import horizon
from tests.test_analysis_receptive import check_against_graph

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
IDS = [c.name for c in CASES]


def patterns_of(case):
    return [g.pattern for g in case.program.groups]


def test_the_matrix_covers_every_primitive_and_feature():
    """Adding a primitive to the language without a case here fails this test."""
    covered = set().union(*(c.features for c in CASES))
    assert set(PRIMITIVES) | FEATURES <= covered, sorted(set(PRIMITIVES) | FEATURES - covered)


def test_every_pattern_file_is_a_case():
    assert {p.stem for p in FILES} <= set(BY_NAME)
    assert all(BY_NAME[p.stem].path == p for p in FILES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_parses_checks_and_lowers(case):
    spec = case.spec
    if spec is not None:
        assert describe(spec).startswith(f"{spec.name}: ")
    program = case.program
    assert program.groups and all(g.members for g in program.groups)
    if case.grid:
        assert grid_tokens(case) > 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_block_map_and_pair_count_equal_the_mask(case):
    n = case.n
    for pattern in patterns_of(case):
        mask = pattern.mask(n)
        assert count_pairs(pattern, n) == int(mask.sum())
        for bm, bn in ((16, 16), (7, 5)):
            fast, brute = block_map(pattern, n, bm, bn), brute_block_map(pattern, n, bm, bn)
            assert (fast.status == brute.status).all(), (bm, bn)
        assert (brute_block_map(pattern, n, 16, 16).status != Status.NONE).any() == mask.any()


@pytest.mark.parametrize("case", [c for c in CASES if c.causal], ids=lambda c: c.name)
def test_live_keys_contain_every_future_read(case):
    """compiler.liveness keeps every key a later query reads; exactly those where it says exact."""
    for pattern in patterns_of(case):
        layout = cache_layout(pattern)
        for t in (1, case.n // 2, case.n - 1):
            live, want = layout.live(t), brute_live(pattern, t, horizon(t))
            assert not (want & ~live).any(), (t, layout.describe())
            if layout.exact:
                assert (live == want).all(), (t, layout.describe())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_receptive_field_equals_the_graph(case):
    patterns = layer_patterns(case.program)[:3]
    check_against_graph(patterns if len(patterns) > 1 else patterns * 2, min(case.n, 40))


TILED = [c for c in CASES if c.grid and c.path is None and grid_terms(c.pattern) is not None]


def test_sections_and_tile_order_cases_are_what_they_say():
    assert len(BY_NAME["per_head"].program.groups) == 3
    assert BY_NAME["per_layer"].program.varies_by_layer
    assert len(TILED) >= 3, "unions of neighbourhoods on one grid run in tile order"


@pytest.mark.parametrize("case", TILED, ids=str)
def test_grid_tile_order_equals_the_permuted_mask(case):
    pattern = case.pattern
    tiling = choose_tiling(grid_terms(pattern), 16, 16)
    fast, brute = tiled_block_map(pattern, tiling), brute_tiled_block_map(pattern, tiling)
    assert (fast.status == brute.status).all() and fast.prefix_pairs == brute.prefix_pairs


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_simulation_runs_and_agrees_with_the_block_map(case):
    """The simulator's prefill prediction of layer 0 runs, its ideal visit is the exact block
    map's non-empty tiles at the kernel's tiles, and its tile counts are the block map's."""
    program, n = case.program, case.n
    heads = program.model.heads or 2
    shape = sim.Shape(n, heads=heads, kv_heads=program.model.kv_heads or heads, head_dim=64)
    work = sim.prefill_workload(program, shape, (9, 0), layer=0)
    row = sim.head_patterns(program, heads, 0)
    want = 0
    for g in row:
        cfg = sim.kernel_config(program, 64, "bfloat16", (9, 0), g)
        status = brute_block_map(program.groups[g].pattern, n, cfg.bm, cfg.bn).status
        want += int((status != Status.NONE).sum())
        tiles = sim.block_tiles(program.groups[g].pattern, n, cfg.bm, cfg.bn)
        assert (tiles.full == (status == Status.ALL).sum(1)).all()
        assert (tiles.masked == (status == Status.SOME).sum(1)).all()
    assert work.ideal_tiles == want
    pred = sim.time_workload(work)
    assert np.isfinite(pred.attnc.ms) and pred.attnc.ms > 0 and pred.sdpa.ms > 0
    if case.causal:
        dec = sim.predict_decode(program, shape, layer=0)
        assert 0 < dec.cache_bytes <= dec.dense_cache_bytes or not any(g.pattern.terms for g in program.groups)
