"""Tile-order grid kernels on the GPU: correctness against FlexAttention (same mask) and a
sweep of launch configurations, beside the generic kernel, FlexAttention and SDPA dense.

    python bench/gpu.py --generate-grid DIR   (here)  then   python3 bench/proto/grid_sweep.py DIR (GPU)
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench

B, D = 1, 128
CONFIGS = [dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, USE_TMA=0),
           dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, USE_TMA=2),
           dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, STAGES=2, USE_TMA=2),
           dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, STAGES=2, USE_TMA=2),
           dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, STAGES=2, USE_TMA=2),
           dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, USE_TMA=2),
           dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, STAGES=2, USE_TMA=2),
           dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3, STAGES=3, USE_TMA=2)]


def unmasked(path):
    """The module with every tile's mask made `True`: the cost of the mask, by difference."""
    text = path.read_text()
    start = text.index("            allowed = (")
    end = text.index("            acc, m_i, l_i = _grid_step", start)
    text = text[:start] + "            allowed = cols[None, :] >= 0\n" + text[end:]
    out = path.with_name(path.stem + "_nomask.py")
    out.write_text(text)
    return out


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(folder):
    flex = torch.compile(flex_attention, dynamic=False)
    out = []
    paths = sorted(Path(folder).glob("*.py"))
    if os.environ.get("UNMASKED"):
        paths += [unmasked(p) for p in paths]
    for path in paths:
        mod = load(path)
        _, prefix, size = mod._GRID_SHAPE[0]
        n = prefix + size
        H = 24
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fn = mod._MASKS_TORCH[0]
        bm = create_block_mask(lambda b, h, qi, ki: fn(qi, ki), None, None, n, n, device="cuda")
        ref = flex(q, k, v, block_mask=bm)
        pairs = 0
        kk = torch.arange(n, device="cuda")[None, :]
        for s in range(0, n, 4096):
            qq = torch.arange(s, min(n, s + 4096), device="cuda")[:, None]
            pairs += int(fn(qq, kk).sum())
        flops = 4 * D * pairs * B * H
        row = {"case": path.stem, "n": n, "density": pairs / n / n}
        row["flex_ms"] = do_bench(lambda: flex(q, k, v, block_mask=bm), warmup=50, rep=200, return_mode="median")
        row["sdpa_ms"] = do_bench(lambda: F.scaled_dot_product_attention(q, k, v), warmup=50, rep=200, return_mode="median")
        row["sdpa_tflops"] = 4 * D * n * n * B * H / row["sdpa_ms"] / 1e9
        row["flex_tflops"] = flops / row["flex_ms"] / 1e9
        for cfg in CONFIGS:
            key = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}w{cfg['num_warps']}s{cfg['num_stages']}{'tma' if cfg['USE_TMA'] else ''}"
            try:
                o = mod._forward(q, k, v, None, False, None, config=cfg)[0]
                err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                ms = do_bench(lambda: mod._forward(q, k, v, None, False, None, config=cfg), warmup=50, rep=200,
                              return_mode="median")
                row[key] = {"ms": ms, "err": err, "tflops": flops / ms / 1e9}
            except Exception as exc:
                row[key] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            print(path.stem, key, row[key], flush=True)
        try:
            cfg = dict(CONFIGS[0], GRID=False)
            o = mod._forward(q, k, v, None, False, None, config=cfg)[0]
            row["generic_err"] = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
            row["generic_ms"] = do_bench(lambda: mod._forward(q, k, v, None, False, None, config=cfg), warmup=20,
                                         rep=100, return_mode="median")
        except Exception as exc:
            row["generic_error"] = f"{type(exc).__name__}: {exc}"[:200]
        print(json.dumps(row), flush=True)
        out.append(row)
    Path(os.environ.get("OUT", "."), "grid_sweep.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
