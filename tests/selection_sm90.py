"""Compile the selection kernels of a generated module for Hopper (sm_90) through Triton's own ptxas:
the choose kernel (top-k and mass, a row of 1024 key blocks), the antidiagonal kernel and the
attention kernel with its selection loop and TMA descriptors. Run by tests/test_selection.py in
a subprocess: python tests/selection_sm90.py MODULE.py; prints the shared memory of each."""

import json
import sys
import triton
from attnc.codegen.importing import import_module_from_path
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

mod = import_module_from_path(sys.argv[1], "selgpu_mod")
target = GPUTarget("cuda", 90, 32)
out = {}
# the choose kernel: a row of 1024 key blocks (N = 131072, blocks of 128), top 16 and mass
for name, mass, k_pad in (("choose_top", False, 16), ("choose_mass", True, 1)):
    fn = mod._choose_g0
    sig = {n: "constexpr" for n in fn.arg_names}
    sig.update(MAT="*fp32", IDX="*i32", CNT="*i32", N="i32", NQB="i32", NKB="i32", W="i32", top="i32", share="fp32")
    sig.update(QB0="i32")
    k = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=dict(MASS=mass, BLOCK=128, NB_PAD=1024, K_PAD=k_pad)),
        target=target,
        options=dict(num_warps=4),
    )
    out[name] = k.metadata.shared
fn = mod._antidiagonal_g0
sig = {n: "constexpr" for n in fn.arg_names}
sig.update(Q="*bf16", K="*bf16", MAT="*fp32", scale="fp32")
sig.update({n: "i32" for n in fn.arg_names if n.startswith("stride") or n in ("N", "NQB", "NKB", "H_KV", "QB0", "NQ")})
k = triton.compile(
    ASTSource(fn=fn, signature=sig, constexprs=dict(KV_GROUP=4, STRIDE=8, BLOCK=128, HEAD_DIM=128, UPCAST=False)),
    target=target,
    options=dict(num_warps=4),
)
out["antidiagonal"] = k.metadata.shared
# the attention kernel with its selection loop, TMA descriptors
fn = mod._fwd_kernel
names = fn.arg_names
sig = {}
for n in names:
    if n in ("Q", "K", "V", "O"):
        sig[n] = f"tensordesc<bf16[1,1,{128 if n in ('Q', 'O') else 128},128]>"
    elif n in ("Q_ptr", "K_ptr", "V_ptr", "O_ptr"):
        sig[n] = "*bf16"
    elif n == "LSE":
        sig[n] = "*fp32"
    elif n in ("HEADS", "TR", "SEL_IDX", "SEL_CNT"):
        sig[n] = "*i32"
    elif n == "qk_scale":
        sig[n] = "fp32"
    elif n.startswith("stride") or n in ("N", "H", "NH", "Q_OFF", "NQ", "K_LO", "K_HI", "SEL_W", "SEL_NQB"):
        sig[n] = "i32"
    else:
        sig[n] = "constexpr"
cfg = dict(
    KV_GROUP=1,
    HEAD_DIM=128,
    BLOCK_M=128,
    BLOCK_N=128,
    BLOCK_N_NARROW=16,
    GROUP=0,
    SUBSET=False,
    RESIDUE=0,
    HAS_LSE=False,
    USE_TMA=2,
    GRID_ORDER=3,
    HEAD_GROUP=4,
    STAGES=2,
    EDGE_STAGES=2,
    WARP_SPEC=False,
    DOT_PREC="tf32",
    UPCAST=False,
    TRACE=False,
    HAS_SEL=True,
    SEL_BLOCK=128,
    KEY_RANGE=False,
)
k = triton.compile(
    ASTSource(fn=fn, signature=sig, constexprs=cfg), target=target, options=dict(num_warps=8, num_stages=2)
)
out["attention"] = k.metadata.shared
print(json.dumps(out))
