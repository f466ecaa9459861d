"""A/B on the GPU: causal prefill through the Hopper Gluon kernel (the default configuration)
against the generated Triton kernel (configuration HOPPER=0) and SDPA; contiguous and model
layouts, GQA; errors against SDPA, medians of three interleaved do_bench rounds.

    python bench/gpu.py --generate build/gpu                          # here
    python3 bench/proto/hopper_ab.py build/gpu/bench_causal.py        # GPU machine

The "triton" times go through the unmemoised path (a configuration override is never
memoised): at N <= 4096 they are host-bound, not kernel times."""
import statistics
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, ".")
from codegen.importing import import_module_from_path  # noqa: E402

mod = import_module_from_path(sys.argv[1], "hab_causal")
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
OFF = {"HOPPER": 0}


def make(B, H, HKV, N, D, layout):
    g = torch.Generator(device="cuda").manual_seed(N + H)
    if layout == "model":
        return [torch.randn(B, N, h, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
                for h in (H, HKV, HKV)]
    return [torch.randn(B, h, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for h in (H, HKV, HKV)]


for (B, H, HKV, N, layout) in [(1, 32, 32, 2048, "contig"), (1, 32, 32, 4096, "contig"), (1, 32, 32, 8192, "contig"),
                               (1, 32, 32, 32768, "contig"), (1, 32, 8, 8192, "model"), (1, 32, 8, 32768, "model"),
                               (2, 32, 8, 4096, "model"), (1, 8, 2, 131072, "model")]:
    q, k, v = make(B, H, HKV, N, 128, layout)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=HKV != H)
    o_new, lse_new = mod.prefill(q, k, v, return_lse=True)
    o_old, lse_old = mod._forward(q, k, v, 128**-0.5, True, None, config=OFF)
    err = lambda a: ((a.float() - ref.float()).norm() / ref.float().norm()).item()  # noqa: E731
    lse_d = (lse_new - lse_old).abs().max().item()
    fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=HKV != H),
           "triton": lambda: mod._forward(q, k, v, 128**-0.5, False, None, config=OFF), "hopper": lambda: mod.prefill(q, k, v)}
    rows = {n: [] for n in fns}
    for _ in range(3):
        for n, fn in fns.items():
            rows[n].append(do_bench(fn, warmup=10, rep=100 if N < 100000 else 30, return_mode="median"))
    t = {n: statistics.median(r) for n, r in rows.items()}
    again = err(mod.prefill(q, k, v))  # a remembered call, through the bound launch
    flops = 4 * B * H * 128 * N * (N + 1) / 2
    print(f"B={B} H={H}/{HKV} N={N} {layout}: err hopper {err(o_new):.1e} triton {err(o_old):.1e} "
          f"again {again:.1e} lse diff {lse_d:.1e} out stride same {o_new.stride() == q.stride()} | "
          + " ".join(f"{n} {ms:.3f} ms {flops / ms / 1e9:.0f} TF" for n, ms in t.items())
          + f" | hopper/sdpa rate {t['sdpa'] / t['hopper']:.3f} triton/sdpa {t['sdpa'] / t['triton']:.3f}", flush=True)
    del q, k, v, ref, o_new, o_old
