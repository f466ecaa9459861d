"""Host time of the lossless paged cache's one-token step, the build before a change (`base`)
against this one, in one run on the GPU.

The cache is `keep sink(4) keep recent(4092)` (bench/decode_select.py's `evict_none`), B = 8,
32 query heads, 8 KV heads, D = 128, bf16, prompt 8192, pages of 16: most steps are quiet (five
torch ops), and two in every 16 take the full path (a page opens, a page dies). Prints, per
build: the eager step (append + decode, timed over 512 steps), and the host time of `append`
alone (no sync: the time Python and the launches take), median and the mean of the slowest
eighth (the full-path steps).

    python bench/decode_select.py generate --base REV   # here: renders both builds
    python3 bench/proto/paged_host.py                    # on the GPU machine
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from decode_select import GEN, HK, B, D, H, _import  # noqa: E402

STEPS = 512


def run(mod) -> dict:
    """The step and append host times of one build's evict_none PagedCache."""
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    cache = mod.PagedCache(B, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        cache.append(0, r(B, HK, 4096, D), r(B, HK, 4096, D))
    k1, v1, q1 = r(B, HK, 1, D), r(B, HK, 1, D), r(B, H, 1, D)
    for _ in range(64):
        cache.append(0, k1, v1)
        cache.decode(0, q1)
    torch.cuda.synchronize()
    host = []
    t0 = time.perf_counter()
    for _ in range(STEPS):
        t = time.perf_counter()
        cache.append(0, k1, v1)
        host.append(time.perf_counter() - t)
        cache.decode(0, q1)
    torch.cuda.synchronize()
    step = (time.perf_counter() - t0) / STEPS
    host.sort()
    slow = host[-STEPS // 8 :]
    return {"step_eager_us": step * 1e6, "append_host_median_us": host[STEPS // 2] * 1e6,
            "append_host_slowest_eighth_us": sum(slow) / len(slow) * 1e6}  # fmt: skip


def main() -> None:
    print(torch.cuda.get_device_name())
    for label, folder in (("base", GEN / "base"), ("new", GEN)):
        if (folder / "evict_none.py").exists():
            res = run(_import("evict_none", folder))
            print(label, {k: round(v, 1) for k, v in res.items()}, flush=True)


if __name__ == "__main__":
    main()
