"""Compile the Hopper kernel (codegen/support/hopper.py) of a generated module for sm_90 through
Triton's own ptxas, causal and banded (sinks and a window), with and without LSE, a head subset,
GQA, D = 64 and 128, bf16 and fp16. Run by tests/test_hopper.py in a subprocess: python tests/hopper_sm90.py MODULE.py;
prints JSON: per case, shared memory, registers per thread and spilled bytes."""

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from attnc.codegen.importing import import_module_from_path
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource


def resources(kernel) -> dict:
    """Registers per thread and stack (spill) bytes of a compiled kernel, from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return dict(regs=int(m.group(1)), stack=int(m.group(2))) if m else {}


mod = import_module_from_path(sys.argv[1], "hopper_mod")
fn = mod._hopper_kernel
out = {}
for D, dt, group, lse, subset, hg, band in (
    (128, "bf16", 1, False, False, 1, False),
    (128, "bf16", 4, True, True, 4, True),
    (64, "fp16", 2, True, False, 8, True),
    (128, "fp16", 1, False, False, 2, True),
):
    gdt = gl.bfloat16 if dt == "bf16" else gl.float16
    const = dict(GROUP=group, BLOCK_N=128, STAGES=2, HAS_LSE=lse, HEAD_GROUP=hg, SUBSET=subset, BAND=band)
    sig = {}
    for n in fn.arg_names:
        if n in const:
            sig[n] = "constexpr"
        elif n.endswith("_desc"):
            block = [64, D] if n == "q_desc" else [128, D]
            sig[n] = (
                f"tensordesc<{gdt}[{block[0]}, {block[1]}],"
                + repr(gl.NVMMASharedLayout.get_default_for(block, gdt))
                + ">"
            )
        elif n == "HEADS":
            sig[n] = "*i32" if subset else "constexpr"
        elif n == "O":
            sig[n] = f"*{dt}"
        elif n == "LSE":
            sig[n] = "*fp32"
        elif n == "qk_scale":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    if not subset:
        const["HEADS"] = None
    k = triton.compile(
        GluonASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 128), options=dict(num_warps=4, maxnreg=168)
    )
    out[f"D{D}_{dt}_g{group}_lse{int(lse)}_sub{int(subset)}_band{int(band)}"] = dict(
        shared=k.metadata.shared, **resources(k)
    )
print(json.dumps(out))
