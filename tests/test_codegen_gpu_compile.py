"""Generated kernels compile for Hopper (sm_90) on this CPU-only machine, through Triton's own
ptxas: the interpreter runs Python semantics and accepts code that the GPU compiler rejects.
Also reads the register report: 16-bit kernels must not spill without the register cap, and
the cap (two programs per SM, bench/proto/NOTES.md) must cost at most the modules' spill
limit on the benchmark's main patterns; kernels that spill more drop the cap at run time."""

from __future__ import annotations

import pytest

from tests.strategies import op, prim
from tests.test_codegen_support import EXPRS, compile_for_gpu, gpu_case, grouped, single

SPILL_LIMIT = 64  # the generated modules' _SPILL_LIMIT


def _have_ptxas() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(90).path is not None
    except Exception:
        return False


@pytest.mark.skipif(not _have_ptxas(), reason="no ptxas in the triton install")
def test_kernels_compile_for_sm90():
    duo = grouped([[prim("causal"), op("&", prim("causal"), op("|", prim("sink", size=64), prim("window", size=960)))]
                   * 2], "duo")
    uncapped = {"maxnreg": None}
    cases = [gpu_case(single(EXPRS[name], name), use_tma=tma, config=uncapped)
             for name, tma in [("sink_window", True), ("power", True), ("global", False), ("difference_mod", True),
                               ("many_terms", True), ("strided_long", True), ("chunk", True)]]
    cases += [gpu_case(duo, group=1, subset=True, config=uncapped),
              gpu_case(single(EXPRS["dilated"], "dilated"), residue=3, config=uncapped),
              gpu_case(single(EXPRS["causal"], "causal"), dtype="fp16", head_dim=256),
              gpu_case(single(EXPRS["sink_window"], "sw"), head_dim=64, config=uncapped)]
    capped = [gpu_case(single(EXPRS[name], name)) for name in ("causal", "sink_window")]
    capped += [gpu_case(duo, group=g, subset=True) for g in (0, 1)]
    fp32 = [gpu_case(single(EXPRS["sink_window"], "sw"), dtype="fp32", head_dim=64, use_tma=False)]
    results = compile_for_gpu(cases + capped + fp32)
    for (path, opts), kernel in zip(cases + capped + fp32, results):
        assert kernel["shared"] <= 232448, f"{path} {opts}: more shared memory than an H100 block has"
    for (path, opts), kernel in zip(cases, results):
        assert kernel["stack"] == 0, f"{path} {opts}: registers spilled ({kernel})"
    for (path, opts), kernel in zip(capped, results[len(cases):]):
        assert kernel["maxnreg"] == 128 and kernel["stack"] <= SPILL_LIMIT, f"{path}: {kernel}"
        assert kernel["shared"] <= 116224, f"{path} {opts}: two programs per SM do not fit ({kernel})"
