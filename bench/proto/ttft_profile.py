"""Where a long prompt's time goes: SDPA against attnc's DuoAttention mix, layer for layer.

Uses bench/model.py's model (fewer layers: the per-layer costs are what differ) at one
length: the time to first token of each backend, a torch.profiler table of one pass, and
the attention alone (the generated prefill and the prompt's append against SDPA causal over
all 32 heads and over the 8 full heads), all on the same GPU in one run.

    python bench/model.py generate                                   # here
    python3 bench/proto/ttft_profile.py [--layers 4] [--n 131072] [--names sdpa,duo] [--alone]   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import model as M  # noqa: E402  (bench/model.py)


def _events(fn, reps: int = 3) -> float:
    """Median milliseconds of fn by CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def attention_alone(mods, c, n: int, dev, dtype) -> dict:
    """One layer's attention at n tokens: attnc duo's prefill, its prompt append, SDPA."""
    q = torch.randn(1, c.heads, n, c.head_dim, device=dev, dtype=dtype)
    k = torch.randn(1, c.kv_heads, n, c.head_dim, device=dev, dtype=dtype)
    v = torch.randn_like(k)
    mod = mods["duo"]
    out = {"duo_prefill_ms": _events(lambda: mod.prefill(q, k, v))}
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # the model's layout: (B, T, H, D) viewed
    kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
    out["duo_prefill_strided_q_ms"] = _events(lambda: mod.prefill(qt, k, v))
    out["duo_prefill_strided_qkv_ms"] = _events(lambda: mod.prefill(qt, kt, vt))
    out["duo_prefill_strided_qkv_copied_ms"] = _events(
        lambda: mod.prefill(qt.contiguous(), kt.contiguous(), vt.contiguous())
    )
    out["sdpa_causal_8_strided_ms"] = _events(
        lambda: F.scaled_dot_product_attention(qt[:, :8], kt[:, :2], vt[:, :2], is_causal=True, enable_gqa=True)
    )
    times = []
    for _ in range(3):
        cache = mod.Cache(1, device=dev, dtype=dtype, max_len=n + 16)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        cache.append(0, k, v, q)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
        del cache
    out["duo_append_ms"] = sorted(times)[1]
    out["sdpa_causal_32_ms"] = _events(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    q8 = q[:, :8].contiguous()
    out["sdpa_causal_8_ms"] = _events(
        lambda: F.scaled_dot_product_attention(q8, k[:, :2], v[:, :2], is_causal=True, enable_gqa=True)
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--n", type=int, default=131072)
    ap.add_argument("--names", default="sdpa,duo", help="backends of bench/model.py to profile")
    ap.add_argument("--alone", action="store_true", help="also time duo's attention alone")
    ap.add_argument("--no-profile", action="store_true", help="time to first token only")
    args = ap.parse_args()
    names = args.names.split(",")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    c = replace(M.LLAMA_8B, layers=args.layers)
    mods = M.load_modules("8b", sorted({n.split("+")[0] for n in names if n != "sdpa"} | {"duo"}))
    model = M.random_model(c, dev, dtype)
    res = {"device": torch.cuda.get_device_name(), "layers": c.layers, "n": args.n}
    if args.alone:
        res["attention"] = attention_alone(mods, c, args.n, dev, dtype)
        print(json.dumps(res["attention"], indent=1), flush=True)
    for name in names:
        M.ttft(model, name, mods, c, 1024, dev, dtype)
        res[f"{name}_ttft_s"] = M.ttft(model, name, mods, c, args.n, dev, dtype)["s"]
        print(name, "ttft", res[f"{name}_ttft_s"], flush=True)
        if not args.no_profile:
            res[f"{name}_profile"] = M.profile_ttft(model, name, mods, c, args.n, dev, dtype, top=15)
            print(res[f"{name}_profile"], flush=True)
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ttft_profile_{args.n}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
