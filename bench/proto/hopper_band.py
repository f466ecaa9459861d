"""The Hopper Gluon kernel over `causal & (sink(S) | window(W))` on the GPU: correctness at the
edges of its tile visit, then an A/B against the generated Triton kernel and FlexAttention.

    python bench/proto/hopper_band.py --generate build/band     # here (needs attnc)
    python3 bench/proto/hopper_band.py --run build/band         # GPU machine (torch, triton)

Checks (bf16, both layouts, GQA, head subsets, N not a multiple of 128, windows narrower than a
tile, sinks over several tiles): the module's `prefill` (the Gluon kernel from 4096 keys on)
against its float32 `reference`, the log-sum-exp too, a second call (the bound C launch) equal
to the first and to the kernel launched as one program per query tile, and the Triton kernel
(configuration HOPPER=0) beside it. Timing (B=1, H=32, D=128, bf16, N=32768): medians of three
interleaved do_bench rounds of the Gluon kernel (forced: configuration HOPPER_WINDOW=1; persistent,
and `per_tile`: one program per query tile), the Triton kernel, the module's own choice
(`default`), SDPA for causal and, for two cases, FlexAttention (compiled, block mask built once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CASES = {  # name: (pattern text, (sink, window) of its band heads, timed at 32K)
    "causal": ("pattern causal = causal\n", (0, 0), True),
    "win64": ("pattern win64 = causal & window(64)\n", (0, 64), False),
    "win100": ("pattern win100 = causal & window(100)\n", (0, 100), False),
    "sink200_win300": ("pattern sink200_win300 = causal & (sink(200) | window(300))\n", (200, 300), False),
    "sink128_win256": ("pattern sink128_win256 = causal & (sink(128) | window(256))\n", (128, 256), False),
    "sink_window_1024": ("pattern sink_window_1024 = causal & (sink(4) | window(1024))\n", (4, 1024), True),
    "window_4096": ("pattern window_4096 = causal & window(4096)\n", (0, 4096), True),
    "sink_window_4096": ("pattern sink_window_4096 = causal & (sink(4) | window(4096))\n", (4, 4096), True),
    "sink_window_2048": ("pattern sink_window_2048 = causal & (sink(4) | window(2048))\n", (4, 2048), True),
    "window_3072": ("pattern window_3072 = causal & window(3072)\n", (0, 3072), True),
    "duo_mix": (
        "model { layers = 1, heads = 32, kv_heads = 8, head_dim = 128 }\n"
        "pattern duo_mix {\n  heads 0..8: causal\n  rest: causal & (sink(64) | window(960))\n}\n",
        None,
        True,
    ),
}
FLEX = ("sink_window_1024", "window_4096")  # the cases timed beside FlexAttention too
CHECKS = [  # (B, H, H_KV, N, D, layout)
    (2, 4, 2, 4229, 128, "contig"),
    (1, 4, 4, 5000, 64, "model"),
    (1, 8, 2, 8192, 128, "model"),
]


def generate(out: Path) -> None:
    from attnc.codegen.writer import write_module
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    out.mkdir(parents=True, exist_ok=True)
    for name, (text, _, _) in CASES.items():
        print(write_module(lower(resolve_text(text, f"{name}.attn")), out))


def inputs(B, H, HKV, N, D, layout, seed):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    if layout == "model":
        return [torch.randn(B, N, h, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
                for h in (H, HKV, HKV)]  # fmt: skip
    return [torch.randn(B, h, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for h in (H, HKV, HKV)]


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def check(mod, name: str) -> bool:
    import torch

    ok = True
    shapes = CHECKS if name != "duo_mix" else [(1, 32, 8, 4229, 128, "model"), (2, 32, 8, 4096, 128, "contig")]
    for B, H, HKV, N, D, layout in shapes:
        q, k, v = inputs(B, H, HKV, N, D, layout, N + H)
        o, lse = mod.prefill(q, k, v, return_lse=True)
        again = mod.prefill(q, k, v)
        ref, ref_lse = mod.reference(q, k, v, return_lse=True)
        tri = mod._forward(q, k, v, D**-0.5, False, None, config={"HOPPER": 0})[0]
        per_tile = per_tile_programs(mod, lambda: mod._forward(q, k, v, D**-0.5, False, None, config={}))[0]
        e, e_tri, lse_e = rel(o, ref), rel(tri, ref), (lse - ref_lse).abs().max().item()
        same = torch.equal(again, o) and torch.equal(per_tile, o)
        good = e < 1e-2 and lse_e < 1e-2 and same and not torch.isnan(o).any().item()
        ok &= good
        print(f"  {name} B={B} H={H}/{HKV} N={N} D={D} {layout}: err {e:.1e} (triton {e_tri:.1e}) "
              f"lse {lse_e:.1e} again equal {same} stride {o.stride() == q.stride()} {'ok' if good else 'FAIL'}",
              flush=True)  # fmt: skip
    return ok


def per_tile_programs(mod, fn):
    """fn() with the Hopper kernel launched as one program per query tile (not persistent)."""
    mod.HOPPER_PROGRAMS_PER_SM = 0
    try:
        return fn()
    finally:
        mod.HOPPER_PROGRAMS_PER_SM = 1


def flex_fn(band, q, k, v):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    sink, window = band

    def mask_mod(b, h, qi, ki):
        return (ki <= qi) & ((ki < sink) | (qi - ki < window))

    N = q.shape[2]
    bm = create_block_mask(mask_mod, None, None, N, N, device="cuda")
    flex = torch.compile(flex_attention)
    return lambda: flex(q, k, v, block_mask=bm)


def time_case(mod, name: str, band) -> dict:
    import torch
    from triton.testing import do_bench

    B, H, N, D = 1, 32, 32768, 128
    HKV = 8 if name == "duo_mix" else 32
    q, k, v = inputs(B, H, HKV, N, D, "contig", 7)
    fns = {  # configuration overrides: the unmemoised path (host time is no matter at 32K)
        "hopper": lambda: mod._forward(q, k, v, D**-0.5, False, None, config={"HOPPER_WINDOW": 1}),
        "per_tile": lambda: per_tile_programs(
            mod, lambda: mod._forward(q, k, v, D**-0.5, False, None, config={"HOPPER_WINDOW": 1})
        ),
        "triton": lambda: mod._forward(q, k, v, D**-0.5, False, None, config={"HOPPER": 0}),
        "default": lambda: mod.prefill(q, k, v),
    }
    if name == "causal":
        fns["sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    if band is not None and name in FLEX:
        fns["flex"] = flex_fn(band, q, k, v)
        e_flex = rel(fns["flex"](), mod.prefill(q, k, v))
    else:
        e_flex = float("nan")
    rows = {n: [] for n in fns}
    for _ in range(3):
        for n, fn in fns.items():
            rows[n].append(do_bench(fn, warmup=10, rep=100, return_mode="median"))
    t = {n: statistics.median(r) for n, r in rows.items()}
    line = " ".join(f"{n} {ms:.3f} ms" for n, ms in t.items())
    ratios = f"hopper/triton {t['hopper'] / t['triton']:.3f} hopper/per_tile {t['hopper'] / t['per_tile']:.3f}"
    if "flex" in t:
        ratios += f" hopper/flex {t['hopper'] / t['flex']:.3f} triton/flex {t['triton'] / t['flex']:.3f}"
    print(f"{name} N={N}: {line} | {ratios} | flex vs hopper err {e_flex:.1e}", flush=True)
    return {"case": name, "ms": t, "flex_err": e_flex}


def run(src: Path, time_only: bool = False) -> int:
    import os

    import torch

    from codegen.importing import import_module_from_path

    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    ok, timed = True, []
    mods = {name: import_module_from_path(src / f"{name}.py", f"band_{name}") for name in CASES}
    for name, mod in mods.items():
        ok &= time_only or check(mod, name)
    print("checks", "ok" if ok else "FAILED", flush=True)
    for name, (_, band, timed_case) in CASES.items():
        if timed_case:
            try:
                timed.append(time_case(mods[name], name, band))
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{name}: {type(exc).__name__}: {exc}"[:400], flush=True)
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "hopper_band.json").write_text(json.dumps({"ok": ok, "timed": timed}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", type=Path)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--time-only", action="store_true", help="with --run: skip the checks")
    a = ap.parse_args()
    if a.generate:
        generate(a.generate)
    sys.exit(run(a.run, a.time_only) if a.run else 0)
