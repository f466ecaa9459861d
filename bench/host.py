"""Host time per call of a generated module: prefill, the decode step and the cache update.

    python bench/host.py generate        # here (needs attnc): renders bench/generated/host_*.py
    python3 bench/host.py run            # on the GPU machine (torch and triton only)
    TRITON_INTERPRET=1 python bench/host.py run --smoke   # CPU, tiny shapes (a test runs it)

For each module (dense causal, StreamingLLM, the DuoAttention mix; H=32, H_KV=8, D=128, bf16):
- host time per call: `calls` calls issued back to back, timed on the CPU before the one
  torch.cuda.synchronize at the end (the GPU runs behind; tiny N, so the GPU is never the
  bottleneck), and the wall time per call including that synchronisation;
- the same under a CUDA graph (replays of `calls` captured calls: GPU time alone);
- SDPA's prefill at the same shape, for scale;
- the host time of attnc's own Python ("python only" rows, on the CPU as well): the same
  calls with stand-ins for the compiled kernels whose launch does nothing, taken through
  the same direct-launch path (FastLaunch) as the real ones, so that only Triton's C
  launcher and the driver are missing; with a CPU profile (cProfile, top functions by own
  time) of prefill and of one decode step (append + decode, and the fused step);
- the fused step (`Cache.decode(layer, q, k, v)`: the decode kernel appends the token) beside
  append + decode ("step_fused" and "step" rows), and a check of its outputs and store
  against append-then-decode on a twin cache (300 steps on the GPU).
Prints a table and writes $OUT/host.json (default ./out/host.json).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

from timing import graph_time

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GEN = HERE / "generated"
MODEL = {"layers": 1, "heads": 32, "kv_heads": 8, "head_dim": 128}
MODULES = {  # name: (pattern file, defines)
    "host_causal": ("dense_causal", {}),
    "host_streaming": ("streaming_llm", {}),
    "host_duo": ("duo_attention", {}),
}


def generate() -> None:
    """Render the modules with the benchmark's model shape (a quarter of the KV heads full)."""
    sys.path.insert(0, str(ROOT))
    from attnc.codegen.loader import compile_file

    GEN.mkdir(parents=True, exist_ok=True)
    for name, (pattern, defines) in MODULES.items():
        path = _compile(compile_file, pattern, MODEL, GEN / name, defines)
        target = GEN / f"{name}.py"
        path.replace(target)
        print(f"wrote {target}")


def _compile(compile_file, pattern: str, model: dict, out: Path, defines: dict) -> Path:
    """Compile patterns/<pattern>.attn for `model`; DuoAttention gets a head-set file with the
    first quarter of each layer's KV heads as retrieval heads."""
    headsets = None
    if pattern == "duo_attention":
        kv = model["kv_heads"]
        full = list(range(kv // 4))
        sets = {
            "retrieval": {str(l): full for l in range(model["layers"])},
            "streaming": {str(l): [h for h in range(kv) if h not in full] for l in range(model["layers"])},
        }
        out.mkdir(parents=True, exist_ok=True)
        headsets = out / "heads.json"
        headsets.write_text(json.dumps(sets))
    return compile_file(ROOT / "patterns" / f"{pattern}.attn", out, defines=defines, model=model, headsets=headsets)


def _import(name: str):
    sys.path.insert(0, str(ROOT))
    from codegen.importing import import_module_from_path  # the standard library only

    return import_module_from_path(GEN / f"{name}.py", f"attnc_host_{name}")


class _Nothing:
    """A call that does nothing (an object, not a function: it has no Python code, as Triton's
    C launch has none)."""

    def __call__(self, *args):
        return None


class _NoRun(_Nothing):
    """Triton's launcher of a compiled kernel, and its C launch, both doing nothing."""

    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid = launch_pdl = False
    launch = _Nothing()


class _NoLaunch:
    """Stands for a Triton kernel and its compiled kernel: kernel[grid](...) and the launch do
    nothing, so that the module's FastLaunch binds it as it binds a compiled kernel and later
    calls take the same path as on the GPU (attnc's Python alone, without Triton's launcher)."""

    function, packed_metadata, run = 0, (), _NoRun()

    def __init__(self, kernel):
        self.fn = kernel.fn

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self


def _issue_time(fn, torch, calls: int, cuda: bool) -> tuple[float, float]:
    """(host seconds per call, wall seconds per call with the final synchronisation)."""
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / calls, (t2 - t0) / calls


def _graph_time(fn, torch, calls: int) -> float:
    """GPU seconds per call from replays of a CUDA graph of `calls` calls."""
    return graph_time(fn, torch, calls)


def _profile(fn, calls: int, top: int = 12) -> str:
    """The top functions of `calls` calls by own time: microseconds per call (own, with
    callees) and calls per call, under cProfile (whose overhead inflates small functions)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO()).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = ["   own us   cum us  n/call  function"]
    for (file, line, name), (_, ncalls, tt, ct, _) in rows:
        where = f"{Path(file).name}:{line}({name})" if line else name
        lines.append(f"{tt / calls * 1e6:9.2f} {ct / calls * 1e6:8.2f} {ncalls / calls:7.1f}  {where}")
    return "\n".join(lines)


def _python_only(mod, torch):
    """A copy of the module's launch points with no-op kernels (restore with the returned undo)."""
    names = ("_PREFILL", "_kv_append_kernel", "_current_stream")
    saved = {name: getattr(mod, name) for name in names if hasattr(mod, name)}
    saved_dec = mod._DEC.kernel
    mod._PREFILL = mod._PREFILL._replace(kernel=_NoLaunch(mod._PREFILL.kernel), memo={})
    mod._kv_append_kernel = _NoLaunch(mod._kv_append_kernel)
    mod._DEC = mod._DEC._replace(kernel=_NoLaunch(mod._DEC.kernel))
    if not torch.cuda.is_available():
        mod._current_stream = lambda: (0, 0)  # where the launch would go: no device here
    mod._KV_SPEC = mod._KV_SPEC._replace(decode=mod._DEC)
    mod.Cache.spec = mod._KV_SPEC

    def undo():
        for name, value in saved.items():
            setattr(mod, name, value)
        mod._DEC = mod._DEC._replace(kernel=saved_dec)
        mod._KV_SPEC = mod._KV_SPEC._replace(decode=mod._DEC)
        mod.Cache.spec = mod._KV_SPEC

    return undo


def _check_fused(mod, torch, dev, dt, kc, steps: int) -> dict:
    """The fused step against append-then-decode on twin caches, `steps` tokens after the
    context kc, with and without max_len: the largest output difference and whether the
    stores' lengths and positions agree (a correctness check of the fused kernel where it runs)."""
    H, HK, D = MODEL["heads"], MODEL["kv_heads"], MODEL["head_dim"]
    g = torch.Generator(device=dev).manual_seed(1)
    res = {}
    for max_len in (None, kc.shape[2] + steps + 64):
        fused, twin = (mod.Cache(1, device=dev, dtype=dt, max_len=max_len) for _ in range(2))
        for c in (fused, twin):
            c.append(0, kc, kc)
        diff = 0.0
        for _ in range(steps):
            q1 = torch.randn(1, H, 1, D, device=dev, dtype=dt, generator=g)
            k1, v1 = (torch.randn(1, HK, 1, D, device=dev, dtype=dt, generator=g) for _ in range(2))
            got = fused.decode(0, q1, k1, v1)
            twin.append(0, k1, v1)
            diff = max(diff, (got.float() - twin.decode(0, q1).float()).abs().max().item())
        a, b = fused.view(0), twin.view(0)
        same = torch.equal(a.lens, b.lens) and torch.equal(a.npos, b.npos) and torch.equal(a.pos, b.pos)
        res["static" if max_len else "growing"] = {"max_abs_diff": diff, "same_store": same}
    return res


def _case(mod, torch, dev, n_prefill: int, ctx: int, calls: int, cuda: bool, smoke: bool) -> dict:
    dt = torch.bfloat16 if cuda else torch.float32
    H, HK, D = MODEL["heads"], MODEL["kv_heads"], MODEL["head_dim"]
    B = 1
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, n_prefill, D, device=dev, dtype=dt, generator=g)
    k = torch.randn(B, HK, n_prefill, D, device=dev, dtype=dt, generator=g)
    v = torch.randn(B, HK, n_prefill, D, device=dev, dtype=dt, generator=g)
    # the device's counts run ahead of the host's in graph replays (21 replays of `calls`
    # captured calls, for each of the 3 appending calls): room for all of them
    cache = mod.Cache(B, device=dev, dtype=dt, max_len=ctx + 3 * (23 * calls + 8) + 64)
    kc = torch.randn(B, HK, ctx, D, device=dev, dtype=dt, generator=g)
    cache.append(0, kc, kc)
    q1 = torch.randn(B, H, 1, D, device=dev, dtype=dt, generator=g)
    k1 = torch.randn(B, HK, 1, D, device=dev, dtype=dt, generator=g)

    def prefill():
        mod.prefill(q, k, v)

    def update():
        cache.append(0, k1, k1)

    def decode():
        cache.decode(0, q1)

    def step():  # append, then decode: two launches
        update()
        decode()

    def step_fused():  # the decode kernel appends: one launch
        cache.decode(0, q1, k1, k1)

    calls_of = (("prefill", prefill), ("update", update), ("decode", decode), ("step", step),
                ("step_fused", step_fused))  # fmt: skip
    out = {"fused_check": _check_fused(mod, torch, dev, dt, kc, 8 if smoke else 300)}
    for name, fn in calls_of:
        host, wall = _issue_time(fn, torch, calls, cuda)
        row = {"host_us": host * 1e6, "wall_us": wall * 1e6}
        if cuda:
            row["graph_us"] = _graph_time(fn, torch, calls) * 1e6
            row["eager_over_graph"] = wall / (row["graph_us"] * 1e-6)
        out[name] = row
    if cuda:
        import torch.nn.functional as F

        host, wall = _issue_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                                 torch, calls, cuda)  # fmt: skip
        out["sdpa_prefill"] = {"host_us": host * 1e6, "wall_us": wall * 1e6}
    undo = _python_only(mod, torch)
    try:
        # no-op kernels: cheap on the CPU too, so the best of 15 batches of 100 calls (a
        # shared CPU's preemptions inflate some batches); the profile over 500 calls
        reps, batch, py_calls = 15, 100, 500
        cache = mod.Cache(B, device=dev, dtype=dt, max_len=ctx + 3 * reps * (batch + 3) + 2 * py_calls + 64)
        cache.append(0, kc, kc)
        for name, fn in calls_of:
            host = min(_issue_time(fn, torch, batch, False)[0] for _ in range(reps))
            out[f"{name}_python_only"] = {"host_us": host * 1e6}
        out["profile_prefill"] = _profile(prefill, py_calls)
        out["profile_step"] = _profile(step, py_calls)
        out["profile_step_fused"] = _profile(step_fused, py_calls)
    finally:
        undo()
    return out


def run(args) -> dict:
    import torch

    cuda = not args.smoke
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench/host.py run needs a GPU; use --smoke on the CPU (with TRITON_INTERPRET=1)")
    dev = "cuda" if cuda else "cpu"
    n_prefill, ctx, calls = (16, 64, 3) if args.smoke else (128, 4096, 200)
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "modules": {}}
    res["launcher"] = "Triton's" if args.triton_launcher else "raw"
    for name in args.modules or MODULES:
        mod = _import(name)
        mod.DIRECT = not args.triton_launcher
        res["modules"][name] = _case(mod, torch, dev, n_prefill, ctx, calls, cuda, args.smoke)
    print(render(res))
    out = Path(os.environ.get("OUT", ROOT / "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "host.json").write_text(json.dumps(res, indent=1))
    return res


def render(res: dict) -> str:
    lines = [
        f"host time per call ({res['device']}; N=128 prefill, 4096-token cache, B=1, H=32/8, D=128; "
        f"{res['launcher']} launch)",
        "| module | call | host us | wall us | graph us | eager/graph |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, rows in res["modules"].items():
        for call, r in rows.items():
            if call.startswith("profile") or call == "fused_check":
                continue
            g = r.get("graph_us")
            ratio = r.get("eager_over_graph")
            lines.append(
                f"| {name} | {call} | {r['host_us']:.1f} | {r.get('wall_us', float('nan')):.1f} | "
                f"{'' if g is None else f'{g:.1f}'} | {'' if ratio is None else f'{ratio:.2f}'} |"
            )
    lines.append("\nfused step (decode with k, v) against append-then-decode on a twin cache:")
    for name, rows in res["modules"].items():
        for kind, r in rows["fused_check"].items():
            lines.append(f"  {name} {kind}: max |diff| {r['max_abs_diff']:.3g}, same store: {r['same_store']}")
    for name, rows in res["modules"].items():
        for call in ("profile_prefill", "profile_step", "profile_step_fused"):
            lines += [f"\n{name} {call} (no-op kernels):", rows[call]]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("generate", "run"))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (TRITON_INTERPRET=1)")
    ap.add_argument("--modules", nargs="*", help="a subset of " + ", ".join(MODULES))
    ap.add_argument("--triton-launcher", action="store_true", help="launch through Triton's launcher (no RawLaunch)")
    args = ap.parse_args(argv)
    generate() if args.step == "generate" else run(args)


if __name__ == "__main__":
    main()
