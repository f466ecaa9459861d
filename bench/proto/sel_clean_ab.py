"""A/B: the MoBA-like selection's attention kernel, the build before chosen blocks were split
into a clean run (every chosen block masked) against this one, same inputs, same indices,
medians of three interleaved do_bench rounds, with SDPA causal and the static part for scale.

    git stash; python bench/selection.py --generate bench/generated/selection_old; git stash pop
    python bench/selection.py --generate bench/generated/selection        # here (or at two revisions)
    python3 bench/proto/sel_clean_ab.py                                     # GPU machine"""
import os
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, ".")
from codegen.importing import import_module_from_path  # noqa: E402

new = import_module_from_path("bench/generated/selection/sel_moba.py", "sel_new")
old = import_module_from_path("bench/generated/selection_old/sel_moba.py", "sel_old")
static = import_module_from_path("bench/generated/selection/sel_static.py", "sel_static")
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
H, HKV, D = 32, int(os.environ.get("HKV", "32")), 128
for n in (8192, 131072):
    gen = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(1, h, n, D, device="cuda", dtype=torch.bfloat16, generator=gen) for h in (H, HKV, HKV))
    idx, cnt = new.select(q, k)
    oidx, ocnt = old.select(q, k)
    assert torch.equal(idx, oidx) and torch.equal(cnt, ocnt)
    a = new.prefill(q, k, v, indices=(idx, cnt)).float()
    b = old.prefill(q, k, v, indices=(idx, cnt)).float()
    err = ((a - b).norm() / b.norm()).item()
    print(f"N={n}: new vs old rel diff {err:.2e}, max abs {(a - b).abs().max().item():.2e}", flush=True)
    if n == 8192:
        continue
    fns = {
        "old attention": lambda: old.prefill(q, k, v, indices=(idx, cnt)),
        "new attention": lambda: new.prefill(q, k, v, indices=(idx, cnt)),
        "old total": lambda: old.prefill(q, k, v),
        "new total": lambda: new.prefill(q, k, v),
        "static part": lambda: static.prefill(q, k, v),
        "sdpa causal": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=HKV != H),
    }
    rows = {name: [] for name in fns}
    for _ in range(3):
        for name, fn in fns.items():
            rows[name].append(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    med = {name: statistics.median(t) for name, t in rows.items()}
    for name, t in med.items():
        print(f"  {name:<16} {t:9.3f} ms   rounds {', '.join(f'{x:.3f}' for x in rows[name])}")
    print(f"  attention old/new {med['old attention'] / med['new attention']:.3f}; total old/new "
          f"{med['old total'] / med['new total']:.3f}; sdpa/new total {med['sdpa causal'] / med['new total']:.2f} "
          f"(old {med['sdpa causal'] / med['old total']:.2f})", flush=True)
