"""The H2O / TOVA step with its update inside the decode launch, against a cache of the same
budget with no scores, eager and as CUDA graphs; and against the current path.

new: `cache.decode(0, q, k, v)`: one decode launch appends the step's token, attends, and
     the last split of each (row, KV head) folds the step's attention into the scores and
     evicts (the step reads, then evicts);
old: the tree at REV (default: the commit before this change): `append` (one
     _kv_update_kernel launch folds the last decode's logits, evicts, writes the token), then
     `decode` (writes the logits).
streaming: the same budget with no scores (keep sink(4) keep recent(4092): a ring store),
     its fused step `cache.decode(0, q, k, v)`: one launch, no update: the floor.
Shape: B = 8, 32 query heads, 8 KV heads, D = 128, bf16, budget 4096 (sink 4, recent 64),
after an 8192-token prompt. "update cost" = (step - streaming step) / streaming step, same
mode (eager: plain Python loop, launch overhead included; graph: CUDA-graph replays).
First a check (float32, B = 2 rows of different lengths: the second left-padded by 3, 4200
tokens, 20 steps): the new step against the old path, step by step: the same outputs, and
the same tokens in the same slots with the same scores once the old path's next append has
run its eviction (the old cache holds the step's token in the slot the new one empties).

    python bench/proto/h2o_update.py generate [--old-rev REV]   # here: needs attnc and git
    python3 bench/proto/h2o_update.py run [--smoke]              # GPU machine: torch + triton
    TRITON_INTERPRET=1 python bench/proto/h2o_update.py run --smoke   # CPU, tiny budget

`generate` renders the new modules with this tree and the old ones with the tree at REV
into bench/generated/h2o_update/ (git-ignored: carry it to the GPU machine).
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
OLD_REV = "e97d385"
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


def _filled(mod, dev, torch, batch, context, dtype=None, pads=None):
    """A cache after a prompt of `context` tokens (row b left-padded by pads[b])."""
    dtype = dtype or torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, dtype=dtype, generator=g)  # noqa: E731
    cache = mod.Cache(batch, device=dev, dtype=dtype, max_len=context + 4096)
    for t in range(0, context, 4096):
        T = min(4096, context - t)
        lens = None if t or pads is None else torch.tensor([T - p for p in pads], device=dev)
        cache.append(0, r(batch, HK, T, D), r(batch, HK, T, D), r(batch, H, T, D), lengths=lens)
    return cache, r


def _step_fn(cache, r, batch, fused, kw=None):
    """One decode step over one fixed token (k, v, q): the fused step, or append then decode."""
    k1, v1, q1 = r(batch, HK, 1, D), r(batch, HK, 1, D), r(batch, H, 1, D)
    kw = kw or {}

    def step():
        if fused:
            return cache.decode(0, q1, k1, v1, **kw)
        cache.append(0, k1, v1, q1)
        return cache.decode(0, q1)

    for _ in range(3):  # the steady state: budget reached, one eviction per step
        step()
    return step


def _check(mods, dev, torch, batch, context, steps):
    """The new step (one launch) against the old path (append, then decode), float32, rows of
    different lengths: the same outputs every step, and after the old path's next append (its
    eviction of the last step) the same positions and scores in every slot, but for the slot
    of its new token, which the new cache has emptied."""
    res = {}
    f32, sent = torch.float32, 1 << 30
    for name in ("h2o", "tova"):
        new, r = _filled(mods[f"new_{name}"], dev, torch, batch, context, f32, [3 * b for b in range(batch)])
        old, _ = _filled(mods[f"old_{name}"], dev, torch, batch, context, f32, [3 * b for b in range(batch)])
        same, err = True, 0.0
        for _ in range(steps):
            k1, v1, q1 = r(batch, HK, 1, D), r(batch, HK, 1, D), r(batch, H, 1, D)
            pos, score = new.view(0).pos.clone(), new._layers[0].score.clone()
            old.append(0, k1, v1, q1)
            op = old.view(0).pos
            cur = torch.where(op == sent, -1, op).amax(-1, keepdim=True)  # each row's new token
            op = torch.where(op == cur, sent, op)
            held = op != sent
            same &= bool(torch.equal(op, pos))
            same &= bool(torch.allclose(old._layers[0].score[held], score[held], rtol=1e-4, atol=1e-6))
            a, b = new.decode(0, q1, k1, v1), old.decode(0, q1)
            err = max(err, float((a - b).norm() / b.norm()))
        res[name] = {"same_slots_and_scores": same, "out_rel_err": err, "held": new.tokens()[0][0]}
        del new, old
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
           "check": _check(mods, dev, torch, 2, context if smoke else 4200, 6 if smoke else 20)}  # fmt: skip
    rows = []
    # variants of the new H2O step: at most 128 registers (4 programs per SM, a few bytes
    # spilled) instead of _DEC_STEP_REGS; splits for 3 programs per SM instead of 4
    regs = {"_DEC_STEP_REGS": 128}
    per_sm = {"config": mods["new_h2o"].DecodeConfig(programs_per_sm=3)}
    for name, version, fused, label, patch, kw in (
        ("streaming", "new", True, "", None, None), ("h2o", "new", True, "", None, None),
        ("tova", "new", True, "", None, None), ("h2o", "old", False, "", None, None),
        ("tova", "old", False, "", None, None), ("h2o", "new", True, " regs128", regs, None),
        ("h2o", "new", True, " per_sm3", None, per_sm),
    ):  # fmt: skip
        mod = mods[f"{version}_{name}"]
        saved = {k: getattr(mod, k) for k in patch or {}}
        for k, x in (patch or {}).items():
            setattr(mod, k, x)
        mod._DEC_CALLS.clear()  # plans made with other constants
        cache, r = _filled(mod, dev, torch, batch, context)
        fn = _step_fn(cache, r, batch, fused, kw)
        t = {"eager": _eager(fn, torch), "graph": _graph(fn, torch), "held": cache.tokens()[0][0]}
        res[f"{version}_{name}{label}"] = t
        rows.append((f"{name} {version}{label}", "decode(q, k, v)" if fused else "append+decode", t))
        del cache, fn
        for k, x in saved.items():
            setattr(mod, k, x)
        mod._DEC_CALLS.clear()
    _table(rows, res["new_streaming"])
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2o_update.json").write_text(json.dumps(res, indent=1))
    return res


def _table(rows, floor) -> None:
    us = lambda s: "-" if s is None else f"{s * 1e6:9.1f}"  # noqa: E731
    pct = lambda a, b: "-" if a is None or b is None else f"{(a - b) / b:+8.1%}"  # noqa: E731
    print(f"{'cache':<22}{'step':<17}{'eager us':>10}{'graph us':>10}{'update eager':>14}{'update graph':>14}")
    for name, what, t in rows:
        e, g = t["eager"], t["graph"]
        print(f"{name:<22}{what:<17}{us(e):>10}{us(g):>10}{pct(e, floor['eager']):>14}{pct(g, floor['graph']):>14}")
    print("update = (step - the streaming step) / the streaming step: the same budget with no scores")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("generate", "run"))
    ap.add_argument("--smoke", action="store_true", help="tiny budget on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision of the old update (generate)")
    args = ap.parse_args(argv)
    if args.step == "generate":
        generate(args.old_rev)
    else:
        run(args)


if __name__ == "__main__":
    main()
