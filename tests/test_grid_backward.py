"""The backward pass of grid patterns in tile order (codegen/templates/grid.py.j2's backward
kernels): the column view of a neighbourhood axis (compiler.grid_plan.AxisWindow.query_range)
against the brute force of NATTEN's definition, and the kernels' gradients against torch
autograd through the module's reference under TRITON_INTERPRET=1: unions, dilation, strides,
causal axes, GQA, grids that the tiles do not divide, rows without keys, and the generic
kernels where the tile-order ones do not apply (prefix tokens, other lengths).
"""

from __future__ import annotations

import itertools
import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnc.compiler.grid_plan import AxisWindow
from tests.cases import sampled
from tests.test_backward import _grads, check_grads
from tests.test_codegen_support import inputs, load
from tests.test_grids_kernel import program_of
from tests.test_grids_spec import axis_window

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# the scalar Triton that query_range writes, evaluated on Python ints
TL = types.SimpleNamespace(minimum=min, maximum=max, where=lambda c, a, b: a if c else b)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_query_range_holds_every_query_that_sees_the_tile(data):
    n = data.draw(st.integers(1, 24))
    d = data.draw(st.integers(1, max(1, n // 2)))
    kernel = data.draw(st.integers(1, max(1, n // d)))
    stride = data.draw(st.integers(1, kernel))
    causal = data.draw(st.booleans())
    tile = data.draw(st.integers(1, 8))
    w = AxisWindow(n, kernel, d, causal, stride)
    seen = {x: set(axis_window(x, n, kernel, d, causal, stride)) for x in range(n)}
    for y0 in range(0, n, tile):
        y1 = min(y0 + tile, n) - 1
        lo, hi = (eval(t, {"tl": TL}) for t in w.query_range(str(y0), str(y1)))
        need = [x for x in range(n) if seen[x] & set(range(y0, y1 + 1))]
        assert all(lo <= x <= hi for x in need), (w, y0, y1, lo, hi, need)
        assert 0 <= lo and hi <= n - 1


def test_query_range_is_tight_inside_the_axis():
    # a 13-wide window: keys 40..47 are seen by queries 34..53 (6 either side), no more
    w = AxisWindow(128, 13, 1, False)
    assert [eval(t, {"tl": TL}) for t in w.query_range("40", "47")] == [34, 53]
    causal = AxisWindow(128, 5, 1, True)
    assert [eval(t, {"tl": TL}) for t in causal.query_range("40", "47")] == [40, 51]


def call(kernel, dilation=None, causal=None, stride=None) -> str:
    words = lambda xs: "(" + ", ".join(str(x).lower() for x in xs) + ",)"  # noqa: E731
    a = len(kernel)
    return (
        f"neighborhood(kernel = {words(kernel)}, dilation = {words(dilation or (1,) * a)}, "
        f"causal = {words(causal or (False,) * a)}, stride = {words(stride or (1,) * a)})"
    )


GRIDS = {
    # a union (dilated, one causal axis) over a grid that 16- and 32-token tiles do not divide
    "union": ("grid(5, 7)", f"{call((3, 3))} | {call((1, 3), (1, 2), (False, True))}"),
    # GNA: 2 x 2 query groups share a window
    "strided": ("grid(8, 6)", call((3, 3), stride=(2, 2))),
    # three axes, & causal (the first rows see only themselves)
    "video": ("grid(3, 4, 6)", f"({call((2, 3, 3), (1, 1, 2), (True, False, False))}) & causal"),
    # a long axis: key tiles far from both ends, reached by few query tiles
    "wide": ("grid(3, 40)", call((3, 5))),
    # rows without keys: a neighbourhood intersected with a band that some rows miss
    "empty_rows": ("grid(6, 6)", f"{call((3, 3))} & band(3, 40)"),
}


@pytest.mark.parametrize("name", sampled(sorted(GRIDS), 3))
def test_grid_gradients_in_tile_order(name):
    head, expr = GRIDS[name]
    program = program_of(f"{head}\npattern p = {expr}\n")
    n = math.prod(program.grid.dims)
    mod = check_grads(program, n, h=4, h_kv=2)
    assert mod._grid_bwd_fits(0, n, mod.bwd_config_for("cpu", torch.float32, 16)), "the tile-order backward ran"


def test_grid_gradients_generic_where_tile_order_does_not_apply():
    # prefix tokens, and a length other than the grid's: the generic backward kernels
    program = program_of(f"grid(4, 5) prefix = 3\npattern p = {call((3, 3))}\n")
    mod = check_grads(program, 23, h=2, h_kv=1)
    cfg = mod.bwd_config_for("cpu", torch.float32, 16)
    assert not mod._grid_bwd_fits(0, 23, cfg)
    program = program_of(f"grid(4, 5)\npattern p = {call((3, 3))}\n")
    mod = check_grads(program, 17, h=2, h_kv=1)
    assert not mod._grid_bwd_fits(0, 17, cfg)


@pytest.mark.parametrize("major,minor", list(itertools.product((16, 32), repeat=2)))
def test_grid_gradients_at_every_tile_pair(major, minor):
    # both tile-order kernels at every (major, minor) block pair the CPU tests can pick
    program = program_of(f"grid(6, 7)\npattern p = {call((3, 5), (1, 1), (False, True))}\n")
    mod = load(program)
    cfg = dict(BLOCK_MAJOR=major, BLOCK_MINOR=minor)
    assert mod._grid_bwd_fits(0, 42, mod.bwd_config_for("cpu", torch.float32, 16, cfg))
    q, k, v = inputs(1, 2, 1, 42, 16)
    do = torch.randn(1, 2, 42, 16, generator=torch.Generator().manual_seed(1))
    got = mod._backward(do, q, k, v, *mod._forward(q, k, v, None, True, None), None, None, None, True, True, cfg)
    want = _grads(mod.reference, q, k, v, do.double())
    for name, g, r in zip(("dq", "dk", "dv"), got, want):
        err = (g - r).abs().max().item() / r.abs().max().item()
        assert err < 1e-4, f"{name}: max error {err:.3g}"
