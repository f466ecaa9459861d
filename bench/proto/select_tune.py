"""Launch-configuration sweep of the selection case's attention kernel (the MoBA-like case of
bench/selection.py: N = 131072, B = 1, H = 32, D = 128, bf16, top 16 blocks of 128 plus
sink(4) | window(1024)), beside SDPA causal and the selection itself, on the GPU:

    python bench/selection.py --generate build/selection      # here (needs attnc)
    python3 bench/proto/select_tune.py build/selection         # GPU machine

Each row: the attention kernel given the module's own indices (`_forward(..., config=, sel=)`),
ms, its relative error against the default configuration's output, and the whole prefill
(selection + attention) as a multiple of SDPA causal's time (the goal: 15x)."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from codegen.importing import import_module_from_path  # noqa: E402

folder = Path(sys.argv[1])
mod = import_module_from_path(folder / "sel_moba.py", "sel_moba")
N, H, D = 131072, 32, 128
gen = torch.Generator(device="cuda").manual_seed(2)
q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
scale = D**-0.5


def bench(fn):
    return triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median")


sel = mod.select(q, k)
t_sel = bench(lambda: mod.select(q, k))
ref = mod._forward(q, k, v, scale, False, None, sel=sel)[0]
t_def = bench(lambda: mod._forward(q, k, v, scale, False, None, sel=sel))
sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
print(
    f"{torch.cuda.get_device_name()}: SDPA causal {sdpa:.2f} ms, select {t_sel:.3f} ms, "
    f"attention (default) {t_def:.3f} ms, total {t_sel + t_def:.3f} ms = {sdpa / (t_sel + t_def):.2f}x SDPA",
    flush=True,
)
base = {
    "BLOCK_M": 128,
    "BLOCK_N": 64,
    "num_warps": 8,
    "num_stages": 2,
    "STAGES": 2,
    "EDGE_STAGES": 2,
    "USE_TMA": 2,
    "GRID_ORDER": 2,
    "WARP_SPEC": False,
    "maxnreg": 128,
}
variants = {
    "default row": {},
    "stages 3": {"num_stages": 3, "STAGES": 3},
    "no maxnreg": {"maxnreg": None},
    "no maxnreg, stages 3": {"maxnreg": None, "num_stages": 3, "STAGES": 3},
    "BLOCK_N 128": {"BLOCK_N": 128, "maxnreg": None},
    "BLOCK_N 128, stages 1": {"BLOCK_N": 128, "maxnreg": None, "num_stages": 1, "STAGES": 1},
    "grid order 0": {"GRID_ORDER": 0},
    "grid order 1": {"GRID_ORDER": 1},
    "no TMA": {"USE_TMA": 0},
    "edge stages 1": {"EDGE_STAGES": 1},
    "maxnreg 168": {"maxnreg": 168},
    "4 warps 64x64": {"BLOCK_M": 64, "num_warps": 4, "maxnreg": None},
}
for name, over in variants.items():
    cfg = {**base, **over}
    try:
        out = mod._forward(q, k, v, scale, False, None, config=cfg, sel=sel)[0]
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        ms = bench(lambda: mod._forward(q, k, v, scale, False, None, config=cfg, sel=sel))
        print(f"{name:28s} {ms:7.3f} ms  err {err:.1e}  total {sdpa / (t_sel + ms):5.2f}x SDPA", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"{name:28s} {type(exc).__name__}: {str(exc)[:200]}", flush=True)
