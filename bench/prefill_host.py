"""Host and GPU time of one prefill call, with the TMA descriptors built on the host
(USE_TMA 2) or in the kernel (USE_TMA 3), and host-side ones launched through Triton's
launcher (which encodes them at every launch) or through attnc's raw launch (launch.RawLaunch:
encoded once per address).

    python bench/host.py generate                       # here (needs attnc): bench/generated/host_*.py
    python3 bench/prefill_host.py                       # on the GPU machine (torch and triton only)
    TRITON_INTERPRET=1 python bench/prefill_host.py --smoke   # CPU, tiny shapes (a test runs it)

For the dense causal and the StreamingLLM modules of bench/host.py (B=1, H=32, H_KV=8, D=128,
bf16) at N = 128, 1024, 4096, each variant in turn (the Hopper rows of the module's CONFIGS
set to it, the memo cleared):
- host us: the time to issue `calls` prefill calls while the GPU is kept busy by a long
  kernel queued first (torch.cuda._sleep), divided by `calls`: the host's cost alone, the
  GPU never holding it back ("busy" says whether the GPU was still busy at the end);
- gpu us: GPU time per call from replays of a CUDA graph of 20 calls;
- max |diff| against torch's scaled_dot_product_attention (causal, or the pattern's mask) and
  whether the two variants' outputs are bitwise equal;
- python us: attnc's own Python per call (no-op kernels in place of the compiled ones, as
  bench/host.py does), and a CPU profile of it (--profile).
SDPA's host and GPU time at each N are printed for scale. Writes $OUT/prefill_host.json
(default ./out/prefill_host.json).

On the CPU (--smoke, TRITON_INTERPRET=1): tiny shapes through the interpreter, each variant
forced with a config override (the CPU configuration has no TMA), and attnc's Python per call
with no-op kernels and the H100's plan (capability 9.0 assumed for the configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from host import _import, _profile, _python_only
from timing import graph_time

ROOT = Path(__file__).resolve().parent.parent
MODULES = {"host_causal": "causal", "host_streaming": "streaming"}  # generated module: label
VARIANTS = {  # name: (USE_TMA, raw launch)
    "host descriptors": (2, True),
    "host descriptors, Triton's launcher": (2, False),
    "device descriptors": (3, True),
}


def set_variant(mod, tma: int, direct: bool = True) -> None:
    """The module's TMA rows read through `tma` (2 or 3), its launches bound to the raw launch
    or not (`direct`); the memo starts again."""
    for _, _, _, cfg in mod.CONFIGS:
        if cfg.get("USE_TMA"):
            cfg["USE_TMA"] = tma
    mod.DIRECT = direct
    mod._CONFIG_CACHE.clear()


def sdpa(torch, mod, q, k, v, causal: bool):
    """A call of torch's SDPA over the same pattern: causal, or the module's mask (made once;
    one head: the patterns here are the same for every head)."""
    import torch.nn.functional as F

    if causal:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    m = mod.mask(q.shape[2], heads=1, device=q.device)
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)


def busy_issue_time(torch, fn, calls: int, reps: int = 5) -> tuple[float, bool]:
    """(best host seconds per call, whether the GPU was still busy after the last issue): `calls`
    calls issued behind a long sleep kernel, so the host never waits for the GPU."""
    best, busy = float("inf"), True
    for _ in range(reps):
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)  # ~0.1 s at 2 GHz: longer than `calls` issues
        marker = torch.cuda.Event()
        marker.record()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        busy = busy and not marker.query()
        best = min(best, (t1 - t0) / calls)
    torch.cuda.synchronize()
    return best, busy


def python_time(mod, torch, fn, profile: bool) -> tuple[float, str]:
    """attnc's own Python per call (no-op kernels; the best of 15 batches of 100), and its profile."""
    undo = _python_only(mod, torch)
    try:
        for _ in range(5):
            fn()
        best = float("inf")
        for _ in range(15):
            t0 = time.perf_counter()
            for _ in range(100):
                fn()
            best = min(best, (time.perf_counter() - t0) / 100)
        return best, _profile(fn, 1000, 14) if profile else ""
    finally:
        undo()


def run_gpu(args) -> dict:
    import torch
    import triton

    from timing import interleaved

    dt, dev, H, HK, D = torch.bfloat16, "cuda", 32, 8, 128
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rows": []}  # fmt: skip
    for name, label in MODULES.items():
        if args.modules and name not in args.modules:
            continue
        mod = _import(name)
        for n in args.n:
            g = torch.Generator(device=dev).manual_seed(n)
            q = torch.randn(1, H, n, D, device=dev, dtype=dt, generator=g)
            k, v = (torch.randn(1, HK, n, D, device=dev, dtype=dt, generator=g) for _ in range(2))
            s_fn = sdpa(torch, mod, q, k, v, label == "causal")
            ref = s_fn()
            fn = lambda: mod.prefill(q, k, v)  # noqa: E731
            memos, outs, rows = {}, {}, {}
            for vname, (tma, direct) in VARIANTS.items():  # each variant's plans (launches), kept apart
                set_variant(mod, tma, direct)
                try:
                    outs[vname] = fn()
                    fn()
                except Exception as e:  # a variant that does not run here: the other one is still measured
                    res["rows"].append({"module": label, "N": n, "variant": vname, "error": repr(e)[:300]})
                    continue
                memos[vname] = dict(mod._CONFIG_CACHE)
                py, prof = python_time(mod, torch, fn, args.profile and n == args.n[0])
                rows[vname] = {"module": label, "N": n, "variant": vname, "python_us": py * 1e6, "profile": prof,
                               "max_abs_diff_vs_sdpa": (outs[vname].float() - ref.float()).abs().max().item()}  # fmt: skip

            def timed(vname, how):
                def measure():
                    mod._CONFIG_CACHE.clear()
                    mod._CONFIG_CACHE.update(memos[vname])
                    return how()

                return measure

            # the variants in alternation (the card's clocks drift between back-to-back runs)
            hosts = interleaved([timed(t, lambda: busy_issue_time(torch, fn, args.calls)) for t in rows])
            gpus = interleaved([timed(t, lambda: graph_time(fn, torch, 20)) for t in rows])
            for row, (host, busy), gpu in zip(rows.values(), hosts, gpus):
                row.update(host_us=host * 1e6, busy=busy, gpu_us=gpu * 1e6)
                res["rows"].append(row)
            if len(outs) > 1:
                first = next(iter(outs.values()))
                res["rows"][-1]["bitwise_equal_variants"] = all(torch.equal(o, first) for o in outs.values())
            s_host, s_busy = busy_issue_time(torch, s_fn, args.calls)
            row = {"module": label, "N": n, "variant": "torch SDPA", "host_us": s_host * 1e6, "busy": s_busy}
            try:
                row["gpu_us"] = graph_time(s_fn, torch, 20) * 1e6
            except RuntimeError as e:  # not capturable here: host time only
                row["error"] = repr(e)[:300]
            res["rows"].append(row)
        set_variant(mod, 2)
    return res


def _interpreted() -> dict:
    """The variants that differ without a GPU (the interpreter has no launcher): name: USE_TMA."""
    return {name: tma for name, (tma, direct) in VARIANTS.items() if direct}


def run_smoke(args) -> dict:
    """The CPU: both variants through the interpreter against SDPA at tiny shapes, and attnc's
    Python per call with the H100's plan and no-op kernels."""
    import torch

    res = {"device": "cpu", "torch": torch.__version__, "rows": []}
    for name, label in MODULES.items():
        mod = _import(name)
        for n in (16, 40):
            g = torch.Generator().manual_seed(n)
            q = torch.randn(1, 4, n, 16, generator=g)
            k, v = (torch.randn(1, 1, n, 16, generator=g) for _ in range(2))
            ref = sdpa(torch, mod, q, k, v, label == "causal")()
            outs = {}
            for vname, tma in _interpreted().items():
                outs[tma], _ = mod._forward(q, k, v, None, False, None, config={"USE_TMA": tma})
                diff = (outs[tma] - ref).abs().max().item()
                res["rows"].append({"module": label, "N": n, "variant": vname, "max_abs_diff_vs_sdpa": diff})
            res["rows"][-1]["bitwise_equal_variants"] = torch.equal(outs[2], outs[3])
        # attnc's Python with the H100's plan (TMA rows) on CPU tensors, no-op kernels
        mod.device_key.__globals__["device_key"] = lambda device, dtype: ((9, 0), "16bit")
        q = torch.randn(1, 32, 128, 128, dtype=torch.bfloat16)
        k, v = (torch.randn(1, 8, 128, 128, dtype=torch.bfloat16) for _ in range(2))
        for vname, tma in _interpreted().items():
            set_variant(mod, tma)
            py, prof = python_time(mod, torch, lambda: mod.prefill(q, k, v), args.profile)
            res["rows"].append({"module": label, "N": 128, "variant": vname, "python_us": py * 1e6, "profile": prof})
    return res


def render(res: dict) -> str:
    lines = [f"prefill host time per call ({res['device']}; B=1, H=32/8, D=128, bf16)",
             "| module | N | variant | host us | busy | gpu us | python us | max diff vs SDPA | equal |",
             "|---|---:|---|---:|---|---:|---:|---:|---|"]  # fmt: skip

    def f(r, key, fmt="{:.1f}"):
        return fmt.format(r[key]) if key in r else ""

    for r in res["rows"]:
        lines.append(f"| {r['module']} | {r['N']} | {r['variant']} | {f(r, 'host_us')} | {r.get('busy', '')} | "
                     f"{f(r, 'gpu_us')} | {f(r, 'python_us', '{:.2f}')} | {f(r, 'max_abs_diff_vs_sdpa', '{:.3g}')} | "
                     f"{r.get('bitwise_equal_variants', '')} |")  # fmt: skip
    for r in res["rows"]:
        if r.get("error"):
            lines.append(f"\n{r['module']} N={r['N']} {r['variant']}: {r['error']}")
    for r in res["rows"]:
        if r.get("profile"):
            lines += [f"\n{r['module']} N={r['N']} {r['variant']}: attnc's Python (no-op kernels)", r["profile"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (TRITON_INTERPRET=1)")
    ap.add_argument("--n", type=int, nargs="*", default=[128, 1024, 4096])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--modules", nargs="*", help="a subset of " + ", ".join(MODULES))
    ap.add_argument("--profile", action="store_true", help="a CPU profile of attnc's Python (first N)")
    args = ap.parse_args(argv)
    res = run_smoke(args) if args.smoke else run_gpu(args)
    print(render(res))
    out = Path(os.environ.get("OUT", ROOT / "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefill_host.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
