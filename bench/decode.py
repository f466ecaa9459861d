"""Decode benchmark: the generated cache + decode kernel against SDPA and FlexAttention.

B=8, 32 query heads, 8 KV heads, D=128, bf16, contexts 32768 and 131072:
  - SDPA over the full cache (the 4 query heads of a KV head as 4 query rows, and
    enable_gqa), FlexAttention decoding (a block mask over the full cache, q length 1);
  - the generated decode for StreamingLLM (sink 4 + 4092 recent) and for a DuoAttention mix
    (a quarter of the KV heads full, the rest sink 64 + recent 960) in one launch;
  - one cache update step (the append of one token), and, for information, one step of an
    H2O cache (append + scoring + eviction) with a budget of 4096.
Bandwidth = bytes the method must read (K and V it attends over, q, out) / time.

Two steps, so that the GPU machine needs neither lark nor pydantic:
    python bench/decode.py generate          # here: render the modules into bench/generated/
    python bench/decode.py run [--sweep]     # there: import them, check, time, print a table
`run` writes every number to $OUT/decode_bench.json when OUT is set (else ./decode_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from timing import graph_time

HERE = Path(__file__).resolve().parent
GEN = HERE / "generated"
B, H, HK, D = 8, 32, 8, 128
CONTEXTS = (32768, 131072)
MODULES = ("decode_streaming", "decode_duo", "decode_h2o")


# ------------------------------------------------------------------ generate (here)


def programs():
    """The three benchmark programs, built from resolved syntax (no .attn files needed)."""
    from attnc.codegen.decode_plan import plan_decode  # noqa: F401  (import check)
    from attnc.compiler.ir import HeadGroup, ModelShape, Program
    from attnc.compiler.lower import lower_expr
    from attnc.spec.ast import Loc
    from attnc.spec.resolved import CachePolicy, REvict, RBudget, ROp, RPrim

    loc = Loc(file="bench/decode.py", line=1, col=1)

    def p(name, **args):
        return RPrim(name=name, args=args, loc=loc)

    def o(sym, a, b):
        return ROp(op=sym, left=a, right=b, loc=loc)

    model = ModelShape(1, H, HK, D)
    streaming = lower_expr(o("&", p("causal"), o("|", p("sink", size=4), p("window", size=4092))))
    duo_stream = lower_expr(o("&", p("causal"), o("|", p("sink", size=64), p("window", size=960))))
    causal = lower_expr(p("causal"))
    full_heads = H // 4  # a quarter of the KV heads: their query heads
    h2o = CachePolicy(
        budget=RBudget(kind="tokens", tokens=4096),
        sink=4,
        recent=64,
        evict=REvict(score="h2o", options={}, timing="decode"),
        loc=loc,
    )
    return {
        "decode_streaming": Program(
            "streaming_llm", "bench", model, (HeadGroup(streaming, frozenset((0, h) for h in range(H))),)
        ),
        "decode_duo": Program(
            "duo_attention",
            "bench",
            model,
            (
                HeadGroup(causal, frozenset((0, h) for h in range(full_heads))),
                HeadGroup(duo_stream, frozenset((0, h) for h in range(full_heads, H))),
            ),
        ),
        "decode_h2o": Program(
            "h2o", "bench", model, (HeadGroup(causal, frozenset((0, h) for h in range(H))),), cache=(h2o,)
        ),
    }


def generate(out: Path = GEN) -> None:
    from attnc.codegen.decode_plan import plan_decode
    from attnc.codegen.writer import write_decode_module

    for name, prog in programs().items():
        path = write_decode_module(plan_decode(prog), out / f"{name}.py")
        print(f"wrote {path}")


# ------------------------------------------------------------------ run (GPU machine)


def _import(name):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from codegen.importing import import_module_from_path  # the standard library only: no attnc needed

    return import_module_from_path(GEN / f"{name}.py", name)


def _bench(fn, torch, triton):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3  # seconds


def _graph_time(fn, torch, reps=20, replays=20):
    """Seconds per call of fn, from CUDA-graph replays of `reps` calls (no launch overhead)."""
    return graph_time(fn, torch, reps, replays)


def _eager_time(fn, torch, calls=100):
    """Seconds per call of fn in a plain loop (launch overhead included)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls


def _fill(mod, N, torch, chunk=16384, max_len=None):
    cache = mod.Cache(B, device="cuda", dtype=torch.bfloat16, max_len=max_len)
    g = torch.Generator(device="cuda").manual_seed(N)
    for t in range(0, N, chunk):
        T = min(chunk, N - t)
        k = torch.randn(B, HK, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(B, HK, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
        q = (
            torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
            if mod.__name__ == "decode_h2o"
            else None
        )
        cache.append(0, k, v, q)
    return cache


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def run(args) -> dict:
    import torch
    import triton
    import torch.nn.functional as F

    out_dir = Path(os.environ.get("OUT", "."))
    torch.manual_seed(0)
    res = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cases": {},
        "sweep": {},
    }
    mods = {n: _import(n) for n in MODULES}
    rows = []
    best_cfg = {}
    t_start = time.time()
    out_json = out_dir / "decode_bench.json"
    contexts = CONTEXTS if not args.quick else (8192,)
    for N in contexts:
        q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
        full_bytes = 2 * B * HK * N * D * 2 + 2 * q.numel() * 2
        # ---------------- SDPA over the full cache
        k = torch.randn(B, HK, N, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        q4 = q.view(B, HK, H // HK, D)
        t_sdpa = _bench(lambda: F.scaled_dot_product_attention(q4, k, v), torch, triton)
        try:
            t_gqa = _bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), torch, triton)
        except Exception as e:  # noqa: BLE001
            t_gqa = None
            res.setdefault("errors", []).append(f"sdpa enable_gqa: {e!r}")
        res["cases"][f"sdpa_{N}"] = {"s": t_sdpa, "s_enable_gqa": t_gqa, "bytes": full_bytes}
        print(f"SDPA N={N}: {t_sdpa * 1e6:.1f} us, enable_gqa {t_gqa and t_gqa * 1e6}", flush=True)
        rows.append(("SDPA full cache (4 q rows per KV head)", N, t_sdpa, full_bytes))
        if t_gqa:
            rows.append(("SDPA full cache (enable_gqa)", N, t_gqa, full_bytes))
        # ---------------- FlexAttention decoding
        if not args.no_flex and time.time() - t_start < args.budget * 0.5:
            try:
                from torch.nn.attention.flex_attention import create_block_mask, flex_attention

                def last_row(b, h, q_idx, kv_idx):
                    return kv_idx <= q_idx + (N - 1)

                bm = create_block_mask(last_row, None, None, 1, N, device="cuda")
                flex = torch.compile(flex_attention, dynamic=False)
                o_flex = flex(q, k, v, block_mask=bm, enable_gqa=True)
                ref = F.scaled_dot_product_attention(q4, k, v).view(B, H, 1, D)
                t_flex = _bench(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True), torch, triton)
                res["cases"][f"flex_{N}"] = {"s": t_flex, "bytes": full_bytes, "rel_err_vs_sdpa": _rel(o_flex, ref)}
                rows.append(("FlexAttention decode (block mask, q len 1)", N, t_flex, full_bytes))
                print(f"flex N={N}: {t_flex * 1e6:.1f} us", flush=True)
            except Exception as e:  # noqa: BLE001
                res.setdefault("errors", []).append(f"flex {N}: {e!r}")
        del k, v
        torch.cuda.empty_cache()
        # ---------------- generated decode
        for name, label in (
            ("decode_streaming", "attnc StreamingLLM (sink 4 + 4092)"),
            ("decode_duo", "attnc DuoAttention mix (2 full + 6 x 1024)"),
        ):
            mod = mods[name]
            cache = _fill(mod, N, torch, max_len=N + 4096)
            view = cache.view(0)
            nbytes = sum(n for _, n in view.slots) * B * D * 2 * 2 + 2 * q.numel() * 2
            o = cache.decode(0, q)
            ref = mod.decode_reference(q, view)
            err = _rel(o, ref)
            err = max(err, _rel(cache.decode(0, q, config=mod.DecodeConfig(fused_reduce=False)), ref))
            cfg = best_cfg.get(name, mod.DecodeConfig())
            if (
                args.sweep
                and (name, N)
                in (("decode_streaming", CONTEXTS[0]), ("decode_duo", CONTEXTS[0]), ("decode_duo", CONTEXTS[-1]))
                and time.time() - t_start < args.budget * 0.6
            ):
                cfg = best_cfg[name] = _sweep(mod, cache, q, res, f"{name}_{N}", nbytes, torch, triton)
                o = cache.decode(0, q, config=cfg)
                err = max(err, _rel(o, ref))
            t_dec = _bench(lambda: cache.decode(0, q, config=cfg), torch, triton)
            t_dec_graph = _graph_time(lambda: cache.decode(0, q, config=cfg), torch)
            t_default = _graph_time(lambda: cache.decode(0, q), torch) if cfg != mod.DecodeConfig() else t_dec_graph
            k1 = torch.randn(B, HK, 1, D, device="cuda", dtype=torch.bfloat16)
            t_upd_eager = _eager_time(lambda: cache.append(0, k1, k1), torch)
            t_upd_graph = _graph_time(lambda: cache.append(0, k1, k1), torch, reps=20, replays=10)
            t_step_graph = _graph_time(
                lambda: (cache.append(0, k1, k1), cache.decode(0, q, config=cfg)), torch, reps=10, replays=10
            )
            t_step_eager = _eager_time(lambda: (cache.append(0, k1, k1), cache.decode(0, q, config=cfg)), torch)
            res["cases"][f"{name}_{N}"] = {
                "s": t_dec,
                "s_graph": t_dec_graph,
                "s_graph_default_config": t_default,
                "bytes": nbytes,
                "rel_err": err,
                "config": cfg._asdict(),
                "split": mod.decode_split(view, B, cfg),
                "update_s_eager": t_upd_eager,
                "update_s_graph": t_upd_graph,
                "step_s_graph": t_step_graph,
                "step_s_eager": t_step_eager,
                "slots": view.slots,
            }
            rows.append((label + " [graph, default config]", N, t_default, nbytes))
            rows.append(("  append + decode step [graph]", N, t_step_graph, None))
            rows.append(("  append + decode step [eager]", N, t_step_eager, None))
            rows.append((label, N, t_dec, nbytes))
            rows.append((label + " [graph]", N, t_dec_graph, nbytes))
            rows.append(("  one cache update (append 1 token) [graph]", N, t_upd_graph, None))
            rows.append(("  one cache update (append 1 token) [eager]", N, t_upd_eager, None))
            print(
                f"{label} N={N}: {t_dec * 1e6:.1f} us ({nbytes / t_dec / 1e12:.2f} TB/s), graph "
                f"{t_dec_graph * 1e6:.1f} us, update {t_upd_graph * 1e6:.1f} us graph / {t_upd_eager * 1e6:.1f} "
                f"us eager, rel err {err:.2e}",
                flush=True,
            )
            out_json.write_text(json.dumps(res, indent=1, default=str))
            del cache, view
            torch.cuda.empty_cache()
    # ---------------- H2O (lossy) update, for information
    if time.time() - t_start > args.budget:
        _table(rows, res)
        return res
    mod = mods["decode_h2o"]
    cache = _fill(mod, 8192, torch)
    q1 = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
    k1 = torch.randn(B, HK, 1, D, device="cuda", dtype=torch.bfloat16)
    view = cache.view(0)
    nbytes = sum(n for _, n in view.slots) * B * D * 2 * 2
    t_dec = _bench(lambda: cache.decode(0, q1), torch, triton)
    t_dec_graph = _graph_time(lambda: cache.decode(0, q1), torch)
    t_upd = _eager_time(lambda: cache.append(0, k1, k1, q1), torch, calls=30)
    t_upd_graph = None
    try:
        t_upd_graph = _graph_time(lambda: cache.append(0, k1, k1, q1), torch, reps=5, replays=5)
    except Exception as e:  # noqa: BLE001
        res.setdefault("errors", []).append(f"h2o graph: {e!r}")
    res["cases"]["h2o_4096"] = {
        "s": t_dec,
        "s_graph": t_dec_graph,
        "bytes": nbytes,
        "update_s_eager": t_upd,
        "update_s_graph": t_upd_graph,
    }
    rows.append(("attnc H2O budget 4096 decode [graph]", 8192, t_dec_graph, nbytes))
    if t_upd_graph:
        rows.append(("  H2O update (append + score + evict) [graph]", 8192, t_upd_graph, None))
    rows.append(("attnc H2O budget 4096 decode", 8192, t_dec, nbytes))
    rows.append(("  H2O update (append + score + evict) [eager]", 8192, t_upd, None))
    _table(rows, res)
    out_json.write_text(json.dumps(res, indent=1, default=str))
    return res


SWEEP_TILES = (
    (32, 2, 4),
    (32, 4, 2),
    (32, 4, 3),
    (32, 4, 4),
    (64, 2, 3),
    (64, 4, 2),
    (64, 4, 3),
    (64, 4, 4),
    (64, 8, 2),
    (128, 4, 2),
    (128, 8, 2),
    (128, 8, 3),
)


def _sweep(mod, cache, q, res, key, nbytes, torch, triton):
    """Time decode configurations from CUDA-graph replays (GPU time, no launch overhead);
    returns the fastest. Stage 1: tiles (block_n, warps, stages); stage 2: the split target
    and the reduction for the best tile."""
    C = mod.DecodeConfig
    out = []
    best = None

    def one(cfg):
        nonlocal best
        try:
            t = _graph_time(lambda: cache.decode(0, q, config=cfg), torch, reps=10, replays=10)
        except Exception as e:  # noqa: BLE001
            out.append((cfg._asdict(), repr(e)[:300]))
            return
        out.append((cfg._asdict(), t))
        if best is None or t < best[1]:
            best = (cfg, t)

    for bn, w, st in SWEEP_TILES:
        one(C(block_n=bn, num_warps=w, stages=st))
    base = best[0]
    for pps in (1, 2, 4, 8, 16):
        for fused in (True, False):
            cfg = base._replace(programs_per_sm=pps, fused_reduce=fused)
            if cfg != base:
                one(cfg)
    res["sweep"][key] = {
        "results": out,
        "best": best[0]._asdict(),
        "best_s": best[1],
        "best_tb_s": nbytes / best[1] / 1e12,
    }
    print(
        f"sweep {key}: best {best[0]} {best[1] * 1e6:.1f} us = {nbytes / best[1] / 1e12:.2f} TB/s (graph)", flush=True
    )
    return best[0]


def _table(rows, res):
    print(f"\n{'method':56s} {'N':>7s} {'time us':>9s} {'GB read':>8s} {'TB/s':>6s}")
    for label, N, t, nbytes in rows:
        bw = f"{nbytes / t / 1e12:6.2f}" if nbytes and t else "     -"
        gb = f"{nbytes / 1e9:8.3f}" if nbytes else "       -"
        print(f"{label:56s} {N:7d} {t * 1e6:9.1f} {gb} {bw}")
    c = res["cases"]
    for N in CONTEXTS:
        if f"decode_duo_{N}" in c:
            sd = min(x for x in (c[f"sdpa_{N}"]["s"], c[f"sdpa_{N}"]["s_enable_gqa"]) if x)
            duo = c[f"decode_duo_{N}"]["s"]
            st = c[f"decode_streaming_{N}"]
            du = c[f"decode_duo_{N}"]
            print(
                f"N={N}: duo speedup vs best SDPA {sd / duo:.2f}x (eager), {sd / du['s_graph']:.2f}x (graph); "
                f"update/decode (graph): streaming {st['update_s_graph'] / st['s_graph']:.1%}, duo "
                f"{du['update_s_graph'] / du['s_graph']:.1%}; (step - decode)/decode (graph): streaming "
                f"{(st['step_s_graph'] - st['s_graph']) / st['s_graph']:.1%}, duo "
                f"{(du['step_s_graph'] - du['s_graph']) / du['s_graph']:.1%}"
            )
    for e in res.get("errors", []):
        print("error:", e[:300])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("generate", "run"))
    ap.add_argument("--sweep", action="store_true", help="time decode configurations, use the best")
    ap.add_argument("--quick", action="store_true", help="one small context (a smoke test)")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile is slow)")
    ap.add_argument("--budget", type=float, default=360, help="seconds: skip optional parts past it")
    args = ap.parse_args(argv)
    if args.step == "generate":
        generate()
    else:
        run(args)


if __name__ == "__main__":
    main()
