"""The tile-order neighbourhood kernel (codegen/templates/grid.py.j2) under TRITON_INTERPRET=1.

Against the independent brute force of NATTEN's definition in tests/test_grids_spec.py, on
random grids (hypothesis): 1 to 3 axes, borders, dilation, causal axes, non-square grids,
prefix tokens, unions of neighbourhoods and intersections with 1-D primitives, tile shapes
that do not divide the grid. The kernel's visits (its TRACE mode) are checked against the
compiler's token order and tile counts (compiler/tiling.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.lower import lower
from attnc.compiler.tiling import GridTiling, grid_terms, tile_visits
from attnc.spec.resolve import resolve_text
from tests.strategies import examples
from tests.test_codegen_support import assert_close, dense_reference, inputs, load
from tests.test_grids_spec import brute_pairs, grids

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIGS = [dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=32, BLOCK_N=16), dict(BLOCK_M=16, BLOCK_N=32)]


def call(kernel, dilation, causal, stride) -> str:
    words = lambda xs: "(" + ", ".join(str(x).lower() for x in xs) + ",)"  # noqa: E731
    return (
        f"neighborhood(kernel = {words(kernel)}, dilation = {words(dilation)}, causal = {words(causal)}, "
        f"stride = {words(stride)})"
    )


@st.composite
def grid_patterns(draw, max_tokens: int = 64):
    """(attn text, brute-force mask): one or two neighbourhoods on a random grid, maybe & causal;
    strides are often a power of two (so that they can hold whole query tiles: GNA's case)."""
    dims, kernel, dilation, causal, prefix, stride = draw(grids(max_dim=10, max_tokens=max_tokens))
    if draw(st.booleans()):  # GNA: undilated, non-causal, power-of-two strides
        dilation, causal = (1,) * len(dims), (False,) * len(dims)
        stride = tuple(draw(st.sampled_from([s for s in (1, 2, 4, 8) if s <= k] or [1])) for k in kernel)
    terms = [(kernel, dilation, causal, stride)]
    if draw(st.booleans()):
        dil2 = tuple(draw(st.integers(1, n)) for n in dims)
        k2 = tuple(draw(st.integers(1, n // d)) for n, d in zip(dims, dil2))
        terms.append((k2, dil2, tuple(draw(st.booleans()) for _ in dims), tuple(draw(st.integers(1, k)) for k in k2)))
    mask = np.zeros((prefix + math.prod(dims),) * 2, dtype=bool)
    for kernel_t, dilation_t, causal_t, stride_t in terms:
        mask |= brute_pairs(dims, kernel_t, dilation_t, causal_t, prefix, stride_t)
    expr = " | ".join(call(*t) for t in terms)
    if draw(st.booleans()):
        expr = f"({expr}) & causal"
        mask &= np.tril(np.ones_like(mask))
    head = f"grid({', '.join(map(str, dims))})" + (f" prefix = {prefix}" if prefix else "")
    return f"{head}\npattern p = {expr}\n", mask


def program_of(text: str):
    return lower(resolve_text(text, "grid_test.attn"))


def check_against(
    text: str,
    mask: np.ndarray,
    config: dict,
    *,
    h: int = 2,
    h_kv: int = 1,
    d: int = 16,
    dtype=torch.float32,
    seed: int = 0,
):
    program = program_of(text)
    mod = load(program)
    assert mod._TUNING[0]["grid"], "a union of neighbourhoods runs the tile-order kernel"
    n = mask.shape[0]
    q, k, v = inputs(1, h, h_kv, n, d, dtype, seed)
    out, lse = mod._forward(q, k, v, None, True, None, config=config)
    masks = torch.from_numpy(mask)[None].expand(h, n, n)
    ref, ref_lse = dense_reference(q, k, v, masks)
    assert_close(out, ref, dtype)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "lse must be -inf exactly on rows without keys"
    if finite.any():
        assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() < 1e-3
    return mod


@examples(5)
@given(grid_patterns(), st.sampled_from(CONFIGS))
def test_kernel_equals_natten_brute_force(case, config):
    """One head (head groups are test_half_precision_and_gqa's: the pattern does not change them)."""
    text, mask = case
    check_against(text, mask, config, h=1)


@examples(8)
@given(grid_patterns(max_tokens=50), st.sampled_from(CONFIGS))
def test_visits_follow_the_token_order(case, config):
    """Each program visits the key tiles of its query tile's boxes once each: every key a row of
    the tile needs, no key twice, and as many key tiles as compiler/tiling.py counts."""
    text, mask = case
    program = program_of(text)
    mod = load(program)
    n = mask.shape[0]
    x = torch.zeros(1, 1, n, 16)
    ((group, tr),) = mod.grid_visits(x, x, x, config=config)
    tr = tr[0].numpy()
    g = grid_terms(program.groups[0].pattern)
    q_tile, k_tile = mod._GRID_TILES[0][(config["BLOCK_M"], config["BLOCK_N"])]
    tiling = GridTiling(g.dims, g.prefix, q_tile, k_tile)
    rows = tiling.q_positions().reshape(-1, config["BLOCK_M"])
    slots = tiling.k_positions().reshape(-1, config["BLOCK_N"])
    expected = tile_visits(g, q_tile, k_tile)
    assert tr.shape[0] == len(rows) + -(-g.prefix // config["BLOCK_M"])
    assert (tr <= 1).all(), "a key visited twice by one program"
    for p, tile_rows in enumerate(rows):
        real = tile_rows[tile_rows >= 0]
        need = mask[real].any(axis=0)
        assert (tr[p][need] == 1).all(), f"program {p}: needed keys missed: {np.flatnonzero(need & (tr[p] == 0))}"
        grid_seen = tr[p][g.prefix :]
        if len(g.terms) == 1:
            assert box_count(grid_seen.reshape(g.dims), need[g.prefix :].reshape(g.dims), k_tile) == expected[p]
            continue
        touched = {i for i, s in enumerate(slots) if grid_seen[s[s >= 0] - g.prefix].any()}
        # every key tile of a box holds a grid token (boxes stop at the last coordinate), so the
        # tiles the trace touches are exactly the ones visited
        assert len(touched) == expected[p], f"program {p}: {len(touched)} key tiles visited, planned {expected[p]}"
    for p in range(len(rows), tr.shape[0]):  # prefix rows read every key once
        assert (tr[p] == 1).all()


def box_count(seen: np.ndarray, need: np.ndarray, k_tile) -> int:
    """Key boxes behind one program's visits for a single neighbourhood: the visited keys are a
    box (a product of per-axis runs), and per axis the run is either whole key tiles (from a
    multiple of the tile) or boxes of the key tile from the first needed coordinate on (a tile's
    shared window, GNA), cut at the grid's end. Returns how many boxes that is."""
    runs = [np.flatnonzero(seen.any(axis=tuple(b for b in range(seen.ndim) if b != a))) for a in range(seen.ndim)]
    want = np.zeros(seen.shape, dtype=bool)
    want[np.ix_(*runs)] = True
    assert (seen.astype(bool) == want).all(), "the visited keys are not a box"
    count = 1
    for a, (run, tk) in enumerate(zip(runs, k_tile)):
        assert (np.diff(run) == 1).all(), f"axis {a}: the visited coordinates are not a run"
        first = np.flatnonzero(need.any(axis=tuple(b for b in range(need.ndim) if b != a)))[0]
        if run[0] % tk == 0 and (run[-1] + 1) % tk == 0 or run[-1] == seen.shape[a] - 1 and run[0] % tk == 0:
            count *= -(-len(run) // tk)  # whole key tiles (the last one maybe cut by the grid)
        else:
            assert run[0] == first, f"axis {a}: boxes start at {run[0]}, the shared window at {first}"
            assert len(run) % tk == 0 or run[-1] == seen.shape[a] - 1, f"axis {a}: a box cut short inside the grid"
            count *= -(-len(run) // tk)
    return count


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_and_gqa(dtype):
    text = "grid(6, 9) prefix = 2\npattern p = neighborhood(kernel = (3, 5), dilation = (1, 1))\n"
    mask = brute_pairs((6, 9), (3, 5), (1, 1), (False, False), 2)
    check_against(text, mask, dict(BLOCK_M=16, BLOCK_N=16), h=4, h_kv=2, d=32, dtype=dtype)


def test_other_lengths_run_the_generic_kernel():
    """The tile-order kernel covers prefix + grid tokens; any other length is still exact."""
    text = "grid(5, 7)\npattern p = neighborhood(kernel = (3, 3))\n"
    mod = load(program_of(text))
    full = brute_pairs((5, 7), (3, 3), (1, 1), (False, False), 0)
    for n in (20, 35, 50):
        mask = np.zeros((n, n), dtype=bool)
        m = min(n, 35)
        mask[:m, :m] = full[:m, :m]
        q, k, v = inputs(1, 2, 1, n, 16, torch.float32, 1)
        out = mod._forward(q, k, v, None, False, None, config=dict(BLOCK_M=16, BLOCK_N=16))[0]
        ref, _ = dense_reference(q, k, v, torch.from_numpy(mask)[None].expand(2, n, n))
        assert_close(out, ref, torch.float32)


def test_heads_mix_grid_and_generic_groups():
    text = (
        "grid(7, 9)\nmodel { layers = 1, heads = 4, kv_heads = 2, head_dim = 16 }\n"
        "pattern p {\n  heads 0..2: neighborhood(kernel = (3, 5))\n  heads 2..4: causal & window(5)\n}\n"
    )
    program = program_of(text)
    mod = load(program)
    assert [t["grid"] for t in mod._TUNING] == [True, False]
    n = 63
    nb = torch.from_numpy(brute_pairs((7, 9), (3, 5), (1, 1), (False, False), 0))
    qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
    sw = (ki <= qi) & (qi - ki < 5)
    masks = torch.stack([nb, nb, sw, sw])
    q, k, v = inputs(1, 4, 2, n, 16, torch.float32, 2)
    out = mod._forward(q, k, v, None, False, None, config=dict(BLOCK_M=16, BLOCK_N=16))[0]
    ref, _ = dense_reference(q, k, v, masks)
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("prefix", [0, 3])
def test_tma_views_address_the_grid_rows(prefix):
    """The descriptors' (batch * heads, *grid, D) view (Hopper's TMA path, which the interpreter
    cannot run) addresses exactly the grid tokens of every (batch, head), also in a slice."""
    text = f"grid(3, 4, 5) prefix = {prefix}\npattern p = neighborhood(kernel = (3, 3, 3))\n"
    mod = load(program_of(text))
    n = prefix + 60
    full = torch.randn(2, 3, n + 7, 16)
    for t in (full[:, :, :n], full[:, :, 7:]):  # views with gaps between heads
        base, shape, strides = mod._grid_view(0, t)
        grid = torch.as_strided(base, shape, strides)
        assert tuple(grid.shape) == (6, 3, 4, 5, 16)
        expect = t[:, :, prefix:].reshape(6, 3, 4, 5, 16)
        assert torch.equal(grid, expect)
    gapped = torch.randn(3, 2, n, 16).transpose(0, 1)  # batch stride != heads * head stride
    assert mod._grid_view(0, gapped) is None


@pytest.mark.parametrize(
    "dims, kernel, stride, config, boxes, unmasked",
    [
        ((12, 12), (4, 4), (4, 4), dict(BLOCK_M=16, BLOCK_N=16), 1, 1),  # GNA's fully block-sparse case
        ((12, 12), (5, 5), (4, 4), dict(BLOCK_M=16, BLOCK_N=16), 3, 0),  # boxes of 2 x 8 from the window
        ((10, 12), (6, 8), (4, 4), dict(BLOCK_M=16, BLOCK_N=32), 2, 1),  # 4 x 8 boxes, the first inside
        ((4, 8, 8), (2, 4, 4), (2, 4, 4), dict(BLOCK_M=32, BLOCK_N=32), 1, 1),
    ],
)
def test_strided_tiles_share_one_window(dims, kernel, stride, config, boxes, unmasked):
    """GNA: with the stride a multiple of the query tile, every row of a tile shares one window,
    and the kernel visits the boxes from the window's start (not whole key tiles): exactly
    prod(ceil(K / TK)) boxes per tile, prod(floor(K / TK)) of them without a mask."""
    from attnc.compiler.tiling import anchored, unmasked_boxes

    words = lambda xs: "(" + ", ".join(map(str, xs)) + ")"  # noqa: E731
    text = f"grid{words(dims)}\npattern p = neighborhood(kernel = {words(kernel)}, stride = {words(stride)})\n"
    mask = brute_pairs(dims, kernel, (1,) * len(dims), (False,) * len(dims), 0, stride)
    mod = check_against(text, mask, config)
    g = grid_terms(program_of(text).groups[0].pattern)
    q_tile, k_tile = mod._GRID_TILES[0][(config["BLOCK_M"], config["BLOCK_N"])]
    assert all(anchored(g, a, t) for a, t in enumerate(q_tile))
    assert (tile_visits(g, q_tile, k_tile) == boxes).all() and unmasked_boxes(g, q_tile, k_tile) == unmasked
    n = math.prod(dims)
    ((_, tr),) = mod.grid_visits(*(torch.zeros(1, 1, n, 16),) * 3, config=config)
    rows = GridTiling(g.dims, 0, q_tile, k_tile).q_positions().reshape(-1, config["BLOCK_M"])
    for p, tile_rows in enumerate(rows):
        need = mask[tile_rows[tile_rows >= 0]].any(axis=0)
        assert (tr[0][p] == 1)[need].all()
        assert box_count(tr[0][p].numpy().reshape(dims), need.reshape(dims), k_tile) == boxes
