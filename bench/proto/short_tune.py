"""Short prompts: launch configurations of the causal prefill kernel at N = 1024 (the model's
shape: 32 query heads, 8 KV heads, D = 128, bf16, B = 1) beside SDPA, and the prompt's cache
append, on the GPU:

    python bench/model.py generate                     # here (needs attnc)
    python3 bench/proto/short_tune.py bench/generated [N,N,...] [module,module,...]  # GPU machine

A 1K prompt's attention is one wave of small programs; which tile shape fills the GPU best
decides whether a short prompt pays a tax against SDPA."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from codegen.importing import import_module_from_path  # noqa: E402

folder = Path(sys.argv[1])
LENGTHS = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1024, 2048, 4096]
NAMES = sys.argv[3].split(",") if len(sys.argv) > 3 else ["model_8b_causal"]
H, HK, D = 32, 8, 128


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


base = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2, "STAGES": 2, "EDGE_STAGES": 2,
        "USE_TMA": 2, "GRID_ORDER": 2, "WARP_SPEC": False, "maxnreg": 128}  # fmt: skip
variants = {
    "default row": {},
    "64x64 w4": {"BLOCK_M": 64, "num_warps": 4, "maxnreg": None},
    "64x64 w4 s3": {"BLOCK_M": 64, "num_warps": 4, "maxnreg": None, "num_stages": 3, "STAGES": 3},
    "64x64 w4 s3 maxnreg": {"BLOCK_M": 64, "num_warps": 4, "num_stages": 3, "STAGES": 3},
    "64x64 w4 s4": {"BLOCK_M": 64, "num_warps": 4, "maxnreg": None, "num_stages": 4, "STAGES": 4},
    "64x128 w4": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "maxnreg": None},
    "128x128 w8": {"BLOCK_N": 128, "maxnreg": None},
    "128x64 w8 no maxnreg": {"maxnreg": None},
    "128x64 w4": {"num_warps": 4, "maxnreg": None},
    "grid order 0": {"GRID_ORDER": 0},
}
print(torch.cuda.get_device_name(), flush=True)
for name, n in ((name, n) for name in NAMES for n in LENGTHS):
    mod = import_module_from_path(folder / f"{name}.py", name)
    q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, HK, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    ref = mod.prefill(q, k, v)
    line = [f"{name} N={n}: SDPA {sdpa:.1f} us, prefill() {bench(lambda: mod.prefill(q, k, v)):.1f} us"]
    for label, over in variants.items():
        cfg = {**base, **over}
        try:
            out = mod._forward(q, k, v, D**-0.5, False, None, config=cfg)[0]
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            us = bench(lambda: mod._forward(q, k, v, D**-0.5, False, None, config=cfg))
            line.append(f"  {label:22s} {us:6.1f} us (err {err:.0e})")
        except Exception as exc:  # noqa: BLE001
            line.append(f"  {label:22s} {type(exc).__name__}: {str(exc)[:160]}")
    cache = mod.Cache(1, device="cuda", dtype=torch.bfloat16, max_len=n + 16)

    def append():
        cache.append(0, k, v, q)
        cache._layers[0].n = 0  # a fresh prompt each time (the same slots)
        cache._layers[0].npos.zero_()

    try:
        line.append(f"  cache append of the prompt: {bench(append):.1f} us (with a reset)")
    except Exception as exc:  # noqa: BLE001
        line.append(f"  append: {type(exc).__name__}: {str(exc)[:160]}")
    print("\n".join(line), flush=True)
