"""GPU benchmark of selection by score at run time (prefill), against FlexAttention and SDPA.

The case: N = 131072, B = 1, H = 32, D = 128, bf16,
`causal & (sink(4) | window(1024) | select(mean, top = 16, block = 128))` (MoBA-like: the top
16 key blocks of 128 by mean-pooled q . mean key, per query block and KV head).

Two steps, as bench/gpu.py:

    python bench/selection.py --generate bench/generated/selection   # here (needs attnc)
    python3 bench/selection.py --run bench/generated/selection       # GPU machine: torch + triton

`--run` first checks, at N = CHECK_N: the selection (`select`) against the module's torch
reference (the share of identical index rows), the attention kernel against the dense torch
reference fed the same indices, and FlexAttention fed the same indices against both. Then it
times at N:
- attnc: the selection (`select`) and its steps alone (the block estimates, their pooling, the
  choose kernel at num_warps 1 to 8, and a Triton pooling prototype, bench/proto/pool_proto.py),
  the attention kernel given its indices, and the two together (`prefill`, which selects first);
- FlexAttention fed the same selection: the selection in torch (pooled scores, top-k), the
  block mask (`BlockMask.from_kv_blocks`), `flex_attention`, and their sum;
- FlexAttention on the static part alone, SDPA causal;
- the selected part's TFLOP/s (the selected pairs over the attention time beyond the static
  kernel's) against a static kernel visiting about as many tiles (`causal & (sink(4) |
  window(1024 + 16 * 128))`).
It prints a table and writes $OUT/selection.json (default ./out/selection). `--smoke` runs
the same on the CPU under TRITON_INTERPRET=1 with tiny shapes (a test of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from codegen.importing import import_module_from_path  # noqa: E402  (the standard library only)

TOP, BLOCK, WINDOW, SINK = 16, 128, 1024, 4
CASES = {
    "select": f"pattern sel_moba = causal & (sink({SINK}) | window({WINDOW}) | select(mean, top = {TOP}, block = {BLOCK}))\n",
    "static": f"pattern sel_static = causal & (sink({SINK}) | window({WINDOW}))\n",
    "wide": f"pattern sel_wide = causal & (sink({SINK}) | window({WINDOW + TOP * BLOCK}))\n",
}
N, H, D = 131072, 32, 128
CHECK_N = 8192


# ------------------------------------------------------------------ --generate (here)
def generate(out: Path) -> None:
    from attnc.codegen.writer import write_module
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, text in CASES.items():
        files[name] = write_module(lower(resolve_text(text, f"bench/{name}.attn")), out).name
        print(f"{name} -> {files[name]}")
    (out / "manifest.json").write_text(json.dumps(files, indent=1))


# ------------------------------------------------------------------ --run (GPU machine)
def bench_ms(fn, smoke: bool) -> float:
    """Median milliseconds (triton.testing.do_bench; one timed call in --smoke)."""
    if smoke:
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def torch_selection(sel, q, k, candidates, scale):
    """The same rule in torch, as a FlexAttention user would write it: mean-pooled scores over the
    module's candidates (precomputed: they depend on positions only), top-k, ties to the lowest."""
    pooled = sel.pooled_queries(q, k.shape[1], BLOCK)
    scores = sel.mean_score(pooled, sel.block_mean(k, BLOCK)) * scale
    return sel.choose(scores, candidates, TOP, 0)


def select_parts(mod, q, k, scale, smoke: bool) -> dict:
    """The selection's steps, timed alone: pooling (mean query per block and KV head, mean key),
    the block estimates (block_logmass: the pooling and one matrix product per KV head), and the
    choose kernel (top-k per row of estimates; at the module's num_warps, then at each)."""
    kv = k.shape[1]
    spec = mod.SelectSpec(*mod._SELECT[0])
    mat = mod._estimates(0, spec, q, k, scale)
    n, width = q.shape[2], mod._select_width(q.shape[2])
    t = {
        "attnc_select_pool": bench_ms(lambda: (mod.pooled_queries(q, kv, BLOCK), mod.block_mean(k, BLOCK)), smoke),
        "attnc_select_estimates": bench_ms(lambda: mod._estimates(0, spec, q, k, scale), smoke),
        "attnc_select_choose": bench_ms(lambda: mod._choose(0, spec, mat, n, width), smoke),
    }
    for warps in (1, 2, 4, 8):
        choose = lambda: mod._choose(0, spec, mat, n, width, num_warps=warps)  # noqa: E731
        t[f"attnc_select_choose_warps{warps}"] = bench_ms(choose, smoke)
    sys.path.insert(0, str(ROOT / "bench" / "proto"))
    from pool_proto import block_mean_triton  # a Triton pooling prototype, checked against the torch one

    err = rel(block_mean_triton(q, BLOCK), mod.block_mean(q, BLOCK))
    assert err < 1e-5, f"the Triton pooling prototype differs from block_mean: {err:.1e}"
    t["proto_pool_triton"] = bench_ms(lambda: (block_mean_triton(q, BLOCK), block_mean_triton(k, BLOCK)), smoke)
    return t


def flex_block_mask(mod, idx, cnt, static_blocks, n, heads):
    """A BlockMask of the static blocks (masked) and the chosen ones (full where the static part
    does not touch them), through BlockMask.from_kv_blocks."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    nb = -(-n // BLOCK)
    chosen = mod.chosen_matrix(idx, cnt, nb)  # [B, H_KV, nb, nb]
    chosen = chosen.repeat_interleave(heads // chosen.shape[1], 1)
    partial = static_blocks[None, None].expand_as(chosen)
    full = chosen & ~partial

    def as_indices(m):
        num = m.sum(-1).to(torch.int32)
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num, order

    kv_num, kv_idx = as_indices(partial)
    full_num, full_idx = as_indices(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=flex_mask_mod(chosen), seq_lengths=(n, n)
    )


def flex_mask_mod(chosen):
    """static | (causal & chosen block), for FlexAttention."""

    def mask_mod(b, h, q, k):
        static = (k <= q) & ((k < SINK) | (q - k < WINDOW))
        return static | ((k <= q) & chosen[b, h, q // BLOCK, k // BLOCK])

    return mask_mod


def static_mask_mod(b, h, q, k):
    return (k <= q) & ((k < SINK) | (q - k < WINDOW))


def static_blocks(n, device):
    """Key blocks the static part touches, per query block (the partial blocks of Flex's mask)."""
    import torch

    nb = -(-n // BLOCK)
    i = torch.arange(nb, device=device)[:, None]
    j = torch.arange(nb, device=device)[None, :]
    return (j <= i) & ((j == 0) | ((i * BLOCK + BLOCK - 1) - (j * BLOCK + BLOCK - 1) < WINDOW + BLOCK))


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def run(folder: Path, smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F

    files = json.loads((folder / "manifest.json").read_text())
    mods = {name: import_module_from_path(folder / f, f"attnc_selbench_{name}") for name, f in files.items()}
    mod = mods["select"]
    device = "cpu" if smoke else "cuda"
    n_check, n, heads, d = (300, 520, 2, 16) if smoke else (CHECK_N, N, H, D)
    kv_heads = heads if not smoke else 1
    name = "CPU (smoke, TRITON_INTERPRET=1)" if smoke else torch.cuda.get_device_name()
    print(f"{name}; torch {torch.__version__}; N={n} B=1 H={heads} H_KV={kv_heads} D={d} bf16", flush=True)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = flex_attention if smoke else torch.compile(flex_attention, dynamic=False)
    out: dict = {"device": name, "n": n, "heads": heads, "kv_heads": kv_heads, "head_dim": d}

    def inputs(length, seed):
        gen = torch.Generator(device=device).manual_seed(seed)
        return [
            torch.randn(1, h, length, d, device=device, dtype=torch.bfloat16, generator=gen)
            for h in (heads, kv_heads, kv_heads)
        ]

    # ---- correctness at a smaller N
    t0 = time.perf_counter()
    q, k, v = inputs(n_check, 1)
    idx, cnt = mod.select(q, k)
    ridx, rcnt = mod.select_reference(q, k)
    same = ((idx == ridx).all(-1) & (cnt == rcnt)).float().mean().item()
    o = mod.prefill(q, k, v, indices=(idx, cnt))
    ref = mod.reference(q, k, v, indices=(idx, cnt))
    out["check"] = {
        "n": n_check,
        "select_rows_identical": same,
        "attnc_rel_err": rel(o, ref),
        "seconds": time.perf_counter() - t0,
    }
    ok = same >= 0.999 and out["check"]["attnc_rel_err"] < 1e-2
    out["check"]["ok"] = ok
    print(
        f"check N={n_check}: select rows identical to the torch reference {same:.4%}, "
        f"attnc rel err {out['check']['attnc_rel_err']:.1e}: {'ok' if ok else 'FAIL'}",
        flush=True,
    )
    del q, k, v, o, ref

    # ---- timings at N
    q, k, v = inputs(n, 2)
    scale = d**-0.5
    t = {}
    t["attnc_select"] = bench_ms(lambda: mod.select(q, k), smoke)
    t.update(select_parts(mod, q, k, scale, smoke))
    idx, cnt = mod.select(q, k)
    t["attnc_attention"] = bench_ms(lambda: mod.prefill(q, k, v, indices=(idx, cnt)), smoke)
    t["attnc_total"] = bench_ms(lambda: mod.prefill(q, k, v), smoke)
    cands = mod._candidates(0, n).to(device)
    t["flex_select_torch"] = bench_ms(lambda: torch_selection(mod, q, k, cands, scale), smoke)
    tidx, tcnt = torch_selection(mod, q, k, cands, scale)
    sblocks = static_blocks(n, device)
    t["flex_block_mask"] = bench_ms(lambda: flex_block_mask(mod, tidx, tcnt, sblocks, n, heads), smoke)
    bm = flex_block_mask(mod, tidx, tcnt, sblocks, n, heads)
    gqa = kv_heads != heads
    t["flex_attention"] = bench_ms(lambda: flex(q, k, v, block_mask=bm, enable_gqa=gqa), smoke)
    # at N: Flex and attnc fed the torch selection agree; the two selections (kernel, torch) compared
    out["check"]["flex_vs_attnc_rel_err_at_n"] = rel(
        mod.prefill(q, k, v, indices=(tidx, tcnt)), flex(q, k, v, block_mask=bm, enable_gqa=gqa)
    )
    out["check"]["select_rows_identical_to_torch_at_n"] = ((idx == tidx).all(-1) & (cnt == tcnt)).float().mean().item()
    print(
        f"at N={n}: flex vs attnc (same indices) rel err {out['check']['flex_vs_attnc_rel_err_at_n']:.1e}; "
        f"selection rows identical to torch's {out['check']['select_rows_identical_to_torch_at_n']:.4%}",
        flush=True,
    )
    t["flex_total"] = t["flex_select_torch"] + t["flex_block_mask"] + t["flex_attention"]
    static_bm = create_block_mask(
        static_mask_mod, None, None, n, n, device=device, BLOCK_SIZE=BLOCK, _compile=not smoke
    )
    t["flex_static"] = bench_ms(lambda: flex(q, k, v, block_mask=static_bm, enable_gqa=gqa), smoke)
    t["sdpa_causal"] = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa), smoke)
    t["attnc_static"] = bench_ms(lambda: mods["static"].prefill(q, k, v), smoke)
    t["attnc_static_wide"] = bench_ms(lambda: mods["wide"].prefill(q, k, v), smoke)
    out["ms"] = t

    # ---- rates: selected pairs over the time beyond the static kernel, against a static kernel of as many tiles
    extra = _selected_pairs(idx, cnt, n, heads, kv_heads)
    sel_time = max(t["attnc_attention"] - t["attnc_static"], 1e-9)
    out["tflops"] = {
        "selected_part": 4 * d * extra / sel_time / 1e9,
        "static_same_tiles": 4 * d * _static_pairs(n, WINDOW + TOP * BLOCK) * heads / t["attnc_static_wide"] / 1e9,
        "static_part": 4 * d * _static_pairs(n, WINDOW) * heads / t["attnc_static"] / 1e9,
        "selected_pairs": extra,
    }
    out["ratios"] = {
        "flex_total / attnc_total (goal >= 1.6)": t["flex_total"] / t["attnc_total"],
        "flex_attention / attnc_attention (goal >= 1.25)": t["flex_attention"] / t["attnc_attention"],
        "sdpa / attnc_total (goal >= 15)": t["sdpa_causal"] / t["attnc_total"],
        "attnc_select / attnc_total (goal <= 0.10)": t["attnc_select"] / t["attnc_total"],
        "selected TFLOP/s / static same tiles (goal >= 0.75)": out["tflops"]["selected_part"]
        / out["tflops"]["static_same_tiles"],
    }
    return out


def _static_pairs(n: int, w: int) -> int:
    """Pairs of causal & (sink(SINK) | window(w)) at length n: per row min(q + 1, w) keys of the
    window, plus the sinks beyond it, min(SINK, q - w + 1) when positive."""
    band = sum(min(q + 1, w) for q in range(n))
    return band + sum(min(SINK, q - w + 1) for q in range(w, n))


def _selected_pairs(idx, cnt, n, heads, kv_heads) -> int:
    """Pairs the chosen blocks add beyond the static part, tile by tile (no N x N mask): per
    chosen (query block i, key block j), the causal pairs outside window and sink."""
    import torch

    r = torch.arange(BLOCK, device=idx.device)
    nq, width = idx.shape[2], idx.shape[3]
    q = torch.arange(nq, device=idx.device)[:, None, None, None] * BLOCK + r[None, None, :, None]
    total = 0
    for kv in range(kv_heads):
        valid = (torch.arange(width, device=idx.device)[None, :] < cnt[0, kv][:, None]) & (idx[0, kv] >= 0)
        k = idx[0, kv].clamp(min=0).long()[:, :, None, None] * BLOCK + r[None, None, None, :]
        add = (k <= q) & (q < n) & (k < n) & (k >= SINK) & (q - k >= WINDOW) & valid[:, :, None, None]
        total += int(add.sum())
    return total * (heads // kv_heads)


def print_table(out: dict) -> None:
    t = out["ms"]
    rows = [
        ("attnc: selection (select)", t["attnc_select"]),
        ("  block estimates (pooling + matrix product)", t["attnc_select_estimates"]),
        ("    of which pooling (mean query, mean key)", t["attnc_select_pool"]),
        ("  choose kernel (top-k per row)", t["attnc_select_choose"]),
        *((f"    choose kernel, num_warps={w}", t[f"attnc_select_choose_warps{w}"]) for w in (1, 2, 4, 8)),
        ("  (prototype: the pooling in Triton)", t["proto_pool_triton"]),
        ("attnc: attention kernel (given indices)", t["attnc_attention"]),
        ("attnc: selection + attention (prefill)", t["attnc_total"]),
        ("flex: selection in torch", t["flex_select_torch"]),
        ("flex: BlockMask.from_kv_blocks", t["flex_block_mask"]),
        ("flex: flex_attention", t["flex_attention"]),
        ("flex: total", t["flex_total"]),
        ("flex: static part alone", t["flex_static"]),
        ("sdpa: causal", t["sdpa_causal"]),
        ("attnc: static part alone", t["attnc_static"]),
        (f"attnc: static, window {WINDOW + TOP * BLOCK} (as many tiles)", t["attnc_static_wide"]),
    ]
    print(f"\n{'what':<55} {'ms':>10}")
    for label, ms in rows:
        print(f"{label:<55} {ms:>10.3f}")
    print("\nTFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in out["tflops"].items() if isinstance(v, float)))
    for k, v in out["ratios"].items():
        print(f"{k}: {v:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generate", type=Path, help="write the modules here (needs attnc)")
    ap.add_argument("--run", type=Path, help="run the benchmark on the modules written by --generate")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    if args.generate:
        generate(args.generate)
    if args.run:
        if args.smoke:
            os.environ["TRITON_INTERPRET"] = "1"
        out = run(args.run, args.smoke)
        print_table(out)
        dest = Path(os.environ.get("OUT") or ROOT / "out" / "selection")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "selection.json").write_text(json.dumps(out, indent=1))
        print(f"wrote {dest / 'selection.json'}")
        return 0 if out["check"]["ok"] and out["check"]["flex_vs_attnc_rel_err_at_n"] < 1e-2 else 1
    if not (args.generate or args.run):
        ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
