"""Stripe loops against the masked hull: `k mod m` patterns on the GPU, old plan vs new.

    python bench/proto/stripe_bench.py --generate out/stripes        # here: both kernels per case
    python3 bench/proto/stripe_bench.py out/stripes                  # on the GPU (torch + triton)
    TRITON_INTERPRET=1 python bench/proto/stripe_bench.py --smoke    # both steps on the CPU, tiny

The new plan (compiler/plan.py's "stripe" loop) reads only a stripe's keys, r + m * j, as
dense tiles through a strided pointer; the old one visited the stripe term as one masked
range over its whole hull, one useful key in m. `--generate` writes, per case, the module
with each plan (the old one by planning without the stripe loop); the GPU step imports only
those modules, torch and triton, checks new against old and against a dense reference on
the last rows, and times both (median of triton.testing.do_bench; B=1, H=32, D=128, bf16).
It prints a table and writes $OUT/stripe_bench.json (default ./out/stripe_bench).

`(q - k) mod m` terms (`strided(m)`) are residue_bench.py's: their rows lie on different
stripes, so a stripe gather does not apply to them. That script reuses `run` and `main`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

CASES = {  # name: (.attn pattern, N)
    "s2_window512_stride4": ("causal & (window(512) | stride(4, 1))", 32768),
    "fixed128": ("causal & (chunk(128) | stride(128, 127))", 32768),
    "window1024_stride16": ("causal & (window(1024) | stride(16, 0))", 32768),
    "stride8_alone": ("causal & stride(8, 3)", 16384),
}
B, H, D = 1, 32, 128


def generate(out: Path, smoke: bool = False) -> None:
    """Both modules of every case (needs attnc's front end: run it here)."""
    from unittest import mock

    from attnc.codegen.writer import write_module
    from attnc.compiler import plan
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    def no_stripes(term):
        loop = _loop_of(term)
        return None if loop is not None and loop.kind == "stripe" else loop

    _loop_of = plan._loop_of
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (expr, n) in CASES.items():
        for variant in ("new", "old"):
            program = lower(resolve_text(f"pattern {name}_{variant} = {expr}\n", f"{name}.attn"))
            with mock.patch.object(plan, "_loop_of", no_stripes if variant == "old" else _loop_of):
                write_module(program, out)
        rows[name] = {"pattern": expr, "n": 256 if smoke else n}
    (out / "cases.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {len(rows)} cases to {out}; on the GPU: python3 bench/proto/stripe_bench.py {out}")


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(src: Path, smoke: bool = False) -> list[dict]:
    """Check and time both modules of every case (torch, triton and the modules only)."""
    import torch

    device = "cpu" if smoke else "cuda"
    heads, dim, dtype = (2, 16, torch.float32) if smoke else (H, D, torch.bfloat16)
    cases = json.loads((src / "cases.json").read_text())
    results = []
    for name, case in cases.items():
        n = case["n"]
        new, old = (load(src / f"{name}_{v}.py") for v in ("new", "old"))
        extra = {v: load(src / f"{name}_{v}.py") for v in case.get("extra", ())}  # timed only
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, heads, n, dim, device=device, dtype=dtype) for _ in range(3))
        o_new, o_old = new.prefill(q, k, v), old.prefill(q, k, v)
        rows = slice(max(n - 64, 0), n)  # a dense reference on the last rows (they see the most keys)
        dense = new.mask(n, heads=1, device=device)[0]  # (n, n): every head runs the pattern
        s = (q[:, :, rows].float() @ k.float().transpose(-1, -2)) * dim**-0.5
        ref = torch.softmax(s.masked_fill(~dense[rows], float("-inf")), -1) @ v.float()
        pairs = int(dense.sum()) * B * heads
        del dense
        row = {
            "case": name,
            "pattern": case["pattern"],
            "n": n,
            "err_new_vs_old": float((o_new.float() - o_old.float()).abs().max()),
            "err_new_vs_ref": float((o_new[:, :, rows].float() - ref).abs().max()),
        }
        if not smoke:
            from triton.testing import do_bench

            for variant, mod in (("new", new), ("old", old), *extra.items()):
                ms = do_bench(lambda: mod.prefill(q, k, v), warmup=25, rep=100, return_mode="median")
                row[f"{variant}_ms"] = ms
                row[f"{variant}_tflops"] = 4 * D * pairs / (ms * 1e-3) / 1e12
            row["speedup"] = row["old_ms"] / row["new_ms"]
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def table(results: list[dict]) -> str:
    lines = [f"{'case':28s} {'N':>6s} {'old ms':>8s} {'new ms':>8s} {'old TF/s':>9s} {'new TF/s':>9s} {'x':>6s}  err"]
    for r in results:
        if "new_ms" in r:
            lines.append(
                f"{r['case']:28s} {r['n']:6d} {r['old_ms']:8.3f} {r['new_ms']:8.3f} {r['old_tflops']:9.1f} "
                f"{r['new_tflops']:9.1f} {r['speedup']:6.2f}  {r['err_new_vs_ref']:.1e}"
                + "".join(
                    f"  {k[:-3]} {v:.3f} ms" for k, v in r.items() if k.endswith("_ms") and k[:-3] not in ("new", "old")
                )
            )
        else:
            lines.append(
                f"{r['case']:28s} {r['n']:6d}  (no timing)  err vs old {r['err_new_vs_old']:.1e}, vs ref {r['err_new_vs_ref']:.1e}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None, generate=generate, name: str = "stripe_bench", doc: str = __doc__) -> int:
    """The command line of this script and of residue_bench.py (its own `generate`, `name`, `doc`)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", type=Path, help="the folder --generate wrote (GPU step)")
    ap.add_argument("--generate", metavar="DIR", type=Path, help="write both modules of every case (here)")
    ap.add_argument("--smoke", action="store_true", help="generate and run tiny cases on the CPU (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    if args.generate:
        generate(args.generate)
        return 0
    out = Path(os.environ.get("OUT") or f"out/{name}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.smoke:
        src = out / "smoke_modules"
        generate(src, smoke=True)
    elif args.dir is None:
        ap.error("give the folder that --generate wrote, or --generate DIR, or --smoke")
    else:
        src = args.dir
    results = run(src, smoke=args.smoke)
    print(table(results))
    bad = [r["case"] for r in results if r["err_new_vs_ref"] > (1e-4 if args.smoke else 2e-2)]
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / f'{name}.json'} in {time.time() - start:.0f} s" + (f"; WRONG: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
