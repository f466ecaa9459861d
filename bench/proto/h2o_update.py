"""The H2O / TOVA update against the decode step, old against new, eager and as CUDA graphs.

old: the update recomputes q . k over every held key before the step reads the cache (two
     launches, _kv_step_stats_kernel + _kv_step_kernel; the step's queries see `budget` keys);
new: the decode kernel writes the step's logits and log-sum-exp, and the next append folds
     them into the scores, evicts and writes its token in one launch (_kv_update_kernel; the
     step's queries see `budget + 1` keys).
Shape: B = 8, 32 query heads, 8 KV heads, D = 128, bf16, budget 4096 (sink 4, recent 64),
after an 8192-token prompt. Rows: decode (cache.decode), update (cache.append of one token;
for new, with the last step's logits marked as read, as after a decode), step (append +
decode, what a model runs), and a StreamingLLM append (sink 4 + ring 4092, no policy) for
the floor of an append's host time. "% of decode" divides by the same version's decode, same
mode. First a check at the same shape on a small context: the fused path against the torch
path (the same kept positions after every step of append + decode).

    python bench/proto/h2o_update.py generate [--old-rev REV]   # here: needs attnc and git
    python3 bench/proto/h2o_update.py run [--smoke]              # GPU machine: torch + triton
    python3 bench/proto/h2o_update.py sweep                      # GPU: the update's split and tile
    TRITON_INTERPRET=1 python bench/proto/h2o_update.py run --smoke   # CPU, tiny budget

`generate` renders the new modules with this tree and the old ones with the tree at REV
(default: the commit before the update reused the logits) into bench/generated/h2o_update/.
`run` prints a table and writes $OUT/h2o_update.json (OUT unset: ./out/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
GEN = BENCH / "generated" / "h2o_update"
OLD_REV = "0f8eb3e"
B, H, HK, D = 8, 32, 8, 128
CONTEXT, BUDGET = 8192, 4096
MODEL = f"model {{ layers = 1, heads = {H}, kv_heads = {HK}, head_dim = {D} }}\npattern p = causal\n"


def _texts(budget: int, recent: int) -> dict:
    return {
        "h2o": MODEL + f"cache {{ budget = {budget} keep sink(4) keep recent({recent}) evict h2o }}\n",
        "tova": MODEL + f"cache {{ budget = {budget} keep sink(4) keep recent({recent}) evict tova }}\n",
        "streaming": MODEL + f"cache {{ budget = {budget} keep sink(4) keep recent({budget - 4}) }}\n",
    }


TEXTS = {"": _texts(BUDGET, 64), "_smoke": _texts(24, 4)}
_WRITE = """
import sys, json
from attnc.codegen.decode_plan import plan_decode
from attnc.codegen.writer import write_decode_module
from attnc.compiler.lower import lower
from attnc.spec.resolve import resolve_text
import attnc
assert attnc.__file__.startswith(sys.argv[1]), attnc.__file__
for name, (text, out) in json.loads(sys.argv[2]).items():
    print("wrote", write_decode_module(plan_decode(lower(resolve_text(text, name + ".attn"))), out))
"""


def _package(tree: Path, pkg: Path) -> None:
    """attnc as pyproject.toml maps it (attnc/, spec/ -> attnc.spec, ...) from a source tree."""
    shutil.copytree(tree / "attnc", pkg / "attnc")
    for sub in ("spec", "compiler", "codegen", "runtime"):
        shutil.copytree(tree / sub, pkg / "attnc" / sub)


def generate(old_rev: str) -> None:
    GEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for version, rev in (("new", None), ("old", old_rev)):
            tree = ROOT
            if rev is not None:  # the tree at REV, without touching any worktree
                tree = Path(tmp) / "tree"
                tree.mkdir()
                tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(tree)], input=tar, check=True)
            pkg = Path(tmp) / f"pkg_{version}"
            _package(tree, pkg)
            jobs = {f"{version}_{name}{sfx}": (text, str(GEN / f"{version}_{name}{sfx}.py"))
                    for sfx, texts in TEXTS.items() for name, text in texts.items()}  # fmt: skip
            env = dict(os.environ, PYTHONPATH=str(pkg))
            subprocess.run([sys.executable, "-c", _WRITE, str(pkg), json.dumps(jobs)], check=True, env=env, cwd=tmp)


# ------------------------------------------------------------------ run (GPU machine)


def _import(name):
    sys.path.insert(0, str(ROOT))
    from codegen.importing import import_module_from_path  # the standard library only: no attnc needed

    return import_module_from_path(GEN / f"{name}.py", f"h2o_update_{name}")


CALLS = [50]


def _sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _eager(fn, torch):
    """Seconds per call in a plain loop (launch overhead and host work included), median of 3."""
    calls, runs = CALLS[0], []
    for _ in range(min(3, calls)):
        fn()
    for _ in range(3 if calls > 1 else 1):
        _sync(torch)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(torch)
        runs.append((time.perf_counter() - t0) / calls)
    return sorted(runs)[len(runs) // 2]


def _graph(fn, torch):
    """GPU seconds per call from CUDA-graph replays (None on the CPU or if capture fails)."""
    if not torch.cuda.is_available() or CALLS[0] == 1:
        return None
    sys.path.insert(0, str(BENCH))
    from timing import graph_time

    try:
        return graph_time(fn, torch, 20, 20)
    except RuntimeError as exc:
        print(f"  CUDA graph capture failed: {str(exc)[:160]}", flush=True)
        torch.cuda.synchronize()
        return None


def _filled(mod, dev, torch, batch, context, backend="triton", dtype=None):
    dtype = dtype or torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, dtype=dtype, generator=g)  # noqa: E731
    cache = mod.Cache(batch, device=dev, dtype=dtype, backend=backend, max_len=context + 4096)
    for t in range(0, context, 4096):
        T = min(4096, context - t)
        cache.append(0, r(batch, HK, T, D), r(batch, HK, T, D), r(batch, H, T, D))
    return cache, r


def _step_fns(cache, r, batch, new):
    """decode, update and step closures over one fixed token (k, v, q)."""
    k1, v1, q1 = r(batch, HK, 1, D), r(batch, HK, 1, D), r(batch, H, 1, D)
    L = cache._layers[0]

    def update():
        if new and L.logits is not None:
            L.logits.read = L.n  # as after a decode of the last step: the fused path
        cache.append(0, k1, v1, q1)

    def step():
        cache.append(0, k1, v1, q1)
        cache.decode(0, q1)

    for _ in range(3):  # the steady state: budget reached, one eviction per step
        step()
    return {"decode": lambda: cache.decode(0, q1), "update": update, "step": step}


def _check(mods, dev, torch, batch, context, steps):
    """The fused update (new, decoded every step) against its torch path (float32): the same
    positions kept after every step."""
    res = {}
    f32 = torch.float32
    for name in ("h2o", "tova"):
        mod = mods[f"new_{name}"]
        a, r = _filled(mod, dev, torch, batch, context, dtype=f32)
        b, _ = _filled(mod, dev, torch, batch, context, "torch", f32)
        same = True
        for _ in range(steps):
            k1, v1, q1 = r(batch, HK, 1, D), r(batch, HK, 1, D), r(batch, H, 1, D)
            outs = []
            for c in (a, b):
                c.append(0, k1, v1, q1)
                outs.append(c.decode(0, q1))
            same &= bool(torch.equal(a.view(0).pos, b.view(0).pos))
        err = float((outs[0].float() - outs[1].float()).norm() / outs[1].float().norm())
        fused = a._layers[0].logits is not None and a._layers[0].logits.read == a.seen(0)
        res[name] = {"same_positions": same, "out_rel_err": err, "fused_path": fused}
        del a, b
    print("check:", json.dumps(res), flush=True)
    return res


def run(args) -> dict:
    import torch

    smoke = args.smoke
    dev = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    sfx = "_smoke" if smoke else ""
    batch, context = (1, 40) if smoke else (B, CONTEXT)
    if smoke:
        CALLS[0] = 1
    mods = {f"{v}_{n}": _import(f"{v}_{n}{sfx}") for v in ("old", "new") for n in ("h2o", "tova", "streaming")}
    res = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "batch": batch, "context": context,
           "check": _check(mods, dev, torch, batch if smoke else 2, context if smoke else 4200, 6 if smoke else 20)}  # fmt: skip
    rows = []
    for name in ("h2o", "tova"):
        for version in ("old", "new"):
            cache, r = _filled(mods[f"{version}_{name}"], dev, torch, batch, context)
            fns = _step_fns(cache, r, batch, version == "new")
            t = {f"{what}_{mode}": (_eager(fn, torch) if mode == "eager" else _graph(fn, torch))
                 for what, fn in fns.items() for mode in ("eager", "graph")}  # fmt: skip
            t["held"] = cache.tokens()[0][0]
            res[f"{version}_{name}"] = t
            for what in ("decode", "update", "step"):
                rows.append((f"{name} {version}", what, t[f"{what}_eager"], t[f"{what}_graph"],
                             t["decode_eager"], t["decode_graph"]))  # fmt: skip
            del cache, fns
    for version in ("old", "new"):
        cache, r = _filled(mods[f"{version}_streaming"], dev, torch, batch, context)
        fns = _step_fns(cache, r, batch, False)
        t = {f"{what}_{mode}": (_eager(fn, torch) if mode == "eager" else _graph(fn, torch))
             for what, fn in fns.items() if what != "step" for mode in ("eager", "graph")}  # fmt: skip
        res[f"{version}_streaming"] = t
        rows.append((f"streaming {version}", "append", t["update_eager"], t["update_graph"], t["decode_eager"],
                     t["decode_graph"]))  # fmt: skip
        del cache, fns
    _table(rows)
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2o_update.json").write_text(json.dumps(res, indent=1))
    return res


SWEEP = [(4, 256), (8, 256), (16, 256), (4, 128), (4, 512)]  # (programs per SM, keys per tile); (4, 256) ships


def sweep(args) -> dict:
    """The new update's split (programs per SM) and tile (keys) against the whole step, eager
    and as a graph, beside the same-budget StreamingLLM step (the cost of scoring nothing)."""
    import torch

    dev = "cuda"
    res = {"device": torch.cuda.get_device_name(), "rows": []}
    base, r = _filled(_import("new_streaming"), dev, torch, B, CONTEXT)
    fns = _step_fns(base, r, B, False)
    floor = {"eager": _eager(fns["step"], torch), "graph": _graph(fns["step"], torch)}
    res["streaming_step"] = floor
    del base, fns
    print(f"streaming step (no score): eager {floor['eager'] * 1e6:.1f} us, graph {floor['graph'] * 1e6:.1f} us")
    for name in ("h2o", "tova"):
        mod = _import(f"new_{name}")
        for per_sm, block in SWEEP:
            mod._KV_UPD_PER_SM, mod._KV_UPD_BLOCK = per_sm, block
            cache, r = _filled(mod, dev, torch, B, CONTEXT)
            fns = _step_fns(cache, r, B, True)
            row = {"cache": name, "per_sm": per_sm, "block": block}
            row.update({f"{w}_{m}": (_eager(fns[w], torch) if m == "eager" else _graph(fns[w], torch))
                        for w in ("step", "update") for m in ("eager", "graph")})  # fmt: skip
            res["rows"].append(row)
            over = {m: row[f"step_{m}"] / floor[m] - 1 for m in ("eager", "graph")}
            print(f"{name} per_sm {per_sm:2d} block {block:3d}: step eager {row['step_eager'] * 1e6:6.1f} "
                  f"({over['eager']:+.1%}) graph {row['step_graph'] * 1e6:6.1f} ({over['graph']:+.1%}); "
                  f"update graph {row['update_graph'] * 1e6:5.1f}", flush=True)  # fmt: skip
            del cache, fns
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2o_sweep.json").write_text(json.dumps(res, indent=1))
    return res


def _table(rows) -> None:
    us = lambda s: "-" if s is None else f"{s * 1e6:9.1f}"  # noqa: E731
    pct = lambda a, b: "-" if a is None or b is None else f"{a / b:7.1%}"  # noqa: E731
    print(f"{'cache':<16}{'call':<8}{'eager us':>10}{'graph us':>10}{'% of decode eager':>19}{'% of decode graph':>19}")
    for name, what, e, g, de, dg in rows:
        print(f"{name:<16}{what:<8}{us(e):>10}{us(g):>10}{pct(e, de):>19}{pct(g, dg):>19}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("generate", "run", "sweep"))
    ap.add_argument("--smoke", action="store_true", help="tiny budget on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision of the old update (generate)")
    args = ap.parse_args(argv)
    if args.step == "generate":
        generate(args.old_rev)
    else:
        (sweep if args.step == "sweep" else run)(args)


if __name__ == "__main__":
    main()
