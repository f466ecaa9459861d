"""Tile sweep of the GNA case (image 128x128, kernel 13x13, stride 8x8, 24 heads, D=128, bf16)
beside natten_image, on the GPU: python3 bench/proto/gna_sweep.py DIR (a bench/gpu.py --generate DIR).
Prints ms and effective TFLOP/s (allowed pairs only) per launch configuration, and SDPA's."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from codegen.importing import import_module_from_path  # noqa: E402

folder = Path(sys.argv[1])
B, H, N, D = 1, 24, 16384, 128
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
pairs = N * 169  # every query sees 13 x 13 keys (the window is shifted inward at borders)
flops = 4 * D * pairs * B * H


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v))
print(f"{torch.cuda.get_device_name()}: SDPA full: {sdpa:.3f} ms, {4 * D * N * N * B * H / sdpa / 1e9:.0f} TFLOP/s")
# The memory floor of any attention that reads q, k, v once and writes o once: one elementwise
# kernel with exactly that traffic (3 reads, 1 write of B x H x N x D). GNA's 169 keys per query
# make it memory-bound: flops / floor is the highest effective rate any kernel can reach here.
o = torch.empty_like(q)
floor = bench(lambda: torch.addcmul(q, k, v, out=o))
moved = 4 * q.numel() * q.element_size()
print(
    f"memory floor (q, k, v read, o written: {moved / 1e6:.0f} MB): {floor:.3f} ms, {moved / floor / 1e9:.2f} TB/s; "
    f"bound {flops / floor / 1e9:.0f} TFLOP/s = {flops / floor / (4 * D * N * N * B * H / sdpa):.0%} of SDPA's rate"
)
for name in ("bench_gna_image_13x13_s8", "bench_image_13x13"):
    mod = import_module_from_path(folder / f"{name}.py", name)
    for bm, bn, warps, stages in [
        (64, 64, 4, 3),
        (64, 64, 4, 2),
        (64, 64, 8, 3),
        (64, 32, 4, 3),
        (64, 32, 4, 4),
        (64, 32, 4, 2),
        (32, 32, 4, 3),
        (128, 64, 8, 2),
        (128, 64, 4, 3),
    ]:
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages, "STAGES": stages}
        try:
            out = mod._forward(q, k, v, None, False, None, config=cfg)[0]
            ref = mod._forward(q, k, v, None, False, None)[0]
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            ms = bench(lambda: mod._forward(q, k, v, None, False, None, config=cfg))
            print(
                f"{name} {bm}x{bn} w{warps} s{stages}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s "
                f"({flops / ms / 1e9 / (4 * D * N * N * B * H / sdpa / 1e9):.0%} of SDPA), err vs default {err:.1e}"
            )
        except Exception as exc:  # noqa: BLE001
            print(f"{name} {bm}x{bn} w{warps} s{stages}: {type(exc).__name__}: {str(exc)[:200]}")
