"""Check and tune the prototype prefill kernel on a GPU (H100).

    python bench/proto/tune.py --set explore        # wide sweep
    python bench/proto/tune.py --set final          # winners + baselines, repeated

1. correctness on the GPU against a float32 torch reference (dense mask + softmax) on fresh
   random inputs, outputs poisoned with NaN first: every candidate config (bf16, N=2000),
   plus the default configs on fp16 / fp32 / D=64 / GQA / odd N / LSE, plus the chosen
   configs at N=32768 on two heads against a chunked reference;
2. times (triton.testing.do_bench, median) each candidate, FlexAttention (torch.compile'd,
   block mask from the same mask_mod built once outside the timing) and SDPA causal;
3. prints a compact table last (and writes JSON to $OUT if set).

Effective TFLOP/s counts allowed pairs only: 4 * D * pairs * B * H / t.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prefill_kernel as pk  # noqa: E402
from prefill_kernel import Config as C  # noqa: E402

B, H, D = 1, 32, 128
DT = torch.bfloat16

CASES = {
    "sw1024@32k": dict(N=32768, pat=dict(sink=4, window=1024)),
    "sw4096@32k": dict(N=32768, pat=dict(sink=4, window=4096)),
    "causal@8k": dict(N=8192, pat=dict()),
    "causal@32k": dict(N=32768, pat=dict()),
    # head_dim 64 (information only, default config)
    "sw1024@32k-d64": dict(N=32768, pat=dict(sink=4, window=1024), D=64),
    "causal@8k-d64": dict(N=8192, pat=dict(), D=64),
}
DEFAULT_CASES = "sw1024@32k,sw4096@32k,causal@8k,causal@32k"


def fam(case):
    return "causal" if not CASES[case]["pat"] else "window"


BASE = C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2)
SETS = {
    "explore": {
        "window": [
            BASE,
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2),
            C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2),
            C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, STAGES=4, EDGE_STAGES=2),
            C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, EDGE_STAGES=2),
            C(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, STAGES=2, EDGE_STAGES=2),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, USE_TMA=False),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, LAZY=True),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=1),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=1),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, BLOCK_N_SINK=128),
        ],
        "causal": [
            BASE,
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2),
            C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2),
            C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, STAGES=4, EDGE_STAGES=2),
            C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, EDGE_STAGES=2),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, USE_TMA=False),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, LAZY=True),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=1),
            C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2),
            C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2),
        ],
        # (BLOCK_M, BLOCK_N, num_warps, STAGES, WS) for the single-loop WS probe
        "ws_probe": [(128, 128, 8, 3, False), (128, 128, 4, 2, True), (128, 64, 4, 2, True),
                     (128, 64, 4, 3, True), (128, 64, 8, 3, False)],
    },
}
HT = dict(USE_TMA=2)
SETS["round2"] = {
    "window": [
        BASE,
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, EDGE_MERGE=True, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, EDGE_MERGE=True, USE_TMA=0),
        C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, EDGE_STAGES=2, **HT),
        C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, EDGE_STAGES=2, EDGE_MERGE=True, **HT),
        C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, EDGE_STAGES=2, USE_TMA=0),
        C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, STAGES=2, EDGE_STAGES=2, EDGE_MERGE=True, **HT),
        C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2, maxnreg=128, **HT),
        C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2, EDGE_MERGE=True,
          maxnreg=128, **HT),
        C(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2, STAGES=2, EDGE_STAGES=1, EDGE_MERGE=True, **HT),
    ],
    "causal": [
        BASE,
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2, USE_TMA=0),
        C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, STAGES=4, EDGE_STAGES=2, GRID_ORDER=2, **HT),
        C(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2, GRID_ORDER=2,
          maxnreg=128, **HT),
        C(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=1, GRID_ORDER=2, **HT),
    ],
    "ws_probe": [],
}
R2 = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2, maxnreg=128)
SETS["round3"] = {
    "window": [
        C(**R2, **HT),
        C(**R2, EDGE_MERGE=True, **HT),
        C(**{**R2, "EDGE_STAGES": 1}, **HT),
        C(**{**R2, "EDGE_STAGES": 1}, EDGE_MERGE=True, **HT),
        C(**R2, LAZY=True, **HT),
        C(**{**R2, "BLOCK_N": 32, "num_stages": 3, "STAGES": 3}, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, **HT),
    ],
    "causal": [
        C(**R2, GRID_ORDER=2, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2, **HT),
        C(**R2, GRID_ORDER=3, HEAD_GROUP=4, **HT),
        C(**R2, GRID_ORDER=3, HEAD_GROUP=8, **HT),
        C(**R2, GRID_ORDER=1, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=3,
          HEAD_GROUP=4, **HT),
        C(**{**R2, "EDGE_STAGES": 1}, GRID_ORDER=2, **HT),
    ],
    "ws_probe": [],
}
SETS["round4"] = {
    "window": [
        C(**R2, MASK_IMPL=0, **HT),
        C(**R2, **HT),
        C(**R2, EDGE_MERGE=True, **HT),
        C(**{**R2, "EDGE_STAGES": 1}, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, **HT),
    ],
    "causal": [
        C(**R2, GRID_ORDER=2, MASK_IMPL=0, **HT),
        C(**R2, GRID_ORDER=2, **HT),
        C(**R2, GRID_ORDER=3, HEAD_GROUP=8, **HT),
        C(**R2, GRID_ORDER=3, HEAD_GROUP=4, **HT),
        C(**R2, GRID_ORDER=3, HEAD_GROUP=2, **HT),
    ],
    "ws_probe": [],
}
SETS["confirm"] = {"window": [BASE], "causal": [BASE], "ws_probe": []}   # + defaults
SETS["final"] = {
    "window": [
        C(**R2, **HT),
        C(**R2, SINK_PREFETCH=True, **HT),
        C(**R2, EDGE_MERGE=True, **HT),
        C(**R2, EDGE_MERGE=True, SINK_PREFETCH=True, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, **HT),
        BASE,
    ],
    "causal": [
        C(**R2, GRID_ORDER=2, **HT),
        C(**R2, GRID_ORDER=3, HEAD_GROUP=8, **HT),
        C(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, STAGES=3, EDGE_STAGES=2, GRID_ORDER=2, **HT),
        BASE,
    ],
    "ws_probe": [],
}



def log(*a):
    print(*a, flush=True)


def rand_inputs(N, h=H, h_kv=None, d=D, dtype=DT, b=B, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    h_kv = h if h_kv is None else h_kv
    mk = lambda hh: torch.randn(b, hh, N, d, device="cuda", dtype=dtype, generator=g)
    return mk(h), mk(h_kv), mk(h_kv)


def rel_err(o, ref):
    return ((o.float() - ref).norm() / ref.norm()).item()


def check_small(cfg, pat, *, N=2000, b=2, h=4, h_kv=4, d=128, dtype=DT, lse=False, seed=1):
    q, k, v = rand_inputs(N, h, h_kv, d, dtype, b, seed)
    o = torch.full_like(q, float("nan"))
    lse_t = torch.full((b, h, N), float("nan"), device="cuda") if lse else None
    res = pk.attention(q, k, v, **pat, config=cfg, out=o, return_lse=lse, lse_out=lse_t)
    mask = pk.pattern_mask(N, **pat, device="cuda")
    ref, ref_lse = pk.reference(q, k, v, mask)
    ok = bool(torch.isfinite(o).all())
    err = rel_err(o, ref) if ok else float("nan")
    maxabs = (o.float() - ref).abs().max().item() if ok else float("nan")
    tol_rel = 1e-2 if dtype != torch.float32 else 1e-5
    ok = ok and err < tol_rel and (dtype != torch.float32 or maxabs < 1e-4)
    if lse:
        fin = torch.isfinite(ref_lse)
        ok = ok and torch.equal(fin, torch.isfinite(lse_t))
        ok = ok and (lse_t[fin] - ref_lse[fin]).abs().max().item() < 1e-2
    return ok, err, maxabs


def check_big(cfg, pat, N, heads=2, chunk=2048):
    """Full-size run, reference on the first `heads` heads by query chunks."""
    q, k, v = rand_inputs(N, seed=7)
    o = torch.full_like(q, float("nan"))
    pk.attention(q, k, v, **pat, config=cfg, out=o)
    if not torch.isfinite(o).all():
        return False, float("nan")
    num = den = 0.0
    scale = 1.0 / math.sqrt(D)
    kk = torch.arange(N, device="cuda")[None, :]
    for hh in range(heads):
        kf, vf = k[0, hh].float(), v[0, hh].float()
        for s in range(0, N, chunk):
            qq = torch.arange(s, min(s + chunk, N), device="cuda")[:, None]
            d_ = qq - kk
            m = d_ >= pat.get("window_lo", 0)
            if pat.get("window") is not None:
                m &= d_ < pat["window"]
            if pat.get("sink", 0) > 0:
                m |= (kk < pat["sink"]) & (d_ >= 0)
            sc = (q[0, hh, s:s + chunk].float() @ kf.T) * scale
            sc = sc.masked_fill(~m, float("-inf"))
            ref = torch.softmax(sc, -1) @ vf
            num += (o[0, hh, s:s + chunk].float() - ref).norm().item() ** 2
            den += ref.norm().item() ** 2
    err = math.sqrt(num / den)
    return err < 1e-2, err


def bench(fn, warmup=25, rep=100):
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def flex_fn(q, k, v, pat, N):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    S = pat.get("sink", 0)
    W = pat.get("window")

    if W is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & ((kv_idx < S) | (q_idx - kv_idx < W))
    bm = create_block_mask(mask_mod, None, None, N, N, device="cuda")
    flex = torch.compile(flex_attention)
    return lambda: flex(q, k, v, block_mask=bm)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="explore")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds (median)")
    ap.add_argument("--rep-ms", type=int, default=100)
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    out_dir = os.environ.get("OUT")
    sets = SETS[args.set]
    cases = args.cases.split(",")
    t_start = time.time()
    log(f"torch {torch.__version__} triton {triton.__version__} {torch.cuda.get_device_name()}")
    pk._ensure_allocator()
    results = {"checks": [], "times": [], "big": []}
    bad = set()

    # ---------------- correctness (every candidate, bf16, N=2000 not a multiple of 128)
    if not args.skip_checks:
        for family, pat in (("window", dict(sink=4, window=1024)), ("causal", dict())):
            dflts = [pk.default_config(D, family == "causal", DT, N=n, window=w)
                     for n in (8192, 32768) for w in (1024, 4096)]
            for cfg in dict.fromkeys(list(sets[family]) + dflts):
                try:
                    ok, err, _ = check_small(cfg, pat)
                except Exception as e:  # compile / launch failure: record and skip
                    ok, err = False, float("nan")
                    log(f"  {cfg.name()} {family}: {type(e).__name__}: {str(e)[:300]}")
                results["checks"].append((family, cfg.name(), "bf16 N2000", ok, err))
                if not ok:
                    bad.add((family, cfg.name()))
                log(f"check {family:6s} {cfg.name():36s} bf16 N=2000 rel={err:.2e} {'ok' if ok else 'FAIL'}")
        # the default configs across dtypes / head dims / GQA / odd N / LSE
        extra = [
            ("window", dict(sink=4, window=1024), dict(dtype=torch.float16)),
            ("window", dict(sink=4, window=37), dict(dtype=torch.float32, N=1999, d=64)),
            ("causal", dict(), dict(dtype=torch.float32, N=333)),
            ("window", dict(sink=4, window=1024), dict(h=8, h_kv=2, N=1999, lse=True)),
            ("causal", dict(), dict(h=8, h_kv=2, N=1999, d=64, lse=True)),
            ("window", dict(window=37, window_lo=5), dict(N=777, lse=True)),
        ]
        for family, pat, kw in extra:
            dtype = kw.get("dtype", DT)
            cfg = pk.default_config(kw.get("d", 128), family == "causal", dtype, N=kw.get("N", 2000),
                                    window=pat.get("window"))
            try:
                ok, err, mx = check_small(cfg, pat, **kw)
            except Exception as e:
                ok, err, mx = False, float("nan"), float("nan")
                log(f"  {type(e).__name__}: {str(e)[:300]}")
            desc = ",".join(f"{a}={b}" for a, b in kw.items()).replace("torch.", "")
            results["checks"].append((family, cfg.name(), desc, ok, err))
            log(f"check {family:6s} {cfg.name():36s} {desc} {pat} rel={err:.2e} maxabs={mx:.1e} "
                f"{'ok' if ok else 'FAIL'}")

    # ---------------- timing: every variant of a case, interleaved over rounds, median
    rows = []
    for case in cases:
        N, pat, d = CASES[case]["N"], CASES[case]["pat"], CASES[case].get("D", D)
        pairs = pk.allowed_pairs(N, **pat)
        flops = 4 * d * pairs * B * H
        q, k, v = rand_inputs(N, d=d, seed=3)
        o = torch.empty_like(q)
        fns = []
        try:
            fns.append(("FlexAttention", flex_fn(q, k, v, pat, N)))
        except Exception as e:
            log(f"flex failed: {e}")
        if not pat:
            fns.append(("SDPA causal", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        cfgs = list(sets[fam(case)]) if d == D else []
        dflt = pk.default_config(d, not pat, DT, N=N, window=pat.get("window"))
        if dflt not in cfgs:
            cfgs.append(dflt)
        for cfg in cfgs:
            if (fam(case), cfg.name()) in bad:
                continue
            name = cfg.name() + (" [default]" if cfg == dflt else "")
            fns.append((name, (lambda cfg=cfg: pk.attention(q, k, v, **pat, config=cfg, out=o))))
        if fam(case) == "causal" and sets.get("ws_probe") and d == D:
            from ws_probe import run_probe
            for a in sets["ws_probe"]:
                fns.append((f"probe M{a[0]}N{a[1]}w{a[2]}s{a[3]}{'-ws' if a[4] else ''}",
                            (lambda a=a: run_probe(q, k, v, o, BLOCK_M=a[0], BLOCK_N=a[1],
                                                   num_warps=a[2], STAGES=a[3], WS=a[4]))))
        ok_fns = []
        for name, fn in fns:        # compile + warm up
            try:
                fn()
                torch.cuda.synchronize()
                ok_fns.append((name, fn))
            except Exception as e:
                log(f"  {case} {name}: {type(e).__name__}: {str(e)[:300]}")
        times = {name: [] for name, _ in ok_fns}
        for _ in range(args.rounds):
            for name, fn in ok_fns:
                times[name].append(bench(fn, warmup=10, rep=args.rep_ms))
        ref_t = {}
        for name, _ in ok_fns:
            ts = sorted(times[name])
            t = ts[len(ts) // 2]
            if name == "FlexAttention":
                ref_t["flex"] = t
            if name == "SDPA causal":
                ref_t["sdpa"] = t
            rows.append((case, name, t, flops / t / 1e9, ts[0], ts[-1]))
            log(f"  {case:14s} {name:44s} med {t:7.3f} ms [{ts[0]:.3f}..{ts[-1]:.3f}] "
                f"{flops / t / 1e9:6.1f} TF")
        results["ref"] = results.get("ref", {})
        results["ref"][case] = ref_t
        # chosen configs at full size against a chunked reference (first of the set, default)
        if d == D:
            for cfg in dict.fromkeys([sets[fam(case)][0], dflt]):
                ok, err = check_big(cfg, pat, N)
                results["big"].append((case, cfg.name(), ok, err))
                log(f"big check {case} {cfg.name()} rel={err:.2e} {'ok' if ok else 'FAIL'}")
        del q, k, v, o
        torch.cuda.empty_cache()
    results["times"] = rows

    # ---------------- table
    log(f"\n# total {time.time() - t_start:.0f}s; checks failed: "
        f"{[c for c in results['checks'] if not c[3]] + [b for b in results['big'] if not b[2]]}")
    log(f"{'case':14s} {'variant':44s} {'ms(med)':>8s} {'min':>7s} {'max':>7s} {'TF/s':>6s} "
        f"{'t/flex':>6s} {'TF/sdpaTF':>9s}")
    for case, name, t, tf, tmin, tmax in rows:
        r = results["ref"][case]
        xf = t / r["flex"] if "flex" in r else float("nan")
        xs = r["sdpa"] / t if "sdpa" in r else float("nan")
        log(f"{case:14s} {name:44s} {t:8.3f} {tmin:7.3f} {tmax:7.3f} {tf:6.1f} {xf:6.3f} {xs:9.3f}")
    if out_dir:
        with open(os.path.join(out_dir, f"tune_{args.set}.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
