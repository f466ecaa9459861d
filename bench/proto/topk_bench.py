"""The paged cache's decode top-k (_pg_topk_kernel): the bit-by-bit threshold search (old, a
copy of the kernel before the radix search, kept here) against the radix search of
codegen/support/paged.py (new, at several bits a pass), alone, on the Quest benchmark's shape.

Shape: 8 rows x 8 selecting KV heads = 64 programs, score rows of 8192 pages (context 131072,
page 16), 256 pages chosen, the keep rules of `select quest(4096, page = 16)` (sink 0,
recent 0, one query token); float32 scores: `random` (normal), `ties` (integers 0..63: long
runs of ties at the threshold), `equal` (all the same: no early exit for either search).
Rows: old and new (RADIX 4, 5, 8) at 4, 8, 16 warps, one block in registers (ONE; the
benchmark's path) and blocks of 2048 units (the multi-block path, RADIX 5 and old only).
Every variant's outputs (chosen pages, read lists, their lengths) must equal old's and the
chosen pages block_scores.top_blocks' (torch); a mismatch is printed and fails the run (rc 1).
Times: GPU µs per launch from one CUDA graph of 20 launches (median of 20 replays), and from
CUDA events around 200 back-to-back launches (launch overhead may show there).

    python3 bench/proto/topk_bench.py                         # GPU machine: torch + triton only
    TRITON_INTERPRET=1 python3 bench/proto/topk_bench.py --smoke   # CPU: tiny shapes, one call

No attnc install needed: the new kernel is imported from this tree's codegen/support/paged.py.
Prints a table and writes $OUT/topk_bench.json (OUT unset: ./out/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from codegen.support import paged  # noqa: E402  (the tree's kernel; torch and triton only)

sys.path.insert(0, str(ROOT / "bench"))
from timing import graph_time  # noqa: E402


# ------------------------------------------------------------------ old: the bit-by-bit search


@triton.jit
def _old_unit_keys(SC, c, NU, BLOCK: tl.constexpr):
    u = c + tl.arange(0, BLOCK)
    s = tl.load(SC + u, mask=u < NU, other=float("-inf"), cache_modifier=".cg")
    s = tl.where(s == 0.0, 0.0, s)
    x = s.to(tl.int32, bitcast=True)
    return u, x ^ ((x >> 31) & 0x7FFFFFFF), tl.abs(s) < float("inf")


@triton.jit
def _old_count(SC, NU, thr, key0, ok0, ONE: tl.constexpr, BLOCK: tl.constexpr, ABOVE: tl.constexpr):
    cnt = tl.zeros([], tl.int32)
    for c in range(0, NU, BLOCK):
        if ONE:
            key, ok = key0, ok0
        else:
            _, key, ok = _old_unit_keys(SC, c, NU, BLOCK)
        if ABOVE:
            cnt += tl.sum((ok & (key > thr)).to(tl.int32), 0)
        else:
            cnt += tl.sum((ok & (key >= thr)).to(tl.int32), 0)
    return cnt


@triton.jit
def _old_topk_kernel(
    SC, LIST, NTOK, HI, CHOSEN, SEL, SLEN, T, NU, LW, SW, NH, units, sink, recent,
    H_KV: tl.constexpr, P: tl.constexpr, TOKENS: tl.constexpr, BLOCK: tl.constexpr, ONE: tl.constexpr,
    WS_PAD: tl.constexpr, WL_PAD: tl.constexpr, CH_PAD: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = (pid // NH).to(tl.int64)
    h = tl.load(HI + pid % NH)
    unit: tl.constexpr = 1 if TOKENS else P
    rp: tl.constexpr = P if TOKENS else 1
    n = tl.load(NTOK + b)
    nu = (n + unit - 1) // unit
    r = tl.maximum(recent, T)
    ws = tl.minimum((sink + unit - 1) // unit, nu)
    last0 = tl.maximum(tl.maximum(n - r, 0) // unit, ws)
    last1 = tl.minimum(tl.maximum(n - r, 0) // unit + (r + unit - 1) // unit + 1, nu)
    tab = LIST + (b * H_KV + h) * LW
    sel = SEL + (b * H_KV + h) * SW
    js = tl.arange(0, WS_PAD)
    es = tl.load(tab + js // rp, mask=js < ws, other=0)
    tl.store(sel + js, es * rp + js % rp, mask=js < ws)
    jl = tl.arange(0, WL_PAD)
    ul = last0 + jl
    el = tl.load(tab + ul // rp, mask=ul < last1, other=0)
    tl.store(sel + ws + jl, el * rp + ul % rp, mask=ul < last1)
    nstat = ws + tl.maximum(last1 - last0, 0)
    sc = SC + pid.to(tl.int64) * NU
    _, key0, ok0 = _old_unit_keys(sc, 0, NU, BLOCK)
    need = tl.minimum(_old_count(sc, NU, -2147483648, key0, ok0, ONE, BLOCK, False), units)
    bits = tl.zeros([], tl.int32)
    i = 0
    done = need < 0
    while (i < 32) & ~done:
        c = bits | (tl.full([], 1, tl.int32) << (31 - i))
        cnt = _old_count(sc, NU, c ^ -2147483648, key0, ok0, ONE, BLOCK, False)
        bits = tl.where(cnt >= need, c, bits)
        done = cnt == need
        i += 1
    thr = bits ^ -2147483648
    take = need - _old_count(sc, NU, thr, key0, ok0, ONE, BLOCK, True)
    ties = tl.zeros([], tl.int32)
    placed = tl.zeros([], tl.int32)
    out = CHOSEN + pid.to(tl.int64) * units
    for c in range(0, NU, BLOCK):
        if ONE:
            u, key, ok = c + tl.arange(0, BLOCK), key0, ok0
        else:
            u, key, ok = _old_unit_keys(sc, c, NU, BLOCK)
        eq = ok & (key == thr)
        rank = ties + tl.cumsum(eq.to(tl.int32), 0)
        chosen = (ok & (key > thr)) | (eq & (rank <= take))
        slot = placed + tl.cumsum(chosen.to(tl.int32), 0) - 1
        tl.store(out + slot, u, mask=chosen)
        e = tl.load(tab + u // rp, mask=chosen, other=0)
        tl.store(sel + nstat + slot, e * rp + u % rp, mask=chosen)
        ties += tl.sum(eq.to(tl.int32), 0)
        placed += tl.sum(chosen.to(tl.int32), 0)
    jc = tl.arange(0, CH_PAD)
    tl.store(out + jc, tl.full([CH_PAD], -1, tl.int32), mask=(jc >= need) & (jc < units))
    tl.store(SLEN + b * H_KV + h, nstat + need)


# ------------------------------------------------------------------ the launches


def _inputs(rows: int, heads: int, nu: int, units: int, page: int, kind: str, dev: str) -> dict:
    """Score rows (rows * heads, nu) of one kind, page tables (pool pages in order), buffers."""
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (rows, heads, nu)
    if kind == "random":
        sc = torch.randn(shape, generator=g)
    elif kind == "ties":
        sc = torch.randint(0, 64, shape, generator=g).float()
    else:
        sc = torch.full(shape, 0.5)
    ntok = torch.full((rows,), nu * page, dtype=torch.int32)
    lst = torch.arange(rows * heads * nu, dtype=torch.int32).view(rows, heads, nu)
    sw = units + 2 + 1  # keep rules (one query token: the newest page and the one before) + chosen
    return {
        "sc": sc.to(dev), "list": lst.to(dev), "ntok": ntok.to(dev), "hi": torch.arange(heads, device=dev),
        "chosen": torch.empty((rows, heads, units), dtype=torch.int32, device=dev),
        "sel": torch.full((rows, heads, sw), -7, dtype=torch.int32, device=dev),
        "slen": torch.empty((rows, heads), dtype=torch.int32, device=dev),
    }  # fmt: skip


def _launcher(x: dict, units: int, page: int, radix, block: int, warps: int):
    """A call of one variant (radix None: old) on inputs x."""
    rows, heads, nu = x["sc"].shape
    common = (x["sc"], x["list"], x["ntok"], x["hi"], x["chosen"], x["sel"], x["slen"], 1, nu, nu,
              x["sel"].shape[2], heads, units, 0, 0)  # fmt: skip
    kw = dict(H_KV=heads, P=page, TOKENS=False, BLOCK=block, ONE=nu <= block, WS_PAD=1, WL_PAD=2,
              CH_PAD=triton.next_power_of_2(units), num_warps=warps)  # fmt: skip
    if radix is None:
        return lambda: _old_topk_kernel[(rows * heads,)](*common, **kw)
    return lambda: paged._pg_topk_kernel[(rows * heads,)](*common, RADIX=radix, **kw)


def _outputs(x: dict) -> tuple:
    return x["chosen"].clone(), x["sel"].clone(), x["slen"].clone()


def _graph_us(fn) -> float:
    """Median GPU µs per call from replays of one CUDA graph of 20 calls (bench/timing.py)."""
    return graph_time(fn, torch) * 1e6


def _events_us(fn, reps: int = 200) -> float:
    """µs per call from CUDA events around `reps` back-to-back launches."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one call each (CPU, TRITON_INTERPRET=1)")
    args = ap.parse_args()
    gpu = torch.cuda.is_available() and not args.smoke
    dev = "cuda" if gpu else "cpu"
    rows, heads, nu, units, page = (8, 8, 8192, 256, 16) if not args.smoke else (1, 2, 300, 16, 16)
    blocks = (min(triton.next_power_of_2(nu), paged._PG_TOPK_BLOCK), 2048 if gpu else 64)
    variants = [(r, blocks[0], w) for w in ((4, 8, 16) if gpu else (4,)) for r in (None, 4, 5, 8)]
    variants += [(r, blocks[1], 8 if gpu else 4) for r in (None, 5)]
    res = {"device": torch.cuda.get_device_name() if gpu else "cpu", "triton": triton.__version__,
           "torch": torch.__version__, "shape": dict(rows=rows, heads=heads, units_per_row=nu, chosen=units),
           "default_radix": paged._PG_RADIX, "rows": []}  # fmt: skip
    bad = 0
    for kind in ("random", "ties", "equal"):
        x = _inputs(rows, heads, nu, units, page, kind, dev)
        want = paged.top_blocks(x["sc"].cpu(), units)
        base = None
        for radix, block, warps in variants:
            fn = _launcher(x, units, page, radix, block, warps)
            x["chosen"].fill_(-9), x["sel"].fill_(-7), x["slen"].fill_(-5)
            fn()
            got = _outputs(x)
            if radix is None and block == blocks[0] and base is None:
                base = got
            same_old = all(torch.equal(a, b) for a, b in zip(got, base))
            same_ref = torch.equal(got[0].cpu(), want)
            bad += not (same_old and same_ref)
            row = {"kind": kind, "search": "old (bit by bit)" if radix is None else f"radix {radix}", "radix": radix,
                   "block": block, "one": nu <= block, "warps": warps, "same_as_old": same_old,
                   "same_as_top_blocks": same_ref}  # fmt: skip
            if gpu:
                row["graph_us"], row["events_us"] = _graph_us(fn), _events_us(fn)
            res["rows"].append(row)
            if not (same_old and same_ref):
                print(f"MISMATCH: {row}", flush=True)
    print(f"\n{res['device']}, triton {res['triton']}: {rows * heads} programs, rows of {nu} units, {units} chosen")
    print(f"{'scores':8} {'search':17} {'block':>6} {'warps':>5} {'graph us':>9} {'events us':>9} {'x old':>6} same")
    for r in res["rows"]:
        old = next(o for o in res["rows"] if o["kind"] == r["kind"] and o["radix"] is None
                   and o["block"] == r["block"] and o["warps"] == r["warps"])  # fmt: skip
        g, e = r.get("graph_us", float("nan")), r.get("events_us", float("nan"))
        speed = old.get("graph_us", float("nan")) / g if gpu else float("nan")
        same = "yes" if r["same_as_old"] and r["same_as_top_blocks"] else "NO"
        print(f"{r['kind']:8} {r['search']:17} {r['block']:6} {r['warps']:5} {g:9.2f} {e:9.2f} {speed:6.2f} {same}")
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "topk_bench.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out / 'topk_bench.json'}; {'all outputs equal' if not bad else f'{bad} MISMATCHES'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
