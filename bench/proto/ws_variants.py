"""Warp specialisation in Triton 3.6 on the causal prefill loop: which form compiles, and pays.

    python3 bench/proto/ws_variants.py                        # GPU: every variant, N = 8K, 32K (< 2 min)
    python bench/proto/ws_variants.py --compile               # here: compile each for sm_90 (no GPU)
    TRITON_INTERPRET=1 python bench/proto/ws_variants.py --smoke   # CPU: correctness at tiny sizes

Causal attention, B=1, H=32, D=128, bf16, one program per query block (longest first), keys
and values through device-side tensor descriptors (host-side ones crashed Triton 3.6's
Hopper warp-specialization pass, NOTES.md). Variants:

- MODE 0, "two loops": the interior tiles unmasked, then the diagonal tiles masked (what the
  generated kernel does). With WS, `tl.range(..., warp_specialize=True)` on both loops.
- MODE 1, "one loop": every tile masked arithmetically (`k <= q` per element), so the kernel
  has the single loop that the automatic pass accepts; the question is whether the pass's
  gain (+7..13% on the bare loop in NOTES.md) outweighs masking every tile.
- MODE 2, "one loop, bias": one loop where the diagonal's mask is a per-tile select
  `tl.where(j >= c, mask, True)`, to see whether the compiler keeps the interior cheap.

Each variant is checked against SDPA (max abs error) and timed (median of do_bench); a
variant that fails to compile is reported with its error. Prints a table; writes
$OUT/ws_variants.json (default ./out/ws_variants). `triton.experimental.gluon` (3.6 has
`gl.warp_specialize`, Hopper `warpgroup_mma`, `tma`, `mbarrier`) is the route for explicit
producer/consumer and ping-pong; this script only reports that it imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

B, H, D = 1, 32, 128
# (name, MODE, WS, BLOCK_M, BLOCK_N, num_warps, stages)
VARIANTS = [
    ("two loops", 0, False, 128, 64, 8, 2),
    ("two loops", 0, False, 128, 128, 8, 3),
    ("two loops + WS", 0, True, 128, 128, 4, 3),
    ("one loop masked", 1, False, 128, 128, 8, 3),
    ("one loop masked + WS", 1, True, 128, 128, 4, 2),  # 3 stages need 262 KB of shared memory with WS
    ("one loop masked + WS", 1, True, 128, 64, 4, 3),
    ("one loop masked + WS", 1, True, 128, 64, 4, 2),
    ("one loop select", 2, False, 128, 128, 8, 3),
    ("one loop select + WS", 2, True, 128, 128, 4, 2),
]
SHARED_MAX = 232448  # bytes of shared memory one H100 block may use


@triton.jit
def _causal(
    Q,
    K,
    V,
    O,
    N,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MODE: tl.constexpr,
    WS: tl.constexpr,
    STAGES: tl.constexpr,
    DESC: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * N * HEAD_DIM
    q0 = pid_m * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    if DESC:
        qd = tl.make_tensor_descriptor(
            Q + base, shape=[N, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM]
        )
        kd = tl.make_tensor_descriptor(
            K + base, shape=[N, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM]
        )
        vd = tl.make_tensor_descriptor(
            V + base, shape=[N, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM]
        )
        od = tl.make_tensor_descriptor(
            O + base, shape=[N, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM]
        )
        q = qd.load([q0, 0])
    else:
        q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    c = q0 // BLOCK_N  # blocks below c lie under the diagonal for every row
    d = (tl.minimum(q0 + BLOCK_M, N) - 1) // BLOCK_N + 1
    if MODE == 0:
        acc, m_i, l_i = _loop(
            acc,
            m_i,
            l_i,
            q,
            K,
            V,
            kd if DESC else K,
            vd if DESC else V,
            base,
            0,
            c,
            c,
            offs_m,
            N,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            False,
            WS,
            STAGES,
            DESC,
        )
        acc, m_i, l_i = _loop(
            acc,
            m_i,
            l_i,
            q,
            K,
            V,
            kd if DESC else K,
            vd if DESC else V,
            base,
            c,
            d,
            c,
            offs_m,
            N,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            True,
            WS,
            STAGES,
            DESC,
        )
    else:
        acc, m_i, l_i = _loop(
            acc,
            m_i,
            l_i,
            q,
            K,
            V,
            kd if DESC else K,
            vd if DESC else V,
            base,
            0,
            d,
            c if MODE == 2 else 0,
            offs_m,
            N,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            True,
            WS,
            STAGES,
            DESC,
        )
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    if DESC:
        od.store([q0, 0], out)
    else:
        tl.store(O + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], out, mask=offs_m[:, None] < N)


@triton.jit
def _loop(
    acc,
    m_i,
    l_i,
    q,
    K,
    V,
    kd,
    vd,
    base,
    lo,
    hi,
    mask_from,
    offs_m,
    N,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    WS: tl.constexpr,
    STAGES: tl.constexpr,
    DESC: tl.constexpr,
):
    """Online softmax over key blocks [lo, hi); MASKED: blocks from mask_from on apply k <= q."""
    offs_d = tl.arange(0, HEAD_DIM)
    for j in tl.range(lo, hi, num_stages=STAGES, warp_specialize=WS):
        offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
        if DESC:
            k = kd.load([j * BLOCK_N, 0])
        else:
            k = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_n[:, None] < N, other=0.0)
        qk = tl.dot(q, k.T)
        if MASKED:
            keep = (offs_n[None, :] <= offs_m[:, None]) | (j < mask_from)
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        if DESC:
            v = vd.load([j * BLOCK_N, 0])
        else:
            v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_n[:, None] < N, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_i, l_i


def launch(q, k, v, variant, desc=True):
    _, mode, ws, bm, bn, warps, stages = variant
    b, h, n, d = q.shape
    o = torch.empty_like(q)
    grid = (triton.cdiv(n, bm), b * h)
    _causal[grid](
        q,
        k,
        v,
        o,
        n,
        d**-0.5 * 1.4426950408889634,
        HEAD_DIM=d,
        BLOCK_M=bm,
        BLOCK_N=bn,
        MODE=mode,
        WS=ws,
        STAGES=stages,
        DESC=desc,
        num_warps=warps,
        num_stages=stages,
    )
    return o


def compile_all() -> list[dict]:
    """Compile every variant for sm_90 here (Triton's bundled ptxas), without a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows = []
    for variant in VARIANTS:
        name, mode, ws, bm, bn, warps, stages = variant
        sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "N": "i32", "qk_scale": "fp32"}
        const = dict(HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, MODE=mode, WS=ws, STAGES=stages, DESC=True)
        sig.update({k: "constexpr" for k in const})
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(5)}
        start = time.time()
        try:
            kernel = triton.compile(
                ASTSource(_causal, sig, const, attrs),
                target=GPUTarget("cuda", 90, 128),
                options=dict(num_warps=warps, num_stages=stages),
            )
            meta = kernel.metadata
            row = {
                "variant": name,
                "tile": f"{bm}x{bn} w{warps} s{stages}",
                "ok": meta.shared <= SHARED_MAX,
                "shared": meta.shared,
                "warps_total": getattr(meta, "num_warps", warps),
            }
        except Exception as exc:  # the point is to see which forms the passes accept
            row = {
                "variant": name,
                "tile": f"{bm}x{bn} w{warps} s{stages}",
                "ok": False,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200],
            }
        row["compile_s"] = round(time.time() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run(smoke: bool) -> list[dict]:
    from triton.testing import do_bench

    device = "cpu" if smoke else "cuda"
    if not smoke:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    heads, dim = (2, 16) if smoke else (H, D)
    first_of_mode = {v[1]: v for v in reversed(VARIANTS) if not v[2]}  # smoke: each loop shape once, small tiles
    variants = [(n, m, ws, 32, 16, w, s) for n, m, ws, _, _, w, s in first_of_mode.values()] if smoke else VARIANTS
    rows = []
    for n in (77,) if smoke else (8192, 32768):
        torch.manual_seed(0)
        dtype = torch.float32 if smoke else torch.bfloat16
        q, k, v = (torch.randn(B, heads, n, dim, device=device, dtype=dtype) for _ in range(3))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        flops = 4 * n * n * dim * heads * B / 2
        if not smoke:
            ms = do_bench(
                lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), return_mode="median"
            )
            rows.append({"n": n, "variant": "SDPA", "tile": "", "ms": ms, "tflops": flops / ms / 1e9})
            print(json.dumps(rows[-1]), flush=True)
        for variant in variants:
            name, _, _, bm, bn, warps, stages = variant
            row = {"n": n, "variant": name, "tile": f"{bm}x{bn} w{warps} s{stages}"}
            try:
                out = launch(q, k, v, variant, desc=not smoke)
                row["err"] = float((out.float() - ref.float()).abs().max())
                if not smoke:
                    row["ms"] = do_bench(lambda: launch(q, k, v, variant), return_mode="median")
                    row["tflops"] = flops / row["ms"] / 1e9
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="compile every variant for sm_90 (no GPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny correctness run (TRITON_INTERPRET=1 on the CPU)")
    args = ap.parse_args(argv)
    out = Path(os.environ.get("OUT") or "out/ws_variants")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import triton.experimental.gluon.language as gl

        gluon = f"triton.experimental.gluon imports; warp_specialize: {hasattr(gl, 'warp_specialize')}"
    except ImportError as exc:
        gluon = f"no gluon: {exc}"
    print(f"triton {triton.__version__}, torch {torch.__version__}; {gluon}", flush=True)
    start = time.time()
    rows = compile_all() if args.compile else run(args.smoke)
    (out / "ws_variants.json").write_text(json.dumps({"gluon": gluon, "rows": rows}, indent=1) + "\n")
    bad = [r for r in rows if r.get("err", 0) > (1e-4 if args.smoke else 2e-2)]
    print(f"wrote {out / 'ws_variants.json'} in {time.time() - start:.0f} s" + (f"; WRONG: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
