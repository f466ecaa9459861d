"""The backward pass alone, per bench/gpu.py case: attnc's backward kernels (from the saved
output and log-sum-exp), for grid and dilated cases also the generic kernels (GRID=False,
RESIDUE=False: the row-major backward with the mask on every tile, instead of the tile order
or the residue classes), FlexAttention's backward and SDPA's (dense causal, or
full for the grid cases), as medians of triton.testing.do_bench; TFLOP/s count allowed pairs
only (10 * D * pairs: five matrix products of 2 * D flops per pair, what FlashAttention-2's
backward does), and the largest relative gradient difference of the tile-order kernels from
the generic ones (column "specialised vs generic").

    python bench/gpu.py --generate DIR                       # here
    python3 bench/proto/bwd_time.py DIR [CASE ...]           # GPU: prints rows, writes $OUT/bwd_time.json
    python3 bench/proto/bwd_time.py --smoke                  # CPU, tiny shapes (TRITON_INTERPRET=1)

CASE: bench case names (causal, power, strided, image_13x13, ...); all when none given.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
import gpu  # noqa: E402  (bench/gpu.py)


def backward_row(mod, n: int, heads: int, causal: bool) -> dict:
    """Backward times (ms) and TFLOP/s of one case at length n."""
    import torch
    import torch.nn.functional as F

    dev, d, dtype = gpu.DEVICE, gpu.D, torch.bfloat16
    q, k, v, do = (torch.randn(1, heads, n, d, device=dev, dtype=dtype) for _ in range(4))
    o, lse = mod._forward(q, k, v, None, True, None)
    pairs = gpu.allowed_pairs(mod, n, dev, heads)
    row = {"n": n, "heads": heads, "density": pairs / (heads * n * n)}

    def attnc(config=None):
        return lambda: mod._backward(do, q, k, v, o, lse, None, None, None, True, True, config)

    row["attnc_ms"] = gpu._bench(attnc())
    if hasattr(mod, "_GRID_SHAPE") or any(t["residue"] for t in mod._TUNING):
        plain = {"GRID": False, "RESIDUE": False}
        row["generic_ms"] = gpu._bench(attnc(plain))
        tiled, generic = attnc()(), attnc(plain)()
        row["vs_generic"] = max(
            ((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(tiled, generic)
        )
    for name, fn in (
        ("flex", flex_fn(mod, n, heads)),
        ("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)),
    ):
        if fn is None:
            continue
        args = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*args)
        row[f"{name}_ms"] = gpu._bench(lambda: torch.autograd.grad(out, args, do, retain_graph=True))
    for key in [k for k in row if k.endswith("_ms")]:
        work = pairs if key != "sdpa_ms" else heads * (n * (n + 1) / 2 if causal else n * n)
        row[key.replace("_ms", "_tflops")] = 10 * d * work / row[key] / 1e9
    return row


def flex_fn(mod, n: int, heads: int):
    """FlexAttention on the module's mask_mod (compiled, block mask built once); None on the CPU."""
    if SMOKE:
        return None
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    mask_mod, per_head = gpu.mask_mod_of(mod, gpu.DEVICE)
    block_mask = create_block_mask(mask_mod, None, heads if per_head else None, n, n, device=gpu.DEVICE)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--smoke"]
    if SMOKE:
        gpu._smoke()
        folder = Path(tempfile.mkdtemp(prefix="bwd_time_"))
        gpu.generate(folder)
        args = [str(folder), "power", "strided"]
    folder, only = Path(args[0]), set(args[1:])
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = []
    for m in manifest["modules"]:
        name = Path(m["file"]).stem.removeprefix("bench_")
        if not m["bench"] or (only and name not in only):
            continue
        mod = gpu.import_module(folder / m["file"])
        heads = m["bench"].get("heads", gpu.H)
        for n in m["bench"]["lengths"]:
            if SMOKE:  # tiny shapes; the grids (16K tokens and more) are too long for the interpreter
                if hasattr(mod, "_GRID_SHAPE"):
                    continue
                n, heads = 200, 2  # noqa: PLW2901
            try:
                row = {"case": name, **backward_row(mod, n, heads, m["bench"].get("causal", True))}
            except Exception as exc:  # noqa: BLE001
                row = {"case": name, "n": n, "error": f"{type(exc).__name__}: {exc}"[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parents[2] / "out" / "bwd_time")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bwd_time.json").write_text(json.dumps(rows, indent=1))
    cols = ["attnc", "generic", "flex", "sdpa"]
    print("| case | N | " + " | ".join(f"{c} ms (TFLOP/s)" for c in cols) + " | specialised vs generic |")
    print("|---|---:|" + "---:|" * (len(cols) + 1))
    for r in rows:
        cells = [f"{r[c + '_ms']:.2f} ({r[c + '_tflops']:.0f})" if c + "_ms" in r else "-" for c in cols]
        diff = f"{r['vs_generic']:.1e}" if "vs_generic" in r else r.get("error", "-")
        print(f"| {r['case']} | {r['n']} | " + " | ".join(cells) + f" | {diff} |")


if __name__ == "__main__":
    main()
