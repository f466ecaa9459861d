"""The backward pass: the column plan against brute force, and the generated backward kernels'
gradients against torch autograd through the module's `reference`.

The plan test needs no kernel: every (query tile, key tile) with an allowed pair must lie in
the tiles a key block visits (compiler.plan.span_tiles of plan_columns), and every tile that
skips the mask must be fully allowed; the same for the row plan that the dQ kernel reads.
Kernels run under TRITON_INTERPRET=1 on tiny fp32 shapes: N not a multiple of the tile, GQA,
several head groups, rows without keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch

from attnc.compiler.plan import plan_columns, plan_rows, span_tiles
from tests.cases import sampled
from tests.strategies import causal_expressions, expressions, op, prim
from tests.test_codegen_support import EXPRS, as_pattern, grouped, have_ptxas, inputs, load, single

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _tile_truth(mask: np.ndarray, block: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(any, all) allowed pair per (block, tile) of a dense (blocks side, tiles side) mask."""
    n = mask.shape[0]
    nb, nt = -(-n // block), -(-n // tile)
    some = np.zeros((nb, nt), dtype=bool)
    every = np.zeros((nb, nt), dtype=bool)
    for i in range(nb):
        for j in range(nt):
            part = mask[i * block : (i + 1) * block, j * tile : (j + 1) * tile]
            some[i, j] = part.any()
            every[i, j] = part.all() and (j + 1) * tile <= n
    return some, every


def _check_spans(pattern, n: int, block: int, tile: int) -> None:
    mask = pattern.mask(n)
    for plan, dense in ((plan_columns(pattern), mask.T), (plan_rows(pattern), mask)):
        visited, full = span_tiles(plan, n, block, tile)
        some, every = _tile_truth(dense, block, tile)
        side = "column" if plan.columns else "row"
        assert not (some & ~visited).any(), (
            f"{side} plan skips a tile with allowed pairs: {np.argwhere(some & ~visited)}"
        )
        assert not (full & ~every).any(), (
            f"{side} plan's unmasked tile is not fully allowed: {np.argwhere(full & ~every)}"
        )


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
@given(
    st.one_of(expressions(5), causal_expressions(4)), st.integers(1, 70), st.sampled_from([(8, 8), (16, 8), (8, 16)])
)
def test_random_column_plans_cover_the_mask(expr, n, tiles):
    _check_spans(as_pattern(expr), n, *tiles)


# ------------------------------------------------------------------ gradients of the generated kernels


def _grads(fn, q, k, v, do, dlse=None, layer=None):
    """(dq, dk, dv) of sum(out * do) (+ sum(lse * dlse) over rows with keys) through fn."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    if dlse is None:
        loss = (fn(q, k, v, layer=layer).double() * do).sum()
    else:
        out, lse = fn(q, k, v, layer=layer, return_lse=True)
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        loss = (out.double() * do).sum() + (lse.double() * dlse).sum()
    loss.backward()
    return q.grad, k.grad, v.grad


def check_grads(
    program,
    n: int,
    *,
    b: int = 1,
    h: int = 2,
    h_kv: int = 1,
    d: int = 16,
    layer=None,
    seed: int = 0,
    with_lse: bool = False,
):
    """The kernels' dq, dk, dv against torch autograd through the module's reference (float32),
    within 1e-4 of each gradient's largest entry, or of dv's where that is larger: a gradient
    that vanishes analytically (dq and dk with one key per row) keeps the float32 rounding of
    sums of order-one terms, as large as dv's entries times the float32 epsilon times n."""
    mod = load(program)
    q, k, v = inputs(b, h, h_kv, n, d, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    dlse = torch.randn(b, h, n, generator=gen, dtype=torch.float64) if with_lse else None
    got = _grads(mod.prefill, q, k, v, do, dlse, layer)
    want = _grads(mod.reference, q, k, v, do, dlse, layer)
    floor = max(want[2].abs().max().item(), 1e-2)  # dv: never vanishes where a row has keys
    for name, g, r in zip(("dq", "dk", "dv"), got, want):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient"
        scale = max(r.abs().max().item(), floor)
        err = (g - r).abs().max().item() / scale
        assert err < 1e-4, f"{name}: max error {err:.3g} of the gradient's scale {scale:.3g}"
    return mod


@pytest.mark.parametrize("name", sampled(sorted(EXPRS), 12))
def test_pattern_gradients(name):
    # N = 45: no multiple of the 32-query or 16-key tiles; 2 query heads over 1 KV head
    check_grads(single(EXPRS[name], name), 45)


SW = EXPRS["sink_window"]


@pytest.mark.parametrize("name", sampled(["dilated", "strided_only", "dilated_two_sided"], 1))
def test_residue_gradients(name):
    # bands & (q - k) mod d == 0 run per residue class on subsequences (d = 3, 4): N = 70 leaves
    # classes of different lengths; the generic kernels (RESIDUE=False) give the same gradients
    mod = check_grads(single(EXPRS[name], name), 70, h=4, h_kv=2)
    assert mod._TUNING[0]["residue"] > 1
    q, k, v = inputs(1, 4, 2, 70, 16)
    do = torch.randn(1, 4, 70, 16, generator=torch.Generator().manual_seed(3))
    o, lse = mod._forward(q, k, v, None, True, None)
    per_class = mod._backward(do, q, k, v, o, lse, None, None, None, True, True)
    generic = mod._backward(do, q, k, v, o, lse, None, None, None, True, True, {"RESIDUE": False})
    for a, b in zip(per_class, generic):
        assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


@pytest.mark.parametrize("name", ["power", "strided_long", "diagonals"])
def test_loop_gradients(name):
    # the forward's loop terms (power-of-two block distances, diagonals), which the backward
    # visits by their hulls: N = 150 holds 10 power blocks of 16 and 3 diagonals of 64
    check_grads(single(EXPRS[name], name), 150)


@pytest.mark.parametrize("h,h_kv", [(4, 2), (4, 1), (3, 3)])
def test_gqa_gradients(h, h_kv):
    # dK, dV sum the query heads of each KV head inside one program
    check_grads(single(SW, "sw"), 37, b=2, h=h, h_kv=h_kv)


def test_head_groups_gqa_and_empty_rows():
    # three pattern groups across the heads of a layer, two query heads per KV head whose heads
    # lie in different groups (dK, dV gather over launches), and rows without keys (band(5, 9))
    a = op("&", prim("causal"), prim("window", size=8))
    c = prim("band", lo=5, hi=9)
    check_grads(grouped([[a, c, a, SW]], "hg", kv_heads=2), 40, h=4, h_kv=2)


def test_layers():
    a = op("&", prim("causal"), prim("window", size=8))
    program = grouped([[a, a], [SW, prim("causal")]], "layers")
    for layer in (0, 1):
        check_grads(program, 33, h=2, h_kv=2, layer=layer)


def test_lse_gradient():
    # the lse's own gradient enters the row term delta; band_gap has rows without keys
    check_grads(single(SW, "sw"), 40, with_lse=True)
    check_grads(single(EXPRS["band_gap"], "band_gap"), 40, with_lse=True)


def test_needs_input_grad_and_strides():
    # only v requires grad: dq, dk are not computed; inputs as (B, N, H, D) views
    mod = load(single(SW, "sw"))
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs(1, 2, 1, 30, 16))
    v = v.detach().clone().requires_grad_()
    mod.prefill(q, k, v).sum().backward()
    v_ref = v.detach().clone().requires_grad_()
    mod.reference(q, k, v_ref).sum().backward()
    assert q.grad is None and k.grad is None
    assert (v.grad - v_ref.grad).abs().max().item() < 1e-4 * v_ref.grad.abs().max().item()
    dq, dk, dv = mod._backward(
        torch.ones_like(q), q, k, v, *mod._forward(q, k, v, None, True, None), None, None, None, False, True
    )
    assert dq.numel() == 0 and dk.shape == k.shape and dv.shape == v.shape


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(expressions(4), causal_expressions(3)), st.integers(1, 40), st.sampled_from([(2, 1), (1, 1)]))
def test_random_pattern_gradients(expr, n, heads):
    check_grads(single(expr, "rand"), n, h=heads[0], h_kv=heads[1])


ROOT = Path(__file__).resolve().parents[1]
PATTERN_FILES = sorted((ROOT / "patterns").glob("*.attn"))


def _shrunk_program(path: Path):
    """The pattern file with every parameter of 16 or more set to 8, so that windows, chunks
    and strides wrap within a short sequence (grids keep their size: the generic kernels then
    see the first tokens of the grid)."""
    from attnc.loader import program_of

    text = path.read_text()
    defines = {
        name: 8
        for name, value in re.findall(r"^\s*param\s+(\w+)\s*=\s*([^#\n]+)", text, re.M)
        if not value.strip().isdigit() or int(value) >= 16
    }
    return program_of(path, defines=defines)


@pytest.mark.skipif(not PATTERN_FILES, reason="patterns/ has no .attn files")
@pytest.mark.parametrize("path", sampled(PATTERN_FILES, 10), ids=lambda p: p.stem)
def test_pattern_file_gradients(path):
    program = _shrunk_program(path)
    if any(g.selection is not None for g in program.groups):
        pytest.skip("patterns that select key blocks at run time have no backward (docs/selection.md)")
    if program.grid is not None:
        pytest.skip(
            "grid patterns: their masks (several neighbourhoods over a large grid) are too slow "
            "for the interpreter; test_small_grid_gradients covers the kernels on grids"
        )
    model = program.model
    per_head = any(len(set(row)) > 1 for row in program.group_table())
    h, h_kv = (model.heads, model.kv_heads) if per_head else (2, 1)
    layer = model.layers - 1 if program.varies_by_layer else None
    check_grads(program, 36, h=h, h_kv=h_kv, layer=layer)


def test_small_grid_gradients():
    # two neighbourhoods (one causal on its second axis) over a 5 x 7 grid after 2 text tokens:
    # the generic backward kernels, the mask evaluated on every tile
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    text = (
        "grid(5, 7) prefix = 2\npattern p = neighborhood(kernel = (3, 3,), dilation = (1, 1,), "
        "causal = (false, false,)) | neighborhood(kernel = (1, 3,), dilation = (1, 2,), causal = (false, true,))\n"
    )
    check_grads(lower(resolve_text(text, "grid_test.attn")), 37, b=1, h=2, h_kv=1)


def test_training_step_compiles_fullgraph():
    # forward and backward custom ops, their fake implementations and the autograd registration
    # trace into one graph (aot_eager on the CPU: the kernels run in the interpreter; the GPU
    # check with inductor is bench/gpu.py's)
    mod = load(single(SW, "sw"))
    q, k, v = inputs(1, 2, 1, 40, 16)
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))

    def step(q, k, v, w):
        out = mod.prefill(q @ w, k, v)
        return (out * out).sum()

    def grads(fn):
        args = [t.clone().requires_grad_() for t in (q, k, v, w)]
        fn(*args).backward()
        return [a.grad for a in args]

    torch._dynamo.reset()
    got = grads(torch.compile(step, fullgraph=True, backend="aot_eager"))
    for g, r in zip(got, grads(step)):
        assert torch.equal(g, r)
    # torch's own checks of the op: schema, fake tensors, autograd registration, AOT dispatch
    small = [t[:, :, :20].clone().requires_grad_() for t in (q, k, v)]
    results = torch.library.opcheck(mod._prefill_op.default, (*small, 0.25, True, -1))
    assert set(results.values()) == {"SUCCESS"}, results


# ------------------------------------------------------------------ analyses


def test_backward_cost_and_prediction(capsys):
    import json

    from attnc.cli import main
    from attnc.compiler import simulate as sim
    from attnc.compiler.cost import BWD_MATMUL_RATIO, group_cost
    from attnc.compiler.ir import HeadGroup

    cost = group_cost(HeadGroup(as_pattern(SW), frozenset({(0, 0)})), 256, 64)
    assert cost.bwd_flops == BWD_MATMUL_RATIO * 4 * 64 * cost.pairs.value
    assert cost.bwd_bytes_min == 8 * 64 * 256 * 2
    # the backward's parts add up, tiles scale by the matrix products, programs and launches per pass
    fwd = sim.KernelTime("attnc", 1.5, 0.6, 0.4, 0.1, 0.2, 0.1, 0.1, 10, 5, 1, 4, 1.0, (128, 64))
    bwd = sim.backward_time(fwd)
    ratio = sim.BWD_MATMULS["attnc"] / 2
    assert bwd.full_ms == pytest.approx(0.6 * ratio) and bwd.launch_ms == pytest.approx(0.1 * sim.BWD_PASSES)
    assert bwd.ms == pytest.approx(
        bwd.full_ms + bwd.masked_ms + bwd.sink_ms + bwd.overhead_ms + bwd.idle_ms + bwd.launch_ms
    )
    path = str(ROOT / "patterns" / "streaming_llm.attn")
    assert main(["simulate", path, "--seq", "8k", "--backward"]) == 0
    assert "training step" in capsys.readouterr().out
    assert main(["simulate", path, "--seq", "8k", "--backward", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["backward"]["attnc"]["forward_backward_ms"] == pytest.approx(
        row["attnc"]["ms"] + row["backward"]["attnc"]["backward_ms"]
    )
    assert main(["simulate", path, "--decode", "--backward"]) == 2


# ------------------------------------------------------------------ the GPU compiler

_BWD_GPU_COMPILE = r"""
import importlib.util, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTERS = {"LSE": "*fp32", "DELTA": "*fp32", "DLSE": "*fp32", "QHEADS": "*i32", "HEADS": "*i32"}


def compile_all(path, opts):
    spec = importlib.util.spec_from_file_location("generated", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dtype, head_dim = opts["dtype"], opts["head_dim"]
    kind = "fp32" if dtype == "fp32" else "16bit"
    cfg = next(c for (cap, k, d, c) in mod.BWD_CONFIGS if k == kind and d in (None, head_dim) and cap[0] * 10 <= 90)
    major, minor = cfg["BLOCK_MAJOR"], cfg["BLOCK_MINOR"]
    common = dict(KV_GROUP=2, HEAD_DIM=head_dim, DOT_PREC="ieee" if dtype == "fp32" else "tf32", UPCAST=False)
    res, part = opts.get("residue", 0), opts.get("part", False)
    kernels = [(mod._bwd_dkdv_kernel, dict(BLOCK_M=minor, BLOCK_N=major, GROUP=opts["group"], ACC=opts["acc"],
                                           RESIDUE=res, PART=part, **common)),
               (mod._bwd_dq_kernel, dict(BLOCK_M=major, BLOCK_N=minor, GROUP=opts["group"], SUBSET=opts["acc"],
                                         RESIDUE=res, PART=part, **common))]
    if opts.get("grid"):  # the tile-order kernels of group 0 instead
        q_kernel, kv_kernel = mod._GRID_BWD[0]
        kernels = [(kv_kernel, dict(BLOCK_M=minor, BLOCK_N=major, ACC=opts["acc"], **common,
                                    **mod.tile_args(*mod._GRID_TILES[0][(minor, major)]))),
                   (q_kernel, dict(BLOCK_M=major, BLOCK_N=minor, SUBSET=opts["acc"], STAGES=cfg["num_stages"],
                                   USE_TMA=False, TRACE=False, **common,
                                   **mod.tile_args(*mod._GRID_TILES[0][(major, minor)])))]
    out = []
    for fn, constexprs in kernels:
        signature = {}
        for name in fn.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name in POINTERS:
                signature[name] = POINTERS[name]
            elif name in ("sm_scale", "qk_scale"):
                signature[name] = "fp32"
            elif name.startswith("stride") or name in ("N", "H", "H_KV", "NH", "Q_OFF", "NQ", "K_LO", "K_HI"):
                signature[name] = "i32"
            else:
                signature[name] = "*" + dtype
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                target=GPUTarget("cuda", 90, 32),
                                options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
        out.append({"kernel": fn.__name__, "shared": kernel.metadata.shared})
    return out


print(json.dumps([compile_all(path, opts) for path, opts in json.loads(sys.argv[1])]))
"""


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas in the triton install")
def test_backward_kernels_compile_for_sm90():
    # the interpreter accepts code that the GPU compiler rejects (branches in loops, dtypes)
    import json
    import os
    import subprocess
    import sys

    from attnc.codegen.writer import write_module
    from tests.test_codegen_support import _DIR

    duo = grouped([[prim("causal"), SW] * 2], "duo")
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    image = lower(
        resolve_text("grid(32, 32)\npattern p = neighborhood(kernel = (7, 7), dilation = (1, 2))\n", "g.attn")
    )
    video = lower(
        resolve_text(
            "grid(4, 8, 8)\npattern p = neighborhood(kernel = (3, 3, 3), causal = (true, false, false))\n", "v.attn"
        )
    )
    cases = [
        (single(EXPRS["sink_window"], "sw"), dict(dtype="bf16", head_dim=128, group=0, acc=False)),
        (duo, dict(dtype="fp16", head_dim=64, group=1, acc=True)),
        (duo, dict(dtype="bf16", head_dim=128, group=1, acc=True, part=True)),  # backward_at
        (single(EXPRS["power"], "power"), dict(dtype="bf16", head_dim=128, group=0, acc=False)),
        (single(EXPRS["power"], "power"), dict(dtype="bf16", head_dim=64, group=0, acc=False, part=True)),
        (single(EXPRS["diagonals"], "diagonals"), dict(dtype="bf16", head_dim=64, group=0, acc=False)),
        (single(EXPRS["dilated"], "dilated"), dict(dtype="bf16", head_dim=128, group=0, acc=False, residue=3)),
        (image, dict(dtype="bf16", head_dim=128, group=0, acc=False, grid=True)),
        (video, dict(dtype="bf16", head_dim=64, group=0, acc=True, grid=True)),
    ]
    args = [(str(write_module(p, _DIR / p.digest())), opts) for p, opts in cases]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", _BWD_GPU_COMPILE, json.dumps(args)], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"GPU compilation failed:\n{res.stderr[-4000:]}"
    for kernels in json.loads(res.stdout.strip().splitlines()[-1]):
        assert all(k["shared"] <= 232448 for k in kernels), kernels
