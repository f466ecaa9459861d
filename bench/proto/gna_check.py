"""Does the GNA grid kernel match the module's torch reference on the GPU, at several tiles?
python3 bench/proto/gna_check.py DIR (a bench/gpu.py --generate DIR)."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from codegen.importing import import_module_from_path  # noqa: E402

folder = Path(sys.argv[1])
B, H, N, D = 1, 2, 16384, 128
torch.manual_seed(0)
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
q24, k24, v24 = (torch.randn(B, 24, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
sdpa_ms = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(q24, k24, v24), return_mode="median")
sdpa_rate = 4 * D * N * N * 24 / sdpa_ms / 1e9
print(f"SDPA full, 24 heads: {sdpa_ms:.3f} ms, {sdpa_rate:.0f} TFLOP/s", flush=True)
for name in ("bench_gna_image_13x13_s8", "bench_image_13x13"):
    mod = import_module_from_path(folder / f"{name}.py", name)
    ref = mod.reference(q, k, v).float()
    m = mod.mask(N, None, 1, q.device)[0]
    print(f"{name}: keys per row min {int(m.sum(1).min())} max {int(m.sum(1).max())}", flush=True)
    for cfg in (None, {"BLOCK_M": 64, "BLOCK_N": 32}, {"BLOCK_M": 64, "BLOCK_N": 64, "USE_TMA": 0},
                {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2, "STAGES": 2}):
        out = mod._forward(q, k, v, None, False, None, config=cfg)[0].float()
        per_row = ((out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-6))[0, 0]
        worst = torch.nonzero(per_row > 2e-2).flatten()
        err = ((out - ref).norm() / ref.norm()).item()
        ms = triton.testing.do_bench(lambda: mod._forward(q24, k24, v24, None, False, None, config=cfg),
                                     warmup=25, rep=100, return_mode="median")
        rate = 4 * D * N * 169 * 24 / ms / 1e9
        print(f"  cfg={cfg}: rel err {err:.2e}, rows off {worst.numel()} (first {worst[:10].tolist()}); "
              f"24 heads {ms:.3f} ms, {rate:.0f} TFLOP/s ({rate / sdpa_rate:.0%} of SDPA)", flush=True)
