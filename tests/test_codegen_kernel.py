"""Generated kernels against the independent reference (dense IR mask, float64 torch).

Runs the Triton kernels under TRITON_INTERPRET=1 on small shapes: every primitive and
operator, per-head and per-layer groups, GQA, lengths that are not a multiple of the tile,
three dtypes, the log-sum-exp output and rows without keys; random patterns through
hypothesis; and the module's own `reference` against the independent one.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnc.compiler.plan import SPLIT_MIN_ROWS, plan_program
from attnc.compiler.tiling import grid_terms
from tests.cases import CASES, grid_tokens, sampled
from tests.strategies import causal_expressions, examples, expressions, op, prim
from tests.test_codegen_support import (
    EXPRS,
    assert_close,
    check_module,
    dense_reference,
    grouped,
    head_masks,
    inputs,
    load,
    single,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SW = op("&", prim("causal"), op("|", prim("sink", size=4), prim("window", size=20)))


def _layers(program, most: int = 3) -> list[int | None]:
    """One layer per distinct row of the group table (at most `most`); None when all agree."""
    if not program.varies_by_layer:
        return [None]
    rows: dict = {}
    for layer, row in enumerate(program.group_table()):
        rows.setdefault(tuple(row), layer)
    return list(rows.values())[:most]


@pytest.mark.parametrize("case", sampled(CASES, 30), ids=str)
def test_case_matches_reference(case):
    """Every case of the shared matrix (tests/cases.py): 1-D cases at N = 77 (no multiple of any
    tile), 2 query heads over 1 KV head (batches and wider head groups, which no pattern changes,
    are test_gqa's, test_public_prefill_and_lse's and test_tensor_descriptors_and_head_groups');
    grid cases at their grid size (the tile-order
    kernel, 16 x 16 tiles); sections and files with their model's heads where heads differ (else
    2 over 1 KV head), one layer per distinct row of layers, 32 x 32 tiles."""
    program = case.program
    model = program.model
    per_head = any(len(set(row)) > 1 for row in program.group_table())
    h, h_kv = (model.heads, model.kv_heads) if per_head else (2, 1)
    if case.grid and case.n == grid_tokens(case):
        assert load(program)._TUNING[0]["grid"] == (grid_terms(case.pattern) is not None)
        config = dict(BLOCK_M=16, BLOCK_N=16)
    else:
        config = None if case.single and case.path is None else dict(BLOCK_M=32, BLOCK_N=32)
    blocks = [g.selection.atom.block for g in program.groups if g.selection is not None]
    if config and blocks:  # tiles divide the selection's blocks
        config = {name: min(size, *blocks) for name, size in config.items()}
    for layer in _layers(program):
        check_module(program, case.n, h=h, h_kv=h_kv, layer=layer, config=config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["causal", "sink_window", "power", "global"])
def test_half_precision(name, dtype):
    check_module(single(EXPRS[name], name), 70, h=2, h_kv=1, d=32, dtype=dtype)


@pytest.mark.parametrize("h,h_kv", [(4, 2), (4, 1), (4, 4)])
def test_gqa(h, h_kv):
    check_module(single(SW, "sw"), 50, h=h, h_kv=h_kv)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 64, 100])
def test_lengths(n):
    check_module(single(SW, "sw"), n)


@pytest.mark.parametrize(
    "cfg",
    [dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=16, BLOCK_N=32, BLOCK_N_NARROW=16), dict(BLOCK_M=64, BLOCK_N=16)],
    ids=str,
)
def test_tile_configs(cfg):
    for name in ("sink_window", "power", "chunk", "global"):
        check_module(single(EXPRS[name], name), 90, config=cfg)


@pytest.mark.parametrize("name", ["dilated", "strided_only", "dilated_two_sided"])
@pytest.mark.parametrize("residue", [True, False])
def test_residue_classes(name, residue):
    # bands & (q - k) mod d == 0 run as dense attention per residue class q mod d (or masked)
    program = single(EXPRS[name], name)
    assert load(program)._TUNING[0]["residue"] > 0
    for n in (1, 30, 77):
        check_module(program, n, h=2, h_kv=1, config=dict(RESIDUE=residue))
    check_module(program, 50, dtype=torch.bfloat16, config=dict(RESIDUE=residue))


@pytest.mark.parametrize(
    "m,window,n",
    [(4, 3, 30), (4, 3, 32), (9, 20, 77), (9, 20, 81), (16, 16, 50), (5, 1, 23)],
)
def test_split_launches(m, window, n):
    # causal & (window | strided(m)): the window's launch, then the strided pairs it lacks per
    # residue class q mod m, merged by log-sum-exp; with RESIDUE off, the one-launch plan
    expr = op("&", prim("causal"), op("|", prim("window", size=window), prim("strided", stride=m)))
    program = single(expr, f"split{m}")
    mod = load(program)
    assert mod._TUNING[0]["split"] == m and plan_program(program)[0].tuning["split_from"] == m * SPLIT_MIN_ROWS
    mod._TUNING[0]["split_from"] = 0  # split at these short lengths too (the module is this test's own)
    # the split plan with two KV heads of two query heads each; the one-launch plan (no split:
    # the common kernel, whose GQA indexing test_gqa covers) on one KV head
    check_module(program, n, h=4, h_kv=2, config=dict(BLOCK_M=16, BLOCK_N=16, RESIDUE=True))
    check_module(program, n, h=2, h_kv=1, config=dict(BLOCK_M=16, BLOCK_N=16, RESIDUE=False))
    check_module(program, n, h=2, h_kv=1, dtype=torch.bfloat16)
    q, k, v = inputs(1, 2, 1, n, 16)
    ref = dense_reference(q, k, v, head_masks(program, n, 2))[0]
    for _ in range(2):  # no LSE asked for: the launches merge through their own buffer (the memo's call too)
        assert_close(mod.prefill(q, k, v), ref, torch.float32)


@pytest.mark.parametrize("tma", [2, 3])
@pytest.mark.parametrize("name", ["sink_window", "causal", "global", "power", "strided_long", "dilated"])
def test_tensor_descriptors_and_head_groups(name, tma):
    # the Hopper path: 4D TMA descriptors (2 host-side, 3 built in the kernel), query blocks in
    # groups of 2 heads; N = 45 ends in a partial tile as 77 does (77: strided(64) needs q >= 64)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, USE_TMA=tma, GRID_ORDER=3, HEAD_GROUP=2)
    n = 77 if name == "strided_long" else 45
    check_module(single(EXPRS[name], name), n, b=2, h=4, h_kv=2, dtype=torch.float16, config=cfg)


@pytest.mark.parametrize("d", [16, 32, 64])
def test_head_dims(d):
    check_module(single(SW, "sw"), 40, d=d)


def test_rows_without_keys_are_zero():
    # band(5, 9): the first five queries have no key; `nothing` has none at all
    for name in ("band_gap", "nothing", "difference"):
        mod, out, ref = check_module(single(EXPRS[name], name), 40)
        q, k, v = inputs(1, 2, 1, 40, 16)
        o, lse = mod.prefill(q, k, v, return_lse=True)
        empty = torch.isinf(lse)
        assert empty.any() and (o[empty] == 0).all() and not torch.isnan(o).any()


def test_public_prefill_and_lse():
    mod = load(single(SW, "sw"))
    q, k, v = inputs(2, 4, 2, 37, 32, seed=3)
    out = mod.prefill(q, k, v)
    out2, lse = mod.prefill(q, k, v, return_lse=True, scale=0.3)
    ref, ref_lse = dense_reference(q, k, v, head_masks(single(SW), 37, 4))
    assert_close(out, ref, torch.float32)
    ref2, ref_lse2 = dense_reference(q, k, v, head_masks(single(SW), 37, 4), scale=0.3)
    assert_close(out2, ref2, torch.float32)
    assert lse.shape == (2, 4, 37) and lse.dtype == torch.float32
    assert (lse.double() - ref_lse2).abs().max() < 1e-4


def test_strided_views():
    # q, k, v stored (B, N, H, D) and viewed as (B, H, N, D): only the last dimension is contiguous
    mod = load(single(SW, "sw"))
    q, k, v = (torch.randn(1, 45, h, 16).transpose(1, 2) for h in (4, 2, 2))
    assert not q.is_contiguous()
    ref, _ = dense_reference(q, k, v, head_masks(single(SW), 45, 4))
    assert_close(mod.prefill(q, k, v), ref, torch.float32)


def test_torch_compile_traces_the_custom_op():
    mod = load(single(SW, "sw"))
    q, k, v = inputs(1, 2, 1, 40, 16)
    compiled = torch.compile(lambda q, k, v: mod.prefill(q, k, v, return_lse=True), backend="aot_eager", fullgraph=True)
    out, lse = compiled(q, k, v)
    out2, lse2 = mod.prefill(q, k, v, return_lse=True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize("name", ["sink_window", "power", "global", "stripes", "many_terms"])
def test_module_reference_matches_independent_reference(name):
    program = single(EXPRS[name], name)
    mod = load(program)
    q, k, v = inputs(2, 4, 2, 57, 16, seed=1)
    out, lse = mod.reference(q, k, v, return_lse=True)
    ref, ref_lse = dense_reference(q, k, v, head_masks(program, 57, 4))
    assert_close(out, ref, torch.float32)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))


def test_module_reference_per_layer_and_head():
    a, b = prim("causal"), op("&", prim("causal"), prim("window", size=5))
    program = grouped([[a, b], [b, b]], "lh")
    mod = load(program)
    q, k, v = inputs(1, 2, 1, 30, 16)
    for layer in (0, 1):
        assert_close(
            mod.reference(q, k, v, layer=layer),
            dense_reference(q, k, v, head_masks(program, 30, 2, layer))[0],
            torch.float32,
        )


@examples(8)
@given(st.one_of(expressions(5), causal_expressions(4)), st.integers(1, 48), st.sampled_from([(2, 1), (2, 2)]))
def test_random_patterns_match_reference(expr, n, heads):
    check_module(single(expr, "rand"), n, h=heads[0], h_kv=heads[1])


STRIPES = {
    "alone": op("&", prim("causal"), prim("stride", stride=6, offset=1)),
    "after_window": op("&", prim("causal"), op("|", prim("window", size=12), prim("stride", stride=5, offset=4))),
    "after_two": op(
        "&",
        prim("causal"),
        op("|", op("|", prim("sink", size=3), prim("window", size=9)), prim("stride", stride=7, offset=2)),
    ),
    "two_sided": op("|", prim("window", left=6, right=6), prim("stride", stride=4, offset=3)),
}


@pytest.mark.parametrize("name", sorted(STRIPES))
def test_stripe_loops(name):
    # k mod m terms read only their stripe's keys (strided pointers), minus the earlier terms' blocks
    program = single(STRIPES[name], name)
    assert any(t.loop is not None and t.loop.kind == "stripe" for t in plan_program(program)[0].terms)
    for n in (1, 50, 77):
        check_module(program, n, config=dict(BLOCK_M=16, BLOCK_N=16))
    check_module(program, 77, dtype=torch.bfloat16, config=dict(BLOCK_M=32, BLOCK_N=16))


def test_the_output_follows_qs_layout():
    # as SDPA's: a model's q is its (B, N, H, D) projection viewed as (B, H, N, D); the output
    # in that layout lets o.transpose(1, 2).reshape(B, N, H * D) copy nothing
    mod = load(single(SW, "sw"))
    q, k, v = (torch.randn(2, 45, h, 16).transpose(1, 2) for h in (4, 2, 2))
    out = mod.prefill(q, k, v)
    assert out.stride() == q.stride() and out.transpose(1, 2).is_contiguous()
    ref, _ = dense_reference(q, k, v, head_masks(single(SW), 45, 4))
    assert_close(out, ref, torch.float32)
    again = mod.prefill(q, k, v)  # the memoised call
    assert again.stride() == q.stride() and torch.equal(again, out)
    dense = mod.prefill(q.contiguous(), k.contiguous(), v.contiguous())
    assert dense.is_contiguous() and torch.equal(dense, out)
