"""Generated kernels compile for Hopper (sm_90) on this CPU-only machine, through Triton's own
ptxas: the interpreter runs Python semantics and accepts code that the GPU compiler rejects.
Also reads the register report: 16-bit kernels must not spill without the register cap, and
the cap (two programs per SM, bench/proto/NOTES.md) must cost at most the modules' spill
limit on the benchmark's main patterns; kernels that spill more drop the cap at run time."""

from __future__ import annotations

import pytest

from tests.strategies import op, prim
from tests.test_codegen_support import EXPRS, compile_for_gpu, gpu_case, grouped, have_ptxas, single

SPILL_LIMIT = 64  # the generated modules' _SPILL_LIMIT


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas in the triton install")
def test_kernels_compile_for_sm90():
    duo = grouped(
        [[prim("causal"), op("&", prim("causal"), op("|", prim("sink", size=64), prim("window", size=960)))] * 2], "duo"
    )
    uncapped = {"maxnreg": None}
    cases = [
        gpu_case(single(EXPRS[name], name), use_tma=tma, config=uncapped)
        for name, tma in [
            ("sink_window", True),
            ("power", True),
            ("global", False),
            ("difference_mod", True),
            ("many_terms", True),
            ("strided_long", True),
            ("chunk", True),
            ("stripes", True),
        ]
    ]
    cases += [
        gpu_case(duo, group=1, subset=True, config=uncapped),
        gpu_case(single(EXPRS["dilated"], "dilated"), residue=3, config=uncapped),
        # split launches (causal & (window(8) | strided(64))): the window's, then the classes'
        gpu_case(single(EXPRS["strided_long"], "strided_long"), residue=-64, config=uncapped),
        gpu_case(single(EXPRS["strided_long"], "strided_long"), residue=64, use_tma=False, config=uncapped),
        gpu_case(single(EXPRS["causal"], "causal"), dtype="fp16", head_dim=256),
        gpu_case(single(EXPRS["sink_window"], "sw"), head_dim=64, config=uncapped),
    ]
    capped = [gpu_case(single(EXPRS[name], name)) for name in ("causal", "sink_window", "stripes")]
    capped += [gpu_case(duo, group=g, subset=True) for g in (0, 1)]
    # a split group's first launch (the classes' launch runs uncapped)
    capped += [gpu_case(single(EXPRS["strided_long"], "strided_long"), residue=-64)]
    fp32 = [gpu_case(single(EXPRS["sink_window"], "sw"), dtype="fp32", head_dim=64, use_tma=False)]
    results = compile_for_gpu(cases + capped + fp32)
    for (path, opts), kernel in zip(cases + capped + fp32, results):
        assert kernel["shared"] <= 232448, f"{path} {opts}: more shared memory than an H100 block has"
    for (path, opts), kernel in zip(cases, results):
        assert kernel["stack"] == 0, f"{path} {opts}: registers spilled ({kernel})"
    for (path, opts), kernel in zip(capped, results[len(cases) :]):
        assert kernel["maxnreg"] == 128 and kernel["stack"] <= SPILL_LIMIT, f"{path}: {kernel}"
        assert kernel["shared"] <= 116224, f"{path} {opts}: two programs per SM do not fit ({kernel})"


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas in the triton install")
def test_grid_kernels_compile_for_sm90():
    """The tile-order kernel's Hopper path (TMA boxes of the grid), which the interpreter never
    runs: 2-D and 3-D grids, dilation 2 (shifts) and 3, causal axes, a prefix, a union, strides."""
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    # (pattern, bytes of stack allowed): one neighbourhood must not spill; a prefix (a second
    # path: prefix rows over every key, through _attend) or a union (a branch per term) spill
    # a little: measured 32 bytes with TMA, 224 with gathers (docs/grids.md, Known gaps)
    texts = [
        ("grid(128, 128)\npattern a = neighborhood(kernel = (13, 13))\n", 0),
        (
            "grid(16, 30, 40) prefix = 8\npattern b = neighborhood(kernel = (5, 7, 7), dilation = (1, 2, 3), "
            "causal = (true, false, false))\n",
            256,
        ),
        ("grid(8, 24, 40)\npattern c = neighborhood(kernel = (1, 24, 40)) | neighborhood(kernel = (5, 7, 9))\n", 256),
        # GNA: boxes from each tile's shared window, unmasked inside it; a causal strided axis
        ("grid(128, 128)\npattern d = neighborhood(kernel = (13, 13), stride = (8, 8))\n", 0),
        (
            "grid(16, 32, 32)\npattern e = neighborhood(kernel = (4, 7, 7), stride = (2, 4, 3), "
            "causal = (true, false, false))\n",
            64,
        ),
    ]  # per-row windows: 32 bytes gathered on sm_80
    programs = [(lower(resolve_text(t, "g.attn")), limit) for t, limit in texts]
    # TMA on Hopper; gathers on Ampere, and on Hopper where a descriptor cannot be made (32-key tiles)
    cases = [(gpu_case(p, grid=True), limit) for p, limit in programs]
    cases += [(gpu_case(p, grid=True, use_tma=False, capability=80), limit) for p, limit in programs]
    cases += [(gpu_case(p, grid=True, use_tma=False, config={"BLOCK_N": 32}), limit) for p, limit in programs]
    results = compile_for_gpu([c for c, _ in cases])
    for ((path, opts), limit), kernel in zip(cases, results):
        assert kernel["stack"] <= limit, f"{path} {opts}: registers spilled ({kernel})"
        assert kernel["shared"] <= 232448, f"{path} {opts}: more shared memory than an H100 block has"
