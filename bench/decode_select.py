"""Decode with selection: the paged cache's Quest-like step against SDPA over the full cache,
and the update of score-every-step caches (H2O, TOVA) against a decode step.

B=8, 32 query heads, 8 KV heads, D=128, bf16, context 131072 (--smoke: tiny, on the CPU too):
  - SDPA over the full cache (enable_gqa=True);
  - the paged cache with `select quest(4096, page = 16)`: one step is three launches, timed
    together (eager and as a CUDA graph) and each alone: `score` (_pg_score_kernel: every
    page's bound from its min/max summaries), `topk` (_pg_topk_kernel: the 256 best pages,
    ties to the lowest, and the read lists), `attend` (the paged kernel over the chosen pages,
    split along them); first a sweep of the score kernel's tile and of a few attention
    configs (graph time), whose best the timed step uses;
  - bytes of each part: score: the summaries read and the scores written; topk: the scores;
    attend: the chosen pages' K, V and positions (the step: their sum); TB/s = bytes / time;
  - the paged kernel over every page (no selection), and SDPA, over the whole K and V;
  - H2O and TOVA (packed cache, budget 4096, sink 4, recent 64): one update (append of one
    token with its scoring and eviction: one generated Triton launch, and the torch path)
    against one decode step, eager, and the update's GPU time (graph);
  - the step (append of one token, then decode) of H2O and TOVA on the packed Cache and on the
    PagedCache (prompt 8192, budget 4096, page 16), beside a cache of the same budget that
    scores nothing (sink 4 + recent 4092: a ring; packed: its one-launch fused step), eager and
    graph, with the decode alone (the update: the difference); checked first (paged vs packed:
    the same positions kept, the outputs' relative error).
Correctness first, at a small size: the step against its torch reference (the selection
recomputed from the keys), and the paged full decode against SDPA.

Two steps, so that the GPU machine needs neither lark nor pydantic:
    python bench/decode_select.py generate [--base REV]  # here: render the modules into bench/generated/
    python bench/decode_select.py run [--smoke]          # there: import them, check, time, print
    python bench/decode_select.py run --step [--smoke]   # the Quest step alone, every variant
    python bench/decode_select.py run --evict [--smoke]  # the H2O / TOVA / no-score steps alone
`run` writes its numbers to $OUT/decode_select.json (OUT unset: ./out/decode_select.json).

`--step` times the Quest step of each variant it finds (each checked first against its torch
reference at 8192 tokens): `base` (bench/generated/base/, rendered by `generate --base REV`
from the code of git revision REV: the step before a change), `bf16` (summaries in the cache's
dtype), `fp8` (`select quest(4096, page = 16, bits = 8)`: float8 summaries rounded
outward) and `mean` (`select mean(4096, page = 16)`: pages scored by their mean key), each with its own sweep of the score tile and the attention config; then one table
(CUDA graph and eager µs, bytes read, TB/s, speedup over SDPA) and the parts of each step.
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
N = 131072
BUDGET, PAGE = 4096, 16
MODEL = f"model {{ layers = 1, heads = {H}, kv_heads = {HK}, head_dim = {D} }}\npattern p = causal\n"
TEXTS = {
    "select_quest": MODEL + f"cache {{ select quest({BUDGET}, page = {PAGE}) }}\n",
    "select_quest8": MODEL + f"cache {{ select quest({BUDGET}, page = {PAGE}, bits = 8) }}\n",
    "select_mean": MODEL + f"cache {{ select mean({BUDGET}, page = {PAGE}) }}\n",
    "select_full": MODEL,
    "evict_h2o": MODEL + f"cache {{ budget = {BUDGET} keep sink(4) keep recent(64) evict h2o }}\n",
    "evict_tova": MODEL + f"cache {{ budget = {BUDGET} keep sink(4) keep recent(64) evict tova }}\n",
    "evict_none": MODEL + f"cache {{ keep sink(4) keep recent({BUDGET - 4}) }}\n",
}


BASE = ("select_quest", "evict_h2o", "evict_tova", "evict_none")  # rendered from `--base REV` too


def generate(out: Path = GEN, names=tuple(TEXTS)) -> None:
    from attnc.codegen.decode_plan import plan_decode
    from attnc.codegen.writer import write_decode_module
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    for name in names:
        plan = plan_decode(lower(resolve_text(TEXTS[name], f"{name}.attn")))
        print(f"wrote {write_decode_module(plan, out / f'{name}.py')}")


def generate_base(rev: str) -> None:
    """Render the Quest and H2O / TOVA / no-score modules into bench/generated/base/ with the code of git revision `rev`
    (its attnc packages extracted to a temporary folder and imported in a subprocess)."""
    import subprocess
    import tempfile

    root = HERE.parent
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "attnc"
        pkg.mkdir()
        for src, dst in (("attnc", pkg), ("spec", pkg / "spec"), ("compiler", pkg / "compiler"),
                         ("codegen", pkg / "codegen"), ("runtime", pkg / "runtime")):  # fmt: skip
            dst.mkdir(exist_ok=True)
            tar = subprocess.run(["git", "-C", str(root), "archive", rev, src], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(dst)], input=tar, check=True)
        code = (f"import sys; sys.path.insert(0, {tmp!r}); sys.path.insert(0, {str(HERE)!r}); import attnc, decode_select; "
                f"assert attnc.__file__.startswith({tmp!r}), attnc.__file__; "
                f"decode_select.generate(decode_select.GEN / 'base', {list(BASE)!r})")  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp)


# ------------------------------------------------------------------ run (GPU machine)


def _import(name, folder=GEN):
    sys.path.insert(0, str(HERE.parent))
    from codegen.importing import import_module_from_path  # the standard library only: no attnc needed

    return import_module_from_path(folder / f"{name}.py", f"{folder.name}_{name}")


def _sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


CALLS = [50]  # timed calls per measurement (--smoke: 1)


def _eager(fn, torch):
    """Seconds per call in a plain loop (launch overhead and host work included)."""
    calls = CALLS[0]
    for _ in range(min(3, calls)):
        fn()
    _sync(torch)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(torch)
    return (time.perf_counter() - t0) / calls


def _graph(fn, torch, reps=10, replays=20):
    """Seconds per call from CUDA-graph replays (GPU time, no launch overhead); eager on the CPU
    and where the step cannot be captured (said on stdout)."""
    if not torch.cuda.is_available() or CALLS[0] == 1:
        return _eager(fn, torch)
    try:
        return graph_time(fn, torch, reps, replays)
    except RuntimeError as exc:
        print(f"CUDA graph capture failed ({str(exc)[:120]}); eager timing instead", flush=True)
        torch.cuda.synchronize()
        return _eager(fn, torch)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _fill(caches, n, batch, dev, torch, dense=False, chunk=16384):
    """Append n random tokens to every cache (and return dense K, V when asked)."""
    g = torch.Generator(device=dev).manual_seed(n)
    kd = torch.empty((batch, HK, n, D), device=dev, dtype=torch.bfloat16) if dense else None
    vd = torch.empty_like(kd) if dense else None
    for t in range(0, n, chunk):
        T = min(chunk, n - t)
        k = torch.randn(batch, HK, T, D, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(batch, HK, T, D, device=dev, dtype=torch.bfloat16, generator=g)
        for c in caches:
            c.append(0, k, v)
        if dense:
            kd[:, :, t : t + T], vd[:, :, t : t + T] = k, v
    return kd, vd


def _check(quest, full, res, dev, torch, n, batch):
    """Small size: the step against its reference, the paged full decode against SDPA."""
    F = torch.nn.functional
    qc, fc = (
        quest.PagedCache(batch, device=dev, dtype=torch.bfloat16),
        full.PagedCache(batch, device=dev, dtype=torch.bfloat16),
    )
    kd, vd = _fill([qc, fc], n, batch, dev, torch, dense=True, chunk=1024)
    q = torch.randn(batch, H, 1, D, device=dev, dtype=torch.bfloat16)
    got = qc.decode(0, q)
    chosen = qc.selected(0)
    want = qc.decode_reference(0, q)
    same = sum(int((chosen[h] == qc.selected(0)[h]).sum()) for h in chosen) / sum(x.numel() for x in chosen.values())
    sdpa = F.scaled_dot_product_attention(q, kd, vd, enable_gqa=True)
    res["check"] = {
        "context": n,
        "select_rel_err_vs_reference": _rel(got, want),
        "select_same_pages_as_reference": same,
        "paged_full_rel_err_vs_sdpa": _rel(fc.decode(0, q), sdpa),
    }
    ok = res["check"]["paged_full_rel_err_vs_sdpa"] < 2e-2 and res["check"]["select_rel_err_vs_reference"] < 5e-2
    res["check"]["ok"] = ok
    print(f"check at {n} tokens: {res['check']}" + ("" if ok else "  <-- CHECK FAILED (timings follow anyway)"))


def _parts(qc, q, torch, scale):
    """The three launches of a step, each alone (after one decode, so their inputs are there)."""
    L = qc._layers[0]
    qc.decode(0, q)
    scores = qc._score(L, q, 0, *qc.score_tile)
    return {
        "score": lambda: qc._score(L, q, 0, *qc.score_tile),
        "topk": lambda: qc._top(L, scores, 1, 0),
        "attend": lambda: qc._attend(L, q, scale, CONFIG[0]),
        "step": lambda: qc.decode(0, q, config=CONFIG[0]),
    }


CONFIG = [None]  # the attention's DecodeConfig for the step (the sweep's best)


def _sweep(quest, qc, q, torch, scale, res):
    """Graph time of the score kernel's tiles and of a few attention configs; keeps the best."""
    L = qc._layers[0]
    tiles = {}
    for tile in ((64, 4), (128, 4), (128, 8), (32, 4)):
        tiles[f"{tile}"] = _graph(lambda: qc._score(L, q, 0, *tile), torch)
    best_tile = min(tiles, key=tiles.get)
    qc.score_tile = tuple(int(x) for x in best_tile.strip("()").split(","))
    configs = {}
    for bn, warps, stages, pps in ((64, 4, 2, 4), (64, 4, 1, 4), (64, 4, 3, 4), (64, 8, 2, 4), (64, 4, 2, 8),
                                   (32, 4, 2, 8), (128, 8, 2, 4), (64, 4, 2, 2), (64, 4, 2, 3)):  # fmt: skip
        cfg = quest.DecodeConfig(block_n=bn, num_warps=warps, stages=stages, programs_per_sm=pps)
        configs[f"block_n={bn} warps={warps} stages={stages} per_sm={pps}"] = (
            _graph(lambda: qc._attend(L, q, scale, cfg), torch),
            cfg,
        )
    best = min(configs, key=lambda k: configs[k][0])
    CONFIG[0] = configs[best][1]
    res["sweep"] = {
        "score_tile_s": tiles,
        "score_tile_best": best_tile,
        "attend_config_s": {k: t for k, (t, _) in configs.items()},
        "attend_config_best": best,
    }


def _select_bench(quest, full, res, dev, torch, n, batch, sweep=True):
    """The Quest-like step (graph and eager) and each of its launches alone, SDPA and the paged
    kernel over every page, at n tokens; bytes and TB/s of each."""
    F = torch.nn.functional
    qc = quest.PagedCache(batch, device=dev, dtype=torch.bfloat16, pages=batch * HK * (n // PAGE + 2))
    kd, vd = _fill([qc], n, batch, dev, torch, dense=True)
    q = torch.randn(batch, H, 1, D, device=dev, dtype=torch.bfloat16)
    scale = D**-0.5
    item = 2
    pages = -(-n // PAGE)
    heads = batch * HK
    read_tokens = heads * min(BUDGET + PAGE, n)  # the chosen pages and the newest (partial) one
    nbytes = {
        "score": heads * pages * D * 2 * item + heads * pages * 4,  # min, max; the scores written
        "topk": heads * pages * 4,
        "attend": read_tokens * (D * 2 * item + 4),  # K, V, positions
    }
    nbytes["step"] = sum(nbytes.values())
    read_full = heads * n * D * 2 * item
    t_sdpa = _graph(lambda: F.scaled_dot_product_attention(q, kd, vd, enable_gqa=True), torch)
    del kd, vd
    CONFIG[0] = quest.DecodeConfig()
    if sweep and torch.cuda.is_available():
        _sweep(quest, qc, q, torch, scale, res)
    parts = _parts(qc, q, torch, scale)
    r = res["select"] = {"context": n, "batch": batch, "sdpa_s": t_sdpa, "sdpa_TBps": read_full / t_sdpa / 1e12,
                         "score_tile": list(qc.score_tile), "attend_config": CONFIG[0]._asdict()}  # fmt: skip
    for name, fn in parts.items():
        g, e = _graph(fn, torch), _eager(fn, torch)
        r[f"{name}_graph_s"], r[f"{name}_eager_s"] = g, e
        r[f"{name}_bytes"] = nbytes[name]
        r[f"{name}_graph_TBps"] = nbytes[name] / g / 1e12
    r["step_eager_over_graph"] = r["step_eager_s"] / r["step_graph_s"]
    r["speedup_vs_sdpa_graph"] = t_sdpa / r["step_graph_s"]
    r["speedup_vs_sdpa_eager"] = t_sdpa / r["step_eager_s"]
    del qc, parts
    fc = full.PagedCache(batch, device=dev, dtype=torch.bfloat16, pages=batch * HK * (n // PAGE + 2))
    _fill([fc], n, batch, dev, torch)
    t_full = _graph(lambda: fc.decode(0, q, config=CONFIG[0]), torch)
    r.update({"paged_full_s": t_full, "paged_full_TBps": read_full / t_full / 1e12})
    del fc


def _evict_bench(mod, name, res, dev, torch, n, batch):
    """One update (append one token with q: score and evict) vs one decode step, eager: the
    update in one Triton launch (backend "triton") and the torch path (backend "torch")."""
    res[name] = {}
    g = torch.Generator(device=dev).manual_seed(1)
    r = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16, generator=g)  # noqa: E731
    k1, q1 = r(batch, HK, 1, D), r(batch, H, 1, D)
    for backend in ("triton", "torch"):
        cache = mod.Cache(batch, device=dev, dtype=torch.bfloat16, backend=backend)
        for t in range(0, n, 4096):
            T = min(4096, n - t)
            cache.append(0, r(batch, HK, T, D), r(batch, HK, T, D), r(batch, H, T, D))
        res[name][f"update_{backend}_eager_s"] = _eager(lambda: cache.append(0, k1, k1, q1), torch)
        if backend == "triton":
            res[name]["update_triton_graph_s"] = _graph(lambda: cache.append(0, k1, k1, q1), torch)
            res[name]["decode_eager_s"] = _eager(lambda: cache.decode(0, q1), torch)
            res[name]["decode_graph_s"] = _graph(lambda: cache.decode(0, q1), torch)
        del cache
    d = res[name]
    d["update_over_decode_eager"] = d["update_triton_eager_s"] / d["decode_eager_s"]
    d["torch_update_over_decode_eager"] = d["update_torch_eager_s"] / d["decode_eager_s"]
    d["update_over_decode_graph"] = d["update_triton_graph_s"] / d["decode_graph_s"]


def _prompt(caches, n, batch, dev, torch, queries):
    """The same n-token prompt (with its queries where a policy scores it) into every cache."""
    g = torch.Generator(device=dev).manual_seed(n)
    for t in range(0, n, 4096):
        T = min(4096, n - t)
        k, v = (torch.randn(batch, HK, T, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(2))
        q = torch.randn(batch, H, T, D, device=dev, dtype=torch.bfloat16, generator=g) if queries else None
        for c in caches:
            c.append(0, k, v, q) if queries else c.append(0, k, v)


def _kernel_us(step, torch, steps=20) -> dict:
    """{kernel: GPU microseconds per step} of `step` over `steps` eager steps (torch.profiler),
    and "all kernels" their sum; {} where the profiler records no GPU activity."""
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available() or CALLS[0] == 1:
        return {}
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    got = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
        if us > 0:
            got[e.key[:60]] = round(us / steps, 2)
    if got:
        got["all kernels"] = round(sum(got.values()), 2)
    return got


def _host_us(step, torch, steps=20) -> float:
    """Host microseconds per step: `steps` steps queued on an idle GPU without waiting (the
    queue holds them all), timed on the host alone."""
    step()
    _sync(torch)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    t1 = time.perf_counter()
    _sync(torch)
    return (t1 - t0) / steps * 1e6


def _final_state(c, step, batch) -> tuple:
    """(positions each (row, KV head) keeps, the output of one more step) of a cache."""
    out = step()
    out = out[1] if isinstance(out, tuple) else out
    return [sorted(c.kept(0, x, h)) for x in range(batch) for h in range(HK)], out


def _steps_bench(mods, res, dev, torch, n, batch, check_steps=3):
    """The step (append of one token, then decode) of H2O, TOVA and a cache of the same budget
    that scores nothing (sink 4 + recent 4092: a ring), on the packed Cache and the PagedCache,
    eager and graph; the decode alone too (the update is the difference), the paged H2O and
    TOVA decode without its logits, and each kernel's GPU time per step (profiler). First a
    check: the paged H2O and TOVA caches keep the packed ones' positions and decode alike.
    Modules named base_X (an earlier build, `--base`) run the same steps: after every timing,
    X and base_X must keep the same positions and decode alike."""
    g = torch.Generator(device=dev).manual_seed(2)
    r = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16, generator=g)  # noqa: E731
    k1, v1, q1 = r(batch, HK, 1, D), r(batch, HK, 1, D), r(batch, H, 1, D)
    out = res["steps"] = {"context": n, "batch": batch, "budget": BUDGET}
    final = {}
    for name, mod in mods.items():
        scored = not name.endswith("evict_none")
        pages = batch * HK * (-(-(BUDGET + 1) // PAGE) + (0 if scored else 2))
        packed = mod.Cache(batch, device=dev, dtype=torch.bfloat16)
        paged = mod.PagedCache(batch, device=dev, dtype=torch.bfloat16, pages=pages if scored else None)
        _prompt([packed, paged], n, batch, dev, torch, scored)
        if scored:
            packed_step = lambda c=packed: (c.append(0, k1, v1, q1), c.decode(0, q1))  # noqa: E731
            paged_step = lambda c=paged: (c.append(0, k1, v1, q1), c.decode(0, q1))  # noqa: E731
            for _ in range(check_steps):  # past the budget, every step evicts
                a, b = packed_step()[1], paged_step()[1]
            pairs = [(set(packed.kept(0, x, h)), set(paged.kept(0, x, h))) for x in range(batch) for h in range(HK)]
            same = sum(len(p & q) for p, q in pairs) / max(1, sum(len(p) for p, _ in pairs))
            out[f"{name}_check"] = {"same_positions": same, "identical": all(p == q for p, q in pairs),
                                    "rel_err": _rel(b, a)}  # fmt: skip
            print(f"check {name}: paged vs packed after {check_steps} steps: {out[f'{name}_check']}", flush=True)
        else:
            packed_step = lambda c=packed: c.decode(0, q1, k1, v1)  # noqa: E731  (the fused step: one launch)
            paged_step = lambda c=paged: (c.append(0, k1, v1), c.decode(0, q1))  # noqa: E731
        for label, c, step in (("packed", packed, packed_step), ("paged", paged, paged_step)):
            row = out[f"{name}_{label}"] = {}
            row["step_eager_us"] = _eager(step, torch) * 1e6
            row["decode_graph_us"] = _graph(lambda c=c: c.decode(0, q1), torch) * 1e6
            if scored or label == "packed":  # a lossless paged step decides on the host (page openings): no capture
                row["step_graph_us"] = _graph(step, torch) * 1e6
                row["update_graph_us"] = row["step_graph_us"] - row["decode_graph_us"]
            if scored and label == "paged":  # the same decode without writing its logits
                L = c._layer(0)
                lg, L.logits = L.logits, None
                row["decode_nologits_graph_us"] = _graph(lambda c=c: c.decode(0, q1), torch) * 1e6
                L.logits = lg
            row["kernels_us"] = _kernel_us(step, torch)
            row["host_us"] = _host_us(step, torch)
            print(f"{name}_{label}: {row}", flush=True)  # as it comes: a run cut short keeps it
            final[f"{name}_{label}"] = _final_state(c, step, batch)
        del packed, paged
    for key, (kept, got) in final.items():
        if key.startswith("base_"):
            kept_new, got_new = final[key[5:]]
            out[f"{key[5:]}_vs_base"] = {"same_positions": kept == kept_new, "rel_err": _rel(got_new, got)}
            print(f"check {key[5:]} against the base build: {out[f'{key[5:]}_vs_base']}", flush=True)
    print(f"\nB={batch}, {H} query heads, {HK} KV heads, D={D}, bf16, prompt {n}, budget {BUDGET} (sink 4, recent 64)")
    print(f"{'':22} {'step graph us':>14} {'step eager us':>14} {'decode graph us':>16} {'update graph us':>16}")
    for key, row in out.items():
        if isinstance(row, dict) and "step_eager_us" in row:
            cells = [row.get(x, float("nan")) for x in ("step_graph_us", "step_eager_us", "decode_graph_us")]
            cells.append(row.get("update_graph_us", float("nan")))
            print(f"{key:22} {cells[0]:14.1f} {cells[1]:14.1f} {cells[2]:16.1f} {cells[3]:16.1f}")
    for key, row in out.items():
        if isinstance(row, dict) and row.get("kernels_us"):
            extra = (
                f", decode without logits (graph) {row['decode_nologits_graph_us']:.1f}"
                if "decode_nologits_graph_us" in row
                else ""
            )
            print(f"{key}: host us per step {row['host_us']:.1f}, GPU us per step {row['kernels_us']}{extra}")


ATTEND_CONFIGS = (  # (block_n, num_warps, stages, programs_per_sm): the --step sweep
    (64, 4, 1, 4),
    (64, 4, 2, 4),
    (64, 4, 3, 4),
    (64, 4, 1, 2),
    (32, 4, 1, 4),
    (32, 4, 2, 4),
    (32, 4, 1, 8),
    (128, 8, 1, 4),
    (64, 8, 1, 4),
    (64, 4, 1, 8),
    (32, 4, 2, 8),
    (16, 4, 1, 8),
)  # fmt: skip  (programs_per_sm is capped at what one SM holds, except in `base`)
SCORE_TILES = (
    (64, 4, 1, 3),
    (128, 4, 1, 3),
    (32, 4, 1, 3),
    (64, 4, 4, 3),
    (64, 4, 8, 3),
    (64, 4, 4, 4),
    (128, 4, 4, 3),
    (32, 4, 8, 3),
    (32, 4, 16, 4),
)  # (units, warps, steps, stages)
TOPK_WARPS = (8, 4, 16)


def _base(name):
    """The module `name` of the base build (generate --base), or None."""
    return _import(name, GEN / "base") if (GEN / "base" / f"{name}.py").exists() else None


def _variants():
    """(name, module) of each Quest variant whose module was generated."""
    found = [
        ("base", GEN / "base", "select_quest"),
        ("bf16", GEN, "select_quest"),
        ("fp8", GEN, "select_quest8"),
        ("mean", GEN, "select_mean"),
    ]
    return [(name, _import(mod, folder)) for name, folder, mod in found if (folder / f"{mod}.py").exists()]


def _registers(kernel) -> list:
    """[(num_warps, stages, registers, shared bytes)] of a jit function's compiled versions."""
    try:
        return sorted({(k.metadata.num_warps, k.metadata.num_stages, k.n_regs, k.metadata.shared)
                       for cache in kernel.device_caches.values() for k in cache[0].values()})  # fmt: skip
    except Exception as exc:  # the compiled kernels' records differ between Triton versions
        return [f"unknown ({type(exc).__name__})"]


def _step_variant(name, mod, torch, dev, n, batch, res, sweep: int):
    """One variant's step at n tokens: a sweep of its score tile and attention config (graph
    time; the first `sweep` of each list), then the step and its parts, graph and eager, with the bytes each reads."""
    qc = mod.PagedCache(batch, device=dev, dtype=torch.bfloat16, pages=batch * HK * (n // PAGE + 2))
    _fill([qc], n, batch, dev, torch)
    q = torch.randn(batch, H, 1, D, device=dev, dtype=torch.bfloat16, generator=torch.Generator(dev).manual_seed(0))
    L, scale = qc._layers[0], D**-0.5
    config = mod.DecodeConfig()
    r = res[name] = {}
    qc.decode(0, q)
    if sweep:
        shapes = SCORE_TILES if len(qc.score_tile) == 4 else sorted({t[:2] for t in SCORE_TILES})  # `base`: 2
        tiles = {t: _graph(lambda: qc._score(L, q, 0, *t), torch) for t in shapes[: 1 if sweep == 1 else None]}
        qc.score_tile = min(tiles, key=tiles.get)
        scores = qc._score(L, q, 0, *qc.score_tile)
        if hasattr(qc, "topk_warps"):  # not in `base`
            warps = {}
            for w in TOPK_WARPS[:sweep]:
                qc.topk_warps = w
                warps[w] = _graph(lambda: qc._top(L, scores, 1, 0), torch)
            qc.topk_warps = min(warps, key=warps.get)
            r["sweep_topk_us"] = {str(w): v * 1e6 for w, v in warps.items()}
        cfgs = {c: mod.DecodeConfig(block_n=c[0], num_warps=c[1], stages=c[2], programs_per_sm=c[3])
                for c in ATTEND_CONFIGS[:sweep]}  # fmt: skip
        times = {c: _graph(lambda: qc._attend(L, q, scale, cfg), torch) for c, cfg in cfgs.items()}
        config = cfgs[min(times, key=times.get)]
        r["sweep_score_us"] = {str(t): v * 1e6 for t, v in tiles.items()}
        r["sweep_attend_us"] = {str(c): v * 1e6 for c, v in times.items()}
    r["score_tile"], r["attend_config"] = list(qc.score_tile), config._asdict()
    r["topk_warps"] = getattr(qc, "topk_warps", 8)
    scores = qc._score(L, q, 0, *qc.score_tile)
    parts = {
        "score": lambda: qc._score(L, q, 0, *qc.score_tile),
        "topk": lambda: qc._top(L, scores, 1, 0),
        "attend": lambda: qc._attend(L, q, scale, config),
        "step": lambda: qc.decode(0, q, config=config),
    }
    heads, pages = batch * HK, -(-n // PAGE)
    if L.smin is not None:  # quest: min and max (and a scale at 8 bits); mean: the float32 key sum
        summary = 2 * D * L.smin.element_size() + (4 if getattr(L, "sscale", None) is not None else 0)
    else:
        summary = D * L.ssum.element_size()
    nbytes = {"score": heads * pages * (summary + 4), "topk": heads * pages * 4,
              "attend": heads * min(BUDGET + PAGE, n) * (D * 2 * 2 + 4)}  # fmt: skip
    nbytes["step"] = sum(nbytes.values())
    for part, fn in parts.items():
        r[f"{part}_graph_us"], r[f"{part}_eager_us"] = _graph(fn, torch) * 1e6, _eager(fn, torch) * 1e6
        r[f"{part}_MB"] = nbytes[part] / 1e6
    r["registers"] = {k: _registers(getattr(mod, k)) for k in ("_pg_score_kernel", "_pg_topk_kernel", "_pg_fwd_kernel")}
    del qc, parts, scores


def _check_variant(name, mod, torch, dev, n, batch) -> dict:
    """The variant's step against its torch reference at n tokens: same pages, output error."""
    qc = mod.PagedCache(batch, device=dev, dtype=torch.bfloat16)
    _fill([qc], n, batch, dev, torch, chunk=1024)
    q = torch.randn(batch, H, 1, D, device=dev, dtype=torch.bfloat16)
    got = qc.decode(0, q)
    chosen = qc.selected(0)
    want = qc.decode_reference(0, q)
    ref = qc.selected(0)
    same = sum(int((chosen[h] == ref[h]).sum()) for h in chosen) / sum(x.numel() for x in chosen.values())
    return {"same_pages": same, "rel_err": _rel(got, want)}


def run_step(args) -> dict:
    """The Quest step of every variant against SDPA: a table (see the module's docstring)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    n, batch, check_n = (512, 1, 300) if args.smoke else (N, B, 8192)
    CALLS[0] = 1 if args.smoke else CALLS[0]
    res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "context": n, "batch": batch}
    variants = _variants()
    for name, mod in variants:
        try:
            res[f"check_{name}"] = _check_variant(name, mod, torch, dev, check_n, min(batch, 2))
        except Exception as exc:  # noqa: BLE001 - one variant's failure must not hide the others' numbers
            res[f"check_{name}"] = f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"
        print(f"check {name} at {check_n} tokens: {res[f'check_{name}']}", flush=True)
    g = torch.Generator(device=dev).manual_seed(n)
    kd = torch.randn(batch, HK, n, D, device=dev, dtype=torch.bfloat16, generator=g)
    vd = torch.randn_like(kd)
    q = torch.randn(batch, H, 1, D, device=dev, dtype=torch.bfloat16)
    F = torch.nn.functional
    sdpa = _graph(lambda: F.scaled_dot_product_attention(q, kd, vd, enable_gqa=True), torch) * 1e6
    res["sdpa_us"], res["sdpa_MB"] = sdpa, kd.numel() * 2 * 2 / 1e6
    del kd, vd
    for name, mod in variants:
        try:
            _step_variant(name, mod, torch, dev, n, batch, res, sweep=1 if args.smoke else len(ATTEND_CONFIGS))
            print(f"timed {name}", flush=True)
        except Exception as exc:  # noqa: BLE001
            res.pop(name, None)
            res[f"error_{name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{name} FAILED: {res[f'error_{name}']}", flush=True)
            if dev == "cuda":
                torch.cuda.empty_cache()
    variants = [(name, mod) for name, mod in variants if name in res]
    rows = [("SDPA (full cache)", sdpa, float("nan"), res["sdpa_MB"])]
    for name, _ in variants:
        r = res[name]
        for part in ("step", "score", "topk", "attend"):
            rows.append((f"{name} {part}", r[f"{part}_graph_us"], r[f"{part}_eager_us"], r[f"{part}_MB"]))
    print(f"\n{res['device']}: B={batch}, {H} query heads, {HK} KV heads, D={D}, bf16, context {n}, budget {BUDGET}")
    print(f"{'':24} {'graph us':>9} {'eager us':>9} {'MB':>8} {'TB/s':>6} {'x SDPA':>7} {'x SDPA eager':>12}")
    for label, g_us, e_us, mb in rows:
        print(f"{label:24} {g_us:9.1f} {e_us:9.1f} {mb:8.1f} {mb / g_us:6.2f} {sdpa / g_us:7.2f} {sdpa / e_us:12.2f}")
    for name, _ in variants:
        r = res[name]
        print(f"{name}: score tile {r['score_tile']}, top-k warps {r['topk_warps']}, attend {r['attend_config']}")
        print(f"  registers (warps, stages, registers, shared bytes): {r['registers']}")
        for key in ("sweep_score_us", "sweep_topk_us", "sweep_attend_us"):
            if key in r:
                print(f"  {key}: " + ", ".join(f"{k}: {v:.1f}" for k, v in r[key].items()))
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_select_step.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def run(args) -> dict:
    import torch

    dev = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    quest, full = _import("select_quest"), _import("select_full")
    res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}
    CALLS[0] = 1 if args.smoke else CALLS[0]
    if args.smoke and not args.evict:
        _check(quest, full, res, dev, torch, 300, 1)
        _select_bench(quest, full, res, dev, torch, 512, 1)
        _evict_bench(_import("evict_h2o"), "evict_h2o", res, dev, torch, 40, 1)
    elif not args.evict:
        _check(quest, full, res, dev, torch, 8192, 2)
        _select_bench(quest, full, res, dev, torch, N, B)
        for name in ("evict_h2o", "evict_tova"):
            _evict_bench(_import(name), name, res, dev, torch, 8192, B)
    names = ("evict_h2o", "evict_none", "evict_tova")
    mods = {name: _import(name) for name in names}
    if args.evict:  # the base build's, where rendered, interleaved with this build's
        mods = {f"{pre}{name}": mod for name in names for pre, mod in (("base_", _base(name)), ("", mods[name])) if mod}
    _steps_bench(mods, res, dev, torch, 40 if args.smoke else 8192, 2 if args.smoke else B)
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_select.json").write_text(json.dumps(res, indent=1))
    for key, val in res.items():
        print(key, json.dumps(val, indent=1) if isinstance(val, dict) else val)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("generate", "run"))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--step", dest="quest_step", action="store_true", help="run: the Quest step of each variant")
    ap.add_argument("--base", metavar="REV", help="generate: also render the Quest module of git revision REV")
    ap.add_argument("--evict", action="store_true", help="run: the H2O / TOVA / no-score steps only (packed, paged)")
    args = ap.parse_args(argv)
    if args.step == "generate":
        generate()
        if args.base:
            generate_base(args.base)
    elif args.quest_step:
        run_step(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
