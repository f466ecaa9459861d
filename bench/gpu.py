"""GPU check and benchmark of attnc's generated prefill kernels, in one run of the device tool.

Two steps, on two machines:

    python bench/gpu.py --generate DIR     # here (needs attnc: lark, pydantic, jinja2)
    python3 bench/gpu.py --run DIR         # on the GPU machine (needs torch and triton only)

`--generate` compiles every pattern file in patterns/ and the benchmark cases below into DIR,
with a manifest. `--run` imports the modules from DIR and

1. checks every module against its own torch reference on the GPU (random bf16 inputs,
   N = 1000 and 4096; output relative error and the log-sum-exp), in parallel processes so
   that Triton compiles the kernels on several cores;
   and its gradients (the backward kernels) against autograd through the reference (bf16,
   N = CHECK_N[0]);
2. checks `prefill` under `torch.compile` once, and a training step (forward and backward)
   under `torch.compile(fullgraph=True)`;
3. times each benchmark case (B=1, H=32, D=128, bf16): the generated kernel, FlexAttention
   with the same mask_mod (torch.compile'd flex_attention, block mask built once) and SDPA
   dense causal, as medians of triton.testing.do_bench; effective TFLOP/s count allowed
   pairs only (4 * D * pairs * B * H), pairs counted exactly from the mask on the GPU; then
   forward + backward of the same three (a second table);
4. writes docs/benchmarks.md (and $OUT/benchmarks.md when $OUT is set) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode as decode_bench  # noqa: E402  (bench/decode.py: the decode half of this benchmark)
from timing import interleaved  # noqa: E402  (bench/timing.py)

sys.path.insert(0, str(ROOT))
from compiler import simulate  # noqa: E402  (numpy only: runs on the GPU machine without attnc installed)
from codegen.importing import import_module_from_path  # noqa: E402  (the standard library only)

# the device profile predictions are made with: $ATTNC_PROFILE (bench/calibrate.py's output), else
# the shipped profile of the GPU that runs (h100, h200), else h100 (set in main)
PROFILE = os.environ.get("ATTNC_PROFILE", "")


def profile_for(device: str) -> str:
    """$ATTNC_PROFILE, else the shipped profile named after this GPU, else h100."""
    name = simulate.device_profile_name(device)
    return PROFILE or (name if name in simulate.shipped_profiles() else "h100")


# name: (.attn text, sequence lengths, what it is)
CASES = {
    "causal": ("pattern causal = causal\n", [8192, 32768], "causal"),
    "sink_window_1024": (
        "pattern sink_window_1024 = causal & (sink(4) | window(1024))\n",
        [32768],
        "causal & (sink(4) | window(1024))",
    ),
    "sink_window_4096": (
        "pattern sink_window_4096 = causal & (sink(4) | window(4096))\n",
        [32768],
        "causal & (sink(4) | window(4096))",
    ),
    "dilated": ("pattern dilated = causal & dilated(2048, 4)\n", [32768], "causal & dilated(2048, 4)"),
    "strided": (
        "pattern strided = causal & (window(256) | strided(256))\n",
        [32768],
        "causal & (window(256) | strided(256))",
    ),
    "chunk": ("pattern chunked = causal & chunk(8192)\n", [32768], "causal & chunk(8192)"),
    "power": ("pattern power = causal & power(64)\n", [32768], "causal & power(64)"),
    "duo_mix": (
        "model { layers = 1, heads = 32, kv_heads = 32, head_dim = 128 }\n"
        "pattern duo_mix {\n  heads 0..8: causal\n  rest: causal & (sink(64) | window(960))\n}\n",
        [32768],
        "DuoAttention: 8 causal + 24 sink(64)|window(960) heads",
    ),
    # issue 8's grid cases: 24 heads, against dense (non-causal) SDPA
    "image_13x13": (
        "grid(128, 128)\npattern image_13x13 = neighborhood(kernel = (13, 13))\n",
        [16384],
        "image 128x128, neighborhood 13x13, 24 heads",
    ),
    "video_3x11x11": (
        "grid(16, 48, 80)\npattern video_3x11x11 = neighborhood(kernel = (3, 11, 11))\n",
        [61440],
        "video 16x48x80, neighborhood 3x11x11, 24 heads",
    ),
    # GNA (patterns/gna_image.attn): the image case with 8 x 8 query groups sharing one window
    "gna_image_13x13_s8": (
        "grid(128, 128)\npattern gna_image_13x13_s8 = neighborhood(kernel = (13, 13), stride = (8, 8))\n",
        [16384],
        "image 128x128, neighborhood 13x13, stride 8x8 (GNA), 24 heads",
    ),
}
# cases that differ from B, H, D and causal SDPA
CASE_SHAPE = {
    "image_13x13": {"heads": 24, "causal": False},
    "video_3x11x11": {"heads": 24, "causal": False},
    "gna_image_13x13_s8": {"heads": 24, "causal": False},
}
B, H, D = 1, 32, 128
CHECK_N = (1000, 4096)
BUDGET_S = float(os.environ.get("ATTNC_BENCH_BUDGET", 300))  # stop timing new cases past this many seconds
DEVICE = "cuda"
SMOKE = False  # --smoke: the whole run on the CPU (TRITON_INTERPRET=1), tiny shapes, to test this script


# ------------------------------------------------------------------ --generate (here)
def generate(out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from attnc.codegen.writer import write_module
    from attnc.compiler import simulate
    from attnc.compiler.lower import lower
    from attnc.loader import program_of
    from attnc.spec.resolve import resolve_text

    out.mkdir(parents=True, exist_ok=True)
    manifest = {"modules": []}
    for path in sorted((ROOT / "patterns").glob("*.attn")):
        t0 = time.perf_counter()
        try:
            program = program_of(path)
        except Exception as exc:  # a file the parser rejects: reported, not fatal
            print(f"skip {path.name}: {exc}", file=sys.stderr)
            continue
        program = program.__class__(**{**program.__dict__, "name": f"pattern_{path.stem}"})
        written = write_module(program, out)
        manifest["modules"].append({"file": written.name, "source": f"patterns/{path.name}", "bench": None})
        print(f"{path.name} -> {written.name} ({time.perf_counter() - t0:.2f} s)")
    for name, (text, lengths, label) in CASES.items():
        program = lower(resolve_text(text, f"bench/{name}.attn"))
        program = program.__class__(**{**program.__dict__, "name": f"bench_{name}"})
        written = write_module(program, out)
        shape = {"heads": H, "causal": True, **CASE_SHAPE.get(name, {})}
        workloads = {
            str(n): simulate.prefill_workload(program, simulate.Shape(n, B, shape["heads"], None, D)).to_dict()
            for n in lengths
        }
        manifest["modules"].append(
            {
                "file": written.name,
                "source": f"bench case {name}",
                "bench": {"lengths": lengths, "label": label, "workloads": workloads, **shape},
            }
        )
        print(f"bench case {name} -> {written.name}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


# ------------------------------------------------------------------ --run (GPU machine)
def import_module(path: Path, prefix: str = "attnc_bench"):
    return import_module_from_path(path, f"{prefix}_{path.stem}")


def shape_for(mod, bench: dict | None) -> tuple[int, int, int]:
    """(H, H_KV, D) to check a module with: the benchmark's shape, or the model's where it matters."""
    model = mod.PATTERN["model"]
    if bench:
        return bench.get("heads", H), bench.get("heads", H), D
    heads = model["heads"] if mod.PATTERN["varies_by_head"] else 8
    kv = model["kv_heads"] if mod.PATTERN["varies_by_head"] and model["kv_heads"] else heads // 2
    if kv <= 0 or heads % kv:
        kv = heads
    d = model["head_dim"] if model["head_dim"] in (16, 32, 64, 128, 256) and not SMOKE else D
    return heads, kv, d


def check_module(path: str, bench: dict | None, smoke: bool = False) -> dict:
    """Generated kernel against the module's reference on the GPU; one process per module.

    N = CHECK_N[0] with the log-sum-exp, N = CHECK_N[1] without (the variant that the timing
    runs, so its compiled kernel is in Triton's disk cache by then). For a benchmark case,
    also warm FlexAttention's compilation at the timed lengths (inductor's disk caches).
    """
    import torch

    if smoke:
        _smoke()
    mod = import_module(Path(path))
    heads, kv, d = shape_for(mod, bench)
    layers = range(mod.PATTERN["model"]["layers"]) if mod.PATTERN["varies_by_layer"] else [None]
    layers = sorted({layers[0], layers[-1]}) if len(layers) > 1 else list(layers)
    out = {"file": Path(path).name, "pattern": mod.PATTERN["name"], "shape": [heads, kv, d], "checks": []}
    t0 = time.perf_counter()
    try:
        for n, with_lse in zip(CHECK_N, (True, False)):
            for layer in layers:
                gen = torch.Generator(device=DEVICE).manual_seed(n)
                q = torch.randn(1, heads, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
                k = torch.randn(1, kv, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
                v = torch.randn(1, kv, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
                # a selecting pattern: both fed the same choice (bench/selection.py checks the selection kernel)
                sel = {"indices": mod.select_reference(q, k, layer=layer)} if mod.PATTERN.get("selects") else {}
                o = mod.prefill(q, k, v, layer=layer, return_lse=with_lse, **sel)
                o, lse = o if with_lse else (o, None)
                ref, ref_lse = mod.reference(q, k, v, layer=layer, return_lse=True, **sel)
                rel = ((o.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()
                ok = rel < 1e-2 and not torch.isnan(o).any().item()
                lse_err = 0.0
                if with_lse:
                    fin = torch.isfinite(ref_lse)
                    lse_err = (lse[fin] - ref_lse[fin]).abs().max().item() if fin.any() else 0.0
                    ok = ok and bool(torch.equal(torch.isfinite(lse), fin)) and lse_err < 1e-2
                out["checks"].append({"n": n, "layer": layer, "rel_err": rel, "lse_err": lse_err, "ok": ok})
                if not with_lse:
                    out["checks"].append(check_layout(mod, q, k, v, o, layer, sel))
                del q, k, v, o, ref, ref_lse
        selects = mod.PATTERN.get("selects")  # no backward for selection at run time
        out["grads"] = [] if selects else [check_grad(mod, heads, kv, d, layer) for layer in layers]
        if hasattr(mod, "_GRID_SHAPE") and not smoke:
            out["checks"].extend(check_grid(mod, heads, kv, d))
            out["grads"].extend(check_grid_grads(mod, heads, kv, d))
    except Exception:
        out["error"] = traceback.format_exc(limit=6)
    if bench is not None and not smoke and "error" not in out:
        t1 = time.perf_counter()
        try:  # only a warm-up: a failure here is FlexAttention's, reported with its timing
            warm_flex(mod, bench["lengths"], bench.get("heads", H))
        except Exception as exc:
            out["flex_warm_error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["flex_warm_s"] = time.perf_counter() - t1
    out["seconds"] = time.perf_counter() - t0
    out["ok"] = "error" not in out and all(c["ok"] for c in out["checks"] + out.get("grads", []))
    return out


def as_projected(t):
    """t (B, H, N, D) in a model's layout: its (B, N, H, D) projection viewed as (B, H, N, D)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def check_layout(mod, q, k, v, o, layer, sel: dict) -> dict:
    """The same call on q, k, v in a model's layout (as_projected): the same output (against o,
    the contiguous inputs' output), in q's layout (prefill's output follows q's strides)."""
    qs, ks, vs = (as_projected(t) for t in (q, k, v))
    got = mod.prefill(qs, ks, vs, layer=layer, **sel)
    rel = ((got.float() - o.float()).norm() / o.float().norm().clamp_min(1e-12)).item()
    same_layout = got.stride() == qs.stride()
    return {"n": q.shape[2], "layer": layer, "layout": "projected", "rel_err": rel, "lse_err": 0.0,
            "same_layout": same_layout, "ok": rel < 1e-3 and same_layout}  # fmt: skip


GRAD_TOL = 2e-2  # bf16 gradients: relative error (Frobenius) against the float32 reference's


def check_grad(mod, heads: int, kv: int, d: int, layer) -> dict:
    """dq, dk, dv of the backward kernels against autograd through the module's reference (which
    computes in float32), bf16 inputs, N = CHECK_N[0], loss sum(out * dout)."""
    import torch

    n = CHECK_N[0]
    gen = torch.Generator(device=DEVICE).manual_seed(n + 1)
    q, k, v = (torch.randn(1, h, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen) for h in (heads, kv, kv))
    dout = torch.randn(1, heads, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)

    def grads(fn):
        args = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        fn(*args, layer=layer).backward(dout)
        return [a.grad.float() for a in args]

    rel = {}
    for name, g, r in zip(("dq", "dk", "dv"), grads(mod.prefill), grads(mod.reference)):
        rel[name] = ((g - r).norm() / r.norm().clamp_min(1e-12)).item() if torch.isfinite(g).all() else float("nan")
    return {"n": n, "layer": layer, "rel_err": rel, "ok": all(e < GRAD_TOL for e in rel.values())}


def check_grid(mod, heads: int, kv: int, d: int) -> list[dict]:
    """The tile-order kernel runs only at N = prefix + grid tokens: check it there, against the
    module's reference up to 16K tokens (2 heads), beyond against the generic kernel (checked
    against the reference at CHECK_N above) on the same inputs."""
    import torch

    out = []
    for n in sorted({prefix + size for _, prefix, size in filter(None, mod._GRID_SHAPE)}):
        small = n <= 16384
        h = min(heads, 2) if small and not mod.PATTERN["varies_by_head"] else heads
        hk = kv if h == heads else 1
        gen = torch.Generator(device=DEVICE).manual_seed(n)
        q = torch.randn(1, h, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, hk, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, hk, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        o = mod.prefill(q, k, v)
        ref = mod.reference(q, k, v) if small else mod._forward(q, k, v, None, False, None, config={"GRID": False})[0]
        rel = ((o.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()
        out.append(
            {
                "n": n,
                "layer": None,
                "rel_err": rel,
                "lse_err": 0.0,
                "ok": rel < 1e-2,
                "against": "reference" if small else "generic kernel",
            }
        )
        out.append(check_layout(mod, q, k, v, o, None, {}))
        del q, k, v, o, ref
        torch.cuda.empty_cache()
    return out


def check_grid_grads(mod, heads: int, kv: int, d: int) -> list[dict]:
    """The tile-order backward kernels at N = grid tokens: against autograd through the module's
    reference up to 16K tokens (2 heads), beyond against the generic backward kernels on the
    same inputs (GRID=False)."""
    import torch

    out = []
    for n in sorted({size for _, prefix, size in filter(None, mod._GRID_SHAPE) if not prefix}):
        small = n <= 16384
        h = min(heads, 2) if small and not mod.PATTERN["varies_by_head"] else heads
        hk = kv if h == heads else 1
        gen = torch.Generator(device=DEVICE).manual_seed(n + 2)
        q, k, v = (torch.randn(1, x, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen) for x in (h, hk, hk))
        dout = torch.randn(1, h, n, d, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        o, lse = mod._forward(q, k, v, None, True, None)
        got = mod._backward(dout, q, k, v, o, lse, None, None, None, True, True)
        if small:
            args = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            mod.reference(*args).backward(dout)
            want = [a.grad for a in args]
        else:
            want = mod._backward(dout, q, k, v, o, lse, None, None, None, True, True, {"GRID": False})
        rel = {
            name: ((g.float() - r.float()).norm() / r.float().norm().clamp_min(1e-12)).item()
            for name, g, r in zip(("dq", "dk", "dv"), got, want)
        }
        ok = all(e < GRAD_TOL for e in rel.values())
        out.append({"n": n, "layer": None, "rel_err": rel, "ok": ok, "against": "reference" if small else "generic"})
        del q, k, v, dout, o, lse, got, want
        torch.cuda.empty_cache()
    return out


def warm_flex(mod, lengths, heads: int = 0) -> None:
    """Compile FlexAttention (and the timed kernel) for a case's shapes once, in this worker."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex_fn = torch.compile(flex_attention, dynamic=False)
    heads = heads or H
    for n in lengths:
        q, k, v = (torch.randn(B, heads, n, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        mask_mod, per_head = mask_mod_of(mod, DEVICE)
        block_mask = create_block_mask(
            mask_mod, B=None, H=heads if per_head else None, Q_LEN=n, KV_LEN=n, device=DEVICE, _compile=True
        )
        flex_fn(q, k, v, block_mask=block_mask)
        mod.prefill(q, k, v)
        torch.cuda.synchronize()
        del block_mask, q, k, v
        torch.cuda.empty_cache()


def check_all(folder: Path, modules: list[dict]) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(8, len(modules)), mp_context=ctx) as pool:
        # the benchmark cases first: their FlexAttention warm-up takes longest
        order = sorted(range(len(modules)), key=lambda i: modules[i]["bench"] is None)
        futures = {
            i: pool.submit(check_module, str(folder / modules[i]["file"]), modules[i]["bench"], SMOKE) for i in order
        }
        return [futures[i].result() for i in range(len(modules))]
        return [f.result() for f in futures]


def check_compile(mod) -> str:
    import torch

    heads = mod.PATTERN["model"]["heads"] if mod.PATTERN["varies_by_head"] else 4
    q, k, v = (torch.randn(1, heads, CHECK_N[0], 128, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    fn = torch.compile(
        lambda q, k, v: mod.prefill(q, k, v, return_lse=True)[0] * 2,
        fullgraph=True,
        backend="aot_eager" if SMOKE else "inductor",
    )
    got = fn(q, k, v)
    want = mod.prefill(q, k, v) * 2
    return "ok" if torch.equal(got, want) else f"MISMATCH {(got.float() - want.float()).abs().max().item():.3g}"


def check_compile_training(mod) -> str:
    """A training step (a projection, prefill, a loss, backward) under torch.compile(fullgraph=True)
    against the same step run eagerly: the gradients' largest relative difference."""
    import torch

    heads = mod.PATTERN["model"]["heads"] if mod.PATTERN["varies_by_head"] else 4
    gen = torch.Generator(device=DEVICE).manual_seed(7)
    q, k, v = (
        torch.randn(1, heads, CHECK_N[0], D, device=DEVICE, dtype=torch.bfloat16, generator=gen) for _ in range(3)
    )
    w = torch.randn(D, D, device=DEVICE, dtype=torch.bfloat16, generator=gen) / D**0.5

    def step(q, k, v, w):
        return mod.prefill(q @ w, k, v).float().square().mean()

    def grads(fn):
        args = [t.clone().requires_grad_() for t in (q, k, v, w)]
        fn(*args).backward()
        return [a.grad.float() for a in args]

    fn = torch.compile(step, fullgraph=True, backend="aot_eager" if SMOKE else "inductor")
    diff = max(((g - r).norm() / r.norm().clamp_min(1e-12)).item() for g, r in zip(grads(fn), grads(step)))
    return "ok" if diff < GRAD_TOL else f"MISMATCH: relative gradient difference {diff:.3g}"


def mask_mod_of(mod, device):
    """FlexAttention's mask_mod from the module's torch predicate (per-head groups by a table)."""
    import torch

    masks = mod._MASKS_TORCH
    row = mod._GROUP_TABLE[0]
    if len(set(row)) == 1:
        fn = masks[row[0]]
        return (lambda b, h, q, k: fn(q, k)), False
    table = torch.tensor(row, device=device, dtype=torch.int32)
    groups = sorted(set(row))

    def mask_mod(b, h, q, k):
        g = table[h]
        out = (g == groups[0]) & masks[groups[0]](q, k)
        for i in groups[1:]:
            out = out | ((g == i) & masks[i](q, k))
        return out

    return mask_mod, True


def allowed_pairs(mod, n: int, device, heads: int) -> int:
    """Exact count of allowed (q, k) pairs over all heads of the model row, in row chunks."""
    import torch

    row = mod._GROUP_TABLE[0] if mod.PATTERN["varies_by_head"] else [mod._GROUP_TABLE[0][0]] * heads
    total = 0
    k = torch.arange(n, device=device)[None, :]
    for g in set(row):
        count = 0
        for s in range(0, n, 2048):
            q = torch.arange(s, min(s + 2048, n), device=device)[:, None]
            count += int(torch.broadcast_to(mod._MASKS_TORCH[g](q, k), (q.shape[0], n)).sum().item())
        total += count * row.count(g)
    return total


def _bench(fn, grads=None) -> float:
    """Median milliseconds of fn (triton.testing.do_bench; a wall clock in --smoke); `grads`:
    tensors whose .grad is reset between runs (a backward accumulates into it)."""
    if SMOKE:
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=100, rep=400, return_mode="median", grad_to_none=grads)


_SDPA_MS: dict[tuple[int, int, bool], float] = {}


def time_case(mod, n: int, flex_fn, heads: int = 0, causal: bool = True, baseline=None) -> dict:
    """attnc, FlexAttention (same mask) and SDPA (dense: causal, or full for non-causal cases);
    with `baseline` (the same case from another build of attnc), its time too, on the same inputs,
    the two timed in alternation (three rounds, median of each)."""
    import torch
    import torch.nn.functional as F

    heads = heads or H
    q, k, v = (torch.randn(B, heads, n, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    pairs = allowed_pairs(mod, n, DEVICE, heads)
    flops = 4 * D * pairs * B  # pairs already summed over heads
    res = {"n": n, "heads": heads, "pairs": pairs, "density": pairs / (heads * n * n)}
    if baseline is None:
        ms = _bench(lambda: mod.prefill(q, k, v))
    else:
        ms, res["baseline_ms"] = interleaved(
            [lambda: _bench(lambda: mod.prefill(q, k, v)), lambda: _bench(lambda: baseline.prefill(q, k, v))]
        )
    res.update(attnc_ms=ms, attnc_tflops=flops / ms / 1e9)
    try:
        from torch.nn.attention.flex_attention import create_block_mask

        mask_mod, per_head = mask_mod_of(mod, DEVICE)
        block_mask = create_block_mask(
            mask_mod, B=None, H=heads if per_head else None, Q_LEN=n, KV_LEN=n, device=DEVICE, _compile=not SMOKE
        )
        fms = _bench(lambda: flex_fn(q, k, v, block_mask=block_mask))
        res.update(flex_ms=fms, flex_tflops=flops / fms / 1e9)
    except Exception as exc:
        res["flex_error"] = f"{type(exc).__name__}: {exc}"[:300]
    key = (n, heads, causal)
    if key not in _SDPA_MS:
        _SDPA_MS[key] = _bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    sms = _SDPA_MS[key]
    dense_pairs = n * (n + 1) / 2 if causal else n * n
    res.update(
        sdpa_ms=sms, sdpa_tflops=4 * D * B * heads * dense_pairs / sms / 1e9, sdpa="causal" if causal else "full"
    )
    return res


def time_training(mod, n: int, flex_fn, heads: int = 0, causal: bool = True) -> dict:
    """Forward + backward (given dout) of attnc, FlexAttention (same mask_mod) and SDPA, ms."""
    import torch
    import torch.nn.functional as F

    heads = heads or H
    q, k, v = (torch.randn(B, heads, n, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(B, heads, n, D, device=DEVICE, dtype=torch.bfloat16)

    def step(fn):
        return lambda: fn(q, k, v).backward(dout)

    res = {"attnc_fb_ms": _bench(step(mod.prefill), [q, k, v])}
    try:
        from torch.nn.attention.flex_attention import create_block_mask

        mask_mod, per_head = mask_mod_of(mod, DEVICE)
        block_mask = create_block_mask(
            mask_mod, B=None, H=heads if per_head else None, Q_LEN=n, KV_LEN=n, device=DEVICE, _compile=not SMOKE
        )
        res["flex_fb_ms"] = _bench(step(lambda q, k, v: flex_fn(q, k, v, block_mask=block_mask)), [q, k, v])
    except Exception as exc:
        res["flex_fb_error"] = f"{type(exc).__name__}: {exc}"[:300]
    res["sdpa_fb_ms"] = _bench(
        step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)), [q, k, v]
    )
    return res


def _status(check, module_of) -> str:
    """A compile check's answer for the first bench module (imported by `module_of`), or why it
    did not run."""
    if module_of is None:
        return "not run"
    try:
        return check(module_of())
    except Exception as exc:
        return f"FAILED: {type(exc).__name__}: {exc}"[:300]


def run(folder: Path, baseline: Path | None = None, decode: bool = True, check_only: bool = False) -> int:
    import torch
    import triton

    # every case compiles flex_attention and create_block_mask anew; past dynamo's default limit
    # of 8 recompilations they fall back to eager code that materialises N x N masks
    for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 1024)
    t_start = time.perf_counter()
    manifest = json.loads((folder / "manifest.json").read_text())
    modules = manifest["modules"]
    device = "CPU (smoke test, TRITON_INTERPRET=1)" if SMOKE else torch.cuda.get_device_name()
    global PROFILE
    PROFILE = profile_for(device)
    print(
        f"{device}; torch {torch.__version__}; triton {triton.__version__}; {len(modules)} modules; profile {PROFILE}",
        flush=True,
    )

    checks = check_all(folder, modules)
    for c in checks:
        detail = ", ".join(
            f"N={x['n']}{'' if x['layer'] is None else ' L' + str(x['layer'])}: "
            f"rel {x['rel_err']:.1e} lse {x['lse_err']:.1e}"
            for x in c["checks"]
        )
        detail += "".join(
            f"; grads N={x['n']}{'' if x['layer'] is None else ' L' + str(x['layer'])}: "
            + " ".join(f"{k} {e:.1e}" for k, e in x["rel_err"].items())
            for x in c.get("grads", [])
        )
        warm = f", flex warm-up {c['flex_warm_s']:.0f} s" if "flex_warm_s" in c else ""
        warm += f" (FlexAttention warm-up failed: {c['flex_warm_error']})" if "flex_warm_error" in c else ""
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['file']} H,KV,D={c['shape']} ({c['seconds']:.0f} s{warm}) {detail}")
        if "error" in c:
            print(c["error"])
    print(f"checks done at {time.perf_counter() - t_start:.0f} s", flush=True)
    if check_only:
        return 0 if all(c["ok"] for c in checks) else 1

    bench = [m for m in modules if m["bench"]]
    first = (lambda: import_module(folder / bench[0]["file"])) if bench else None
    compile_status = _status(check_compile, first)
    print(f"torch.compile(prefill): {compile_status}", flush=True)
    train_status = _status(check_compile_training, first)
    print(f"torch.compile(training step): {train_status}", flush=True)

    from torch.nn.attention.flex_attention import flex_attention

    flex_fn = flex_attention if SMOKE else torch.compile(flex_attention, dynamic=False)
    rows = []
    for m in bench:
        for n in m["bench"]["lengths"]:
            over = time.perf_counter() - t_start > BUDGET_S
            if over and not (SMOKE and not rows):  # --smoke times its first case whatever the budget
                rows.append({"label": m["bench"]["label"], "n": n, "skipped": "time budget"})
                continue
            mod = import_module(folder / m["file"])
            workload = m["bench"]["workloads"][str(n)]
            n = min(n, 96) if SMOKE else n
            base = baseline / m["file"] if baseline is not None and (baseline / m["file"]).exists() else None
            try:
                r = time_case(
                    mod,
                    n,
                    flex_fn,
                    m["bench"].get("heads", H),
                    m["bench"].get("causal", True),
                    import_module(base, "attnc_baseline") if base else None,
                )
            except Exception as exc:
                r = {"n": n, "error": f"{type(exc).__name__}: {exc}"[:300]}
            if "error" not in r and (time.perf_counter() - t_start <= BUDGET_S or len(rows) == 0 and SMOKE):
                try:
                    r.update(time_training(mod, n, flex_fn, m["bench"].get("heads", H), m["bench"].get("causal", True)))
                except Exception as exc:
                    r["fb_error"] = f"{type(exc).__name__}: {exc}"[:300]
            r["label"] = m["bench"]["label"]
            r["predicted_ms"] = simulate.predict(workload, profile=PROFILE)
            r["predicted_fb_ms"] = simulate.predict(workload, profile=PROFILE, training=True)
            rows.append(r)
            torch.cuda.empty_cache() if not SMOKE else None
            print(json.dumps(r), flush=True)
    table = render_table(rows)
    if baseline is not None:
        table += "\n\n" + render_baseline(rows)
    training = render_training(rows)
    text = render_markdown(
        device, torch.__version__, triton.__version__, checks, compile_status, table, train_status, training
    )
    if decode and not SMOKE:
        text += decode_section()
    text += model_section(ROOT / "docs" / "benchmarks.md")
    if not SMOKE:
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "benchmarks.md").write_text(text)
    if os.environ.get("OUT"):
        simulate.fill_error_section(
            ROOT / "docs" / "simulate.md",
            rows,
            Path(os.environ["OUT"], "simulate.md"),
            source=f"bench/gpu.py on {datetime.date.today().isoformat()}, {device}, profile {PROFILE}",
        )
        Path(os.environ["OUT"], "benchmarks.md").write_text(text)
        Path(os.environ["OUT"], "bench.json").write_text(json.dumps({"checks": checks, "rows": rows}, indent=1))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(table)
    print(training)
    return 0 if all(c["ok"] for c in checks) else 1


def decode_section() -> str:
    """Run bench/decode.py (cache + decode kernel against SDPA and FlexAttention) and return its
    table as a markdown section; its full numbers go to $OUT/decode_bench.json."""
    captured = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, text):
            captured.write(text)
            return sys.__stdout__.write(text)

    try:
        with contextlib.redirect_stdout(Tee()):
            decode_bench.run(argparse.Namespace(sweep=False, quick=False, no_flex=False, budget=180))
    except Exception as exc:  # the prefill table is still worth writing
        captured.write(f"decode benchmark failed: {type(exc).__name__}: {exc}")
    lines = [l for l in captured.getvalue().splitlines() if not l.startswith(("{", "check"))]
    return (
        "\n## Decode, B=8, 32 query heads, 8 KV heads, D=128, bf16\n\n"
        "From `bench/decode.py` (called by `bench/gpu.py`): SDPA over the full cache, FlexAttention "
        "decoding, and the generated cache + decode kernel; TB/s = bytes the method must read / time; "
        "'graph' rows are CUDA-graph replays (GPU time without launch overhead).\n\n```\n"
        + "\n".join(lines).strip()
        + "\n```\n"
    )


MODEL_SECTION = "\n## Inside a model"


def model_section(path: Path) -> str:
    """The section bench/model.py's results fill (from its heading to the end), kept as it is."""
    old = path.read_text() if path.exists() else ""
    at = old.find(MODEL_SECTION)
    return old[at:] if at >= 0 else ""


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def render_table(rows: list[dict]) -> str:
    head = (
        "| case | N | density | attnc ms | attnc TFLOP/s | Flex ms | Flex TFLOP/s | SDPA ms "
        "| SDPA TFLOP/s | vs Flex | vs SDPA | predicted ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append(f"| {_md(r['label'])} | {r['n']} | {_md(r.get('skipped') or r.get('error'))} |" + " |" * 9)
            continue
        flex = r.get("flex_ms")
        lines.append(
            f"| {_md(r['label'])} | {r['n']} | {r['density']:.3f} | {r['attnc_ms']:.3f} | {r['attnc_tflops']:.0f} "
            f"| {_f(flex, '.3f')} | {_f(r.get('flex_tflops'), '.0f')} | {r['sdpa_ms']:.3f} ({r.get('sdpa', 'causal')}) "
            f"| {r['sdpa_tflops']:.0f} "
            f"| {_f(flex and flex / r['attnc_ms'], '.2f')}x | {r['sdpa_ms'] / r['attnc_ms']:.2f}x "
            f"| {_f(r.get('predicted_ms'), '.3f')} |"
        )
    return "\n".join(lines)


def render_training(rows: list[dict]) -> str:
    """Forward + backward times per case (above 1 in `vs`: attnc is faster)."""
    lines = [
        "| case | N | attnc ms | Flex ms | SDPA ms | vs Flex | vs SDPA | predicted ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "attnc_fb_ms" not in r:
            why = r.get("fb_error") or r.get("skipped") or r.get("error") or "time budget"
            lines.append(f"| {_md(r['label'])} | {r['n']} | {_md(why)} |" + " |" * 5)
            continue
        a, flex = r["attnc_fb_ms"], r.get("flex_fb_ms")
        lines.append(
            f"| {_md(r['label'])} | {r['n']} | {a:.3f} | {_f(flex, '.3f')} | {r['sdpa_fb_ms']:.3f} "
            f"| {_f(flex and flex / a, '.2f')}x | {r['sdpa_fb_ms'] / a:.2f}x "
            f"| {_f(r.get('predicted_fb_ms'), '.3f')} |"
        )
    return "\n".join(lines)


def render_baseline(rows: list[dict]) -> str:
    """attnc against the baseline build, case by case (above 1: this build is faster)."""
    lines = ["| case | N | attnc ms | baseline ms | baseline / attnc |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if "baseline_ms" in r:
            lines.append(
                f"| {_md(r['label'])} | {r['n']} | {r['attnc_ms']:.3f} | {r['baseline_ms']:.3f} "
                f"| {r['baseline_ms'] / r['attnc_ms']:.3f} |"
            )
    return "\n".join(lines)


def render_markdown(
    device, torch_version, triton_version, checks, compile_status, table, train_status="not run", training=""
) -> str:
    ok = sum(c["ok"] for c in checks)
    failed = [c["file"] for c in checks if not c["ok"]]
    return (
        f"# attnc prefill kernels on the GPU\n\n"
        f"Generated by `bench/gpu.py` on {datetime.date.today().isoformat()}: {device}, torch {torch_version}, "
        f"triton {triton_version}.\n\n"
        f"## Correctness\n\n{ok} of {len(checks)} generated modules match their torch reference on the GPU "
        f"(bf16, random inputs, N = {' and '.join(map(str, CHECK_N))}; relative error < 1e-2, log-sum-exp "
        f"within 1e-2, -inf exactly on rows without keys){'; failed: ' + ', '.join(failed) if failed else ''}. "
        f"Modules with a grid are also checked at N = prefix + grid tokens, where the tile-order kernel runs: "
        f"against the reference up to 16K tokens, beyond against the generic kernel.\n"
        f"Gradients (the backward kernels) are checked against autograd through the reference, bf16, "
        f"N = {CHECK_N[0]}, relative error < {GRAD_TOL:g} for dq, dk and dv.\n"
        f"`prefill` under `torch.compile(fullgraph=True)`: {compile_status}; a training step (forward and "
        f"backward): {train_status}.\n\n"
        f"## Prefill forward, B={B}, H={H} (24 for the grid cases), D={D}, bf16\n\n"
        f"Medians of `triton.testing.do_bench`. TFLOP/s count the allowed pairs only (4 * D * pairs); SDPA runs "
        f"dense attention, causal for causal patterns and full for the grid cases (its TFLOP/s count the pairs "
        f"it computes). `vs Flex` and `vs SDPA` are the other "
        f"kernel's time over attnc's (above 1: attnc is faster). FlexAttention: torch.compile'd "
        f"`flex_attention` with the module's mask predicate as `mask_mod`, block mask built once.\n\n"
        f"{table}\n\n"
        f"## Training step: forward + backward, same shapes\n\n"
        f"Forward then backward with a given dout, medians of `do_bench` (gradients reset between runs). "
        f"attnc's backward: the generated FlashAttention-2 kernels (docs/training.md); predicted: "
        f"`attnc simulate --backward`'s model.\n\n{training}\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--generate", type=Path, metavar="DIR", help="compile patterns/ and the bench cases into DIR")
    g.add_argument("--run", type=Path, metavar="DIR", help="check and time the modules in DIR (GPU)")
    p.add_argument("--smoke", action="store_true", help="with --run: on the CPU, tiny shapes (tests this script)")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="with --run: also time the bench cases of another build's --generate DIR",
    )
    p.add_argument("--no-decode", action="store_true", help="with --run: skip the decode benchmark (bench/decode.py)")
    p.add_argument("--check-only", action="store_true", help="with --run: the correctness checks alone (no timing)")
    args = p.parse_args(argv)
    if args.generate:
        generate(args.generate)
        decode_bench.generate()
        return 0
    if args.smoke:
        _smoke()
    return run(args.run, args.baseline, decode=not args.no_decode, check_only=args.check_only)


def _smoke() -> None:
    global DEVICE, SMOKE, CHECK_N, H, D
    os.environ["TRITON_INTERPRET"] = "1"
    DEVICE, SMOKE, CHECK_N, H, D = "cpu", True, (37, 70), 32, 16


if __name__ == "__main__":
    sys.exit(main())
