"""The backward pass: the column plan against brute force, and the generated backward kernels'
gradients against torch autograd through the module's `reference`.

The plan test needs no kernel: every (query tile, key tile) with an allowed pair must lie in
the tiles a key block visits (compiler.plan.span_tiles of plan_columns), and every tile that
skips the mask must be fully allowed; the same for the row plan that the dQ kernel reads.
Kernels run under TRITON_INTERPRET=1 on tiny fp32 shapes: N not a multiple of the tile, GQA,
several head groups, rows without keys.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnc.compiler.plan import plan_columns, plan_rows, span_tiles
from tests.strategies import causal_expressions, expressions
from tests.test_codegen_support import EXPRS, as_pattern

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _tile_truth(mask: np.ndarray, block: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(any, all) allowed pair per (block, tile) of a dense (blocks side, tiles side) mask."""
    n = mask.shape[0]
    nb, nt = -(-n // block), -(-n // tile)
    some = np.zeros((nb, nt), dtype=bool)
    every = np.zeros((nb, nt), dtype=bool)
    for i in range(nb):
        for j in range(nt):
            part = mask[i * block:(i + 1) * block, j * tile:(j + 1) * tile]
            some[i, j] = part.any()
            every[i, j] = part.all() and (j + 1) * tile <= n
    return some, every


def _check_spans(pattern, n: int, block: int, tile: int) -> None:
    mask = pattern.mask(n)
    for plan, dense in ((plan_columns(pattern), mask.T), (plan_rows(pattern), mask)):
        visited, full = span_tiles(plan, n, block, tile)
        some, every = _tile_truth(dense, block, tile)
        side = "column" if plan.columns else "row"
        assert not (some & ~visited).any(), f"{side} plan skips a tile with allowed pairs: {np.argwhere(some & ~visited)}"
        assert not (full & ~every).any(), f"{side} plan's unmasked tile is not fully allowed: {np.argwhere(full & ~every)}"


@pytest.mark.parametrize("name", sorted(EXPRS))
def test_column_plan_covers_the_mask(name):
    pattern = as_pattern(EXPRS[name])
    for n, block, tile in ((1, 16, 16), (77, 16, 16), (77, 32, 16), (100, 16, 32), (64, 8, 8)):
        _check_spans(pattern, n, block, tile)


def test_column_plan_of_a_window_is_tight():
    # causal & (sink(4) | window(20)): key block 10 (keys 80..87) is seen by queries 80..106
    # (query tiles 10..13 of 8), and queries 87..99 see all of it: tile 11 (88..95) skips the mask
    pattern = as_pattern(EXPRS["sink_window"])
    visited, full = span_tiles(plan_columns(pattern), 256, 8, 8)
    assert np.flatnonzero(visited[10]).tolist() == [10, 11, 12, 13]
    assert np.flatnonzero(full[10]).tolist() == [11]
    assert visited[0].all(), "the sinks' key block is seen by every query"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(expressions(5), causal_expressions(4)), st.integers(1, 70),
       st.sampled_from([(8, 8), (16, 8), (8, 16)]))
def test_random_column_plans_cover_the_mask(expr, n, tiles):
    _check_spans(as_pattern(expr), n, *tiles)
