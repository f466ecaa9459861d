"""Resource use of a Triton kernel compiled for Hopper (sm_90) through Triton's own ptxas,
without a GPU: the helper of the tests' sm_90 compile scripts (decode_step_sm90.py,
decode_fused_sm90.py), which run in subprocesses so that TRITON_INTERPRET is unset."""

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def usage(fn, types: dict, constexprs: dict, num_warps: int) -> list:
    """[shared bytes, registers, stack bytes] of `fn` compiled with argument `types` (pointers
    16-byte aligned; absent names are constexprs) and `constexprs`. A kernel that declares PDL
    compiles as it launches on Hopper, a programmatic dependent (PDL true), unless told."""
    if "PDL" in fn.arg_names:
        constexprs = {"PDL": True, **constexprs}
    sig = {n: types.get(n, "constexpr") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*")}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    return [k.metadata.shared, int(m.group(1)), int(m.group(2))]
