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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnc.compiler.lower import lower
from attnc.compiler.tiling import GridTiling, grid_terms, tile_visits
from attnc.spec.resolve import resolve_text
from tests.test_codegen_support import assert_close, dense_reference, inputs, load
from tests.test_grids_spec import brute_pairs, grids

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIGS = [dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=32, BLOCK_N=16), dict(BLOCK_M=16, BLOCK_N=32)]


def call(kernel, dilation, causal) -> str:
    words = lambda xs: "(" + ", ".join(str(x).lower() for x in xs) + ",)"  # noqa: E731
    return f"neighborhood(kernel = {words(kernel)}, dilation = {words(dilation)}, causal = {words(causal)})"


@st.composite
def grid_patterns(draw, max_tokens: int = 90):
    """(attn text, brute-force mask): one or two neighbourhoods on a random grid, maybe & causal."""
    dims, kernel, dilation, causal, prefix, _ = draw(grids(max_dim=10, max_tokens=max_tokens, strided=False))
    terms = [(kernel, dilation, causal)]
    if draw(st.booleans()):
        dil2 = tuple(draw(st.integers(1, n)) for n in dims)
        terms.append((tuple(draw(st.integers(1, n // d)) for n, d in zip(dims, dil2)), dil2,
                      tuple(draw(st.booleans()) for _ in dims)))
    mask = np.zeros((prefix + math.prod(dims),) * 2, dtype=bool)
    for t in terms:
        mask |= brute_pairs(dims, *t, prefix)
    expr = " | ".join(call(*t) for t in terms)
    if draw(st.booleans()):
        expr = f"({expr}) & causal"
        mask &= np.tril(np.ones_like(mask))
    head = f"grid({', '.join(map(str, dims))})" + (f" prefix = {prefix}" if prefix else "")
    return f"{head}\npattern p = {expr}\n", mask


def program_of(text: str):
    return lower(resolve_text(text, "grid_test.attn"))


def check_against(text: str, mask: np.ndarray, config: dict, *, h: int = 2, h_kv: int = 1, d: int = 16,
                  dtype=torch.float32, seed: int = 0):
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_patterns(), st.sampled_from(CONFIGS))
def test_kernel_equals_natten_brute_force(case, config):
    text, mask = case
    check_against(text, mask, config)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_patterns(max_tokens=70), st.sampled_from(CONFIGS))
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
        grid_seen = tr[p][g.prefix:]
        touched = {i for i, s in enumerate(slots) if grid_seen[s[s >= 0] - g.prefix].any()}
        # every key tile of a box holds a grid token (boxes stop at the last coordinate), so the
        # tiles the trace touches are exactly the ones visited
        assert len(touched) == expected[p], f"program {p}: {len(touched)} key tiles visited, planned {expected[p]}"
    for p in range(len(rows), tr.shape[0]):  # prefix rows read every key once
        assert (tr[p] == 1).all()


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
    text = ("grid(7, 9)\nmodel { layers = 1, heads = 4, kv_heads = 2, head_dim = 16 }\n"
            "pattern p {\n  heads 0..2: neighborhood(kernel = (3, 5))\n  heads 2..4: causal & window(5)\n}\n")
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
