"""Tile configurations of the split launches of `causal & (window(256) | strided(256))` at 32K.

    python bench/proto/residue_sweep.py --generate build/residue   # here (needs attnc)
    python3 bench/proto/residue_sweep.py --run build/residue       # GPU machine (torch, triton)

The pattern runs as two launches (docs/codegen.md, "Split launches"): the window's, then the
strided pairs per residue class q mod 256, merged by log-sum-exp. Both take the group's tile
configuration; this times the pair (`split`) and the window's launch alone (`window`: the
pattern `causal & window(256)`) under a few configurations (`config=` overrides of the
generated module), so that split - window is the residue launch under each. B=1, H=32, D=128,
bf16, N=32768; medians of do_bench, interleaved rounds; each configuration's output checked
against the default's. Writes $OUT/residue_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PATTERNS = {
    "split": "pattern split = causal & (window(256) | strided(256))\n",
    "window": "pattern window = causal & window(256)\n",
}
CONFIGS = {  # name: overrides of the configuration (on Hopper, split groups: 64 x 32 tiles, 4 warps)
    "default": {},
    "m128_n64_w8": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "maxnreg": 128},
    "m64_n64_w4": {"BLOCK_M": 64, "BLOCK_N": 64},
    "m64_n32_w4_s3": {"num_stages": 3, "STAGES": 3},
    "m32_n32_w4": {"BLOCK_M": 32},
    "m64_n16_w4": {"BLOCK_N": 16, "BLOCK_N_NARROW": 16},
    "m64_n32_w2": {"num_warps": 2},
}
FLOPS_PER_PAIR = 4 * 128  # 4 D


def generate(out: Path) -> None:
    from attnc.codegen.writer import write_module
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    out.mkdir(parents=True, exist_ok=True)
    for name, text in PATTERNS.items():
        print(write_module(lower(resolve_text(text, f"{name}.attn")), out))


def run(src: Path) -> int:
    import torch
    from triton.testing import do_bench

    from codegen.importing import import_module_from_path

    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    mods = {n: import_module_from_path(src / f"{n}.py", f"residue_{n}") for n in PATTERNS}
    B, H, N, D = 1, 32, 32768, 128
    g = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    fns, ok = {}, True
    for cname, cfg in CONFIGS.items():
        for pname, mod in mods.items():
            fn = (lambda m, c: lambda: m._forward(q, k, v, D**-0.5, False, None, config=c)[0])(mod, cfg)
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - a configuration this Triton rejects: report, go on
                print(f"{cname} {pname}: {type(exc).__name__}: {exc}"[:300], flush=True)
                continue
            ref = mod._forward(q, k, v, D**-0.5, False, None, config={})[0]
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            ok &= err < 1e-2
            print(f"{cname} {pname}: err vs default {err:.1e}", flush=True)
            fns[(cname, pname)] = fn
    rows = {key: [] for key in fns}
    for _ in range(3):
        for key, fn in fns.items():
            rows[key].append(do_bench(fn, warmup=10, rep=100, return_mode="median"))
    t = {key: statistics.median(r) for key, r in rows.items()}
    pairs = sum(min(i + 1, 256) + i // 256 for i in range(N))  # the window's keys, then k = q - 256 j, j >= 1
    result = []
    for cname in CONFIGS:
        split, window = t.get((cname, "split")), t.get((cname, "window"))
        if split is None or window is None:
            continue
        rate = f" {pairs * B * H * FLOPS_PER_PAIR / split / 1e9:.0f} TFLOP/s"
        print(f"{cname}: split {split:.3f} ms window {window:.3f} ms residue {split - window:.3f} ms{rate}", flush=True)
        result.append({"config": cname, "split_ms": split, "window_ms": window})
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "residue_sweep.json").write_text(json.dumps({"ok": ok, "rows": result}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", type=Path)
    ap.add_argument("--run", type=Path)
    a = ap.parse_args()
    if a.generate:
        generate(a.generate)
    if a.run:
        sys.exit(run(a.run))
