"""Compile the prefill kernel for sm_90 on a machine without a GPU and report resources.

    .venv/bin/python bench/proto/compile_check.py round3

For every config of a tune.py set (both pattern families) it prints registers, stack
(spills), shared memory (an H100 block may use at most 232448 bytes; two CTAs per SM need
<= ~113 KB each) and compile time.  Uses Triton's bundled ptxas/cuobjdump; no device time.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prefill_kernel as pk  # noqa: E402
import tune  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def compile_cfg(cfg, has_sink, has_window, D=128, dtype="bf16"):
    fn = pk._fwd_kernel
    names = fn.arg_names
    const = dict(GROUP=1, HEAD_DIM=D, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N,
                 BLOCK_N_SINK=cfg.BLOCK_N_SINK, HAS_SINK=has_sink, HAS_WINDOW=has_window,
                 HAS_LSE=False, USE_TMA=int(cfg.USE_TMA), GRID_ORDER=cfg.GRID_ORDER,
                 HEAD_GROUP=cfg.HEAD_GROUP, STAGES=cfg.STAGES, EDGE_STAGES=cfg.EDGE_STAGES,
                 WARP_SPEC=cfg.WARP_SPEC, LAZY=cfg.LAZY, DOT_PREC="tf32", MASK_IMPL=cfg.MASK_IMPL,
                 SINK_PREFETCH=bool(cfg.SINK_PREFETCH and has_sink),
                 EDGE_MERGE=bool(cfg.EDGE_MERGE and has_window))
    sig = {}
    for n in names:
        if n in const:
            sig[n] = "constexpr"
        elif n in ("Q", "K", "V", "O") and int(cfg.USE_TMA) == 2:
            bs = [1, 1, cfg.BLOCK_N if n in "KV" else cfg.BLOCK_M, D]
            sig[n] = f"tensordesc<{dtype}[{','.join(map(str, bs))}]>"
        elif n in ("Q", "K", "V", "O", "K_ptr", "V_ptr", "Q_ptr"):
            sig[n] = "*" + dtype
        elif n == "LSE":
            sig[n] = "*fp32"
        elif n == "qk_scale":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    div16 = ["K_ptr", "V_ptr", "Q_ptr", "LSE", "N"] + [n for n in names if n.startswith("stride_")]
    if int(cfg.USE_TMA) != 2:
        div16 += ["Q", "K", "V", "O"]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div16}
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.maxnreg:
        opts["maxnreg"] = cfg.maxnreg
    t = time.time()
    k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 128), options=opts)
    return k, time.time() - t


def resources(k):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return m.group(0) if m else "?"


if __name__ == "__main__":
    set_name = sys.argv[1] if len(sys.argv) > 1 else "confirm"
    for fam in ("window", "causal"):
        cfgs = list(tune.SETS[set_name][fam])
        for cfg in dict.fromkeys(cfgs):
            try:
                k, dt = compile_cfg(cfg, fam == "window", fam == "window")
                smem = k.metadata.shared
                note = "TOO BIG" if smem > 232448 else ("2 CTA/SM" if smem <= 113 * 1024 else "")
                print(f"{fam:6s} {cfg.name():40s} {dt:4.1f}s {resources(k)} smem={smem} {note}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"{fam:6s} {cfg.name():40s} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
