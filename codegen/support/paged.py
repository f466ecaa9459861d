"""The paged KV cache of generated modules, and decode-time selection over its pages.

Every layer has one pool of fixed-size pages (`page` tokens each: k, v, positions, and per
page summaries for selection) shared by every sequence (batch row) and KV head. A page table
per (row, KV head) maps the head's logical pages (positions p // page) to pool pages, so a
head grows a page at a time, without copying, and rows of different lengths share the pool.
`PagePool` and the page tables are plain Python (the allocator's bookkeeping); the device
sees, per layer, `list` (B, H_KV, width): the pool pages each head holds, in position order.

Lossless heads follow their layout (cache.HeadRule): a page whose every position is dead
(older than a ring's window and past its sinks, or before a chunk's start) returns to the
pool; the kernel reads the rest and masks what the head does not hold (`sink`, `lo`) and
what the pattern forbids. Selecting heads (`select` in the cache block) keep every token;
each decode step scores their pages (or tokens) against the step's queries, keeps the best
(`block_scores.top_blocks`: ties to the lowest index) and reads them with the keep rules.

H2O and TOVA heads hold the packed Cache's slots in pages (slot j in the head's page j //
page): at most budget + 1 slots, pages taken as they grow; their scores and a copy of their
positions lie in slot order beside their logits rows (`score`, `hpos`). The paged kernel
writes their step logits and the packed cache's `_kv_update_kernel`, given the page lists,
folds, evicts into the victim's slot and writes the next token; prompts and other appends go
by the packed rules in torch (policies.py).

What varies per pattern is a `PagedSpec` (the CacheSpec, the page size, the selections, the
pattern's paged kernel `_pg_fwd_kernel` in paged.py.j2).
"""

from __future__ import annotations

import heapq
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from .block_scores import block_mean, block_min_max, mean_score, quest_bound, top_blocks
from .launch import FastLaunch, cdiv, int_specialisation, pow2_at_least, table, to_device, wait_previous
from .cache import _KV_FUSED, CACHE_DTYPES, CacheError, CacheSpec, _cache_device, _KvClass, _kv_update_launch
from .checks import HEAD_DIMS, check_scale, check_tensor, dtype_names, interpreting, verdict_key
from .decode import _DEC_LOG2E, DecodeConfig, StepLogits, _dec_buffers, _dec_sms
from .policies import AGGREGATES, aggregate, attention_stats, priority, rescore, survivors, victim
from .records import Select


class PagedSpec(NamedTuple):
    """What a pattern's PagedCache needs from its generated module."""

    cache: CacheSpec
    page: int  # tokens per page
    select: tuple  # [layer][kv head] -> Select or None
    kernel: Callable  # the pattern's _pg_fwd_kernel


# ------------------------------------------------------------------ the allocator


class PagePool:
    """Page ids 0 .. capacity - 1 of one pool: which are free and who owns the others.
    `alloc` hands out the lowest free id; `free` takes a page back from its owner (the free
    ids are a heap: both in O(log pages), as a step frees and takes pages)."""

    def __init__(self, capacity: int = 0):
        self.capacity = 0
        self._free: list[int] = []  # a min-heap of the free ids
        self.owner: dict[int, object] = {}
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Add ids up to `capacity` (the pool's tensors grew to hold them)."""
        if capacity > self.capacity:
            self._free += range(self.capacity, capacity)
            heapq.heapify(self._free)
            self.capacity = capacity

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def alloc(self, owner: object) -> int:
        if not self._free:
            raise CacheError(f"page pool full ({self.capacity} pages)")
        page = heapq.heappop(self._free)
        self.owner[page] = owner
        return page

    def free(self, page: int, owner: object) -> None:
        if self.owner.get(page) != owner:
            raise CacheError(f"page {page} is not held by {owner!r} (held by {self.owner.get(page)!r})")
        del self.owner[page]
        heapq.heappush(self._free, page)


# ------------------------------------------------------------------ the selection's scores


@triton.jit(do_not_specialize=["LW"])
def _pg_append_kernel(KN, VN, K, V, POS, LIST, LLEN, TLEN, LO, STEP, SINKS, NSINK, LP0, NPOS, NTOK, LW,
                      H_KV: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, SENT: tl.constexpr,
                      BLOCK_W: tl.constexpr, PDL: tl.constexpr = False):  # fmt: skip
    """A quiet step (PagedCacheBase._quiet_step): one token of KV head h of row b (program b *
    H_KV + h) at position n = NPOS[b, h], into the page its LIST row holds for it. The row holds
    LLEN entries the decode reads (NSINK sink pages first, then the window from logical page
    LP0) and TLEN - LLEN pages reserved after them. A token that opens a page (n % PAGE == 0)
    takes the first reserved one (LLEN grows); where the head slides (STEP 1) and its first
    window page has died, that page first moves from the front of the window to the end of
    the reserve (the entries between move up one; its positions become SENT), so the window
    never grows. LO moves by STEP; NPOS, and NTOK[b] (program h == 0), by one."""
    wait_previous(PDL)
    bh = tl.program_id(0).to(tl.int64)
    row = LIST + bh * LW
    n = tl.load(NPOS + bh)
    h = bh % H_KV
    e = tl.load(LLEN + bh)
    step = tl.load(STEP + h)
    lo = tl.load(LO + bh) + step
    off = n % PAGE
    page = tl.load(row + tl.maximum(e - 1, 0), mask=off != 0, other=0)  # the page of the last token
    if off == 0:
        s = tl.load(NSINK + bh)
        lp0 = tl.load(LP0 + bh)
        end = tl.load(TLEN + bh)
        page = tl.load(row + e, mask=e < end, other=0)
        if (step != 0) & (e > s) & ((lp0 + 1) * PAGE <= lo) & (lp0 * PAGE >= tl.load(SINKS + h)):
            dead = tl.load(row + s)
            for c in range(s, end - 1, BLOCK_W):  # entries s + 1 .. end - 1 move up one
                i = c + tl.arange(0, BLOCK_W)
                moved = tl.load(row + i + 1, mask=i < end - 1)
                tl.debug_barrier()  # every entry is read before it is written
                tl.store(row + i, moved, mask=i < end - 1)
            tl.store(row + end - 1, dead)
            tl.store(LP0 + bh, lp0 + 1)
            slots = dead.to(tl.int64) * PAGE + tl.arange(0, PAGE)
            tl.store(POS + slots, tl.full([PAGE], SENT, tl.int32), mask=(tl.arange(0, PAGE) > 0) | (e < end))
            page = tl.where(e < end, page, dead)
        else:
            tl.store(LLEN + bh, e + 1)
    offs_d = tl.arange(0, HEAD_DIM)
    slot = page.to(tl.int64) * PAGE + off
    tl.store(K + slot * HEAD_DIM + offs_d, tl.load(KN + bh * HEAD_DIM + offs_d))
    tl.store(V + slot * HEAD_DIM + offs_d, tl.load(VN + bh * HEAD_DIM + offs_d))
    tl.store(POS + slot, n)
    tl.store(LO + bh, lo)
    tl.store(NPOS + bh, n + 1)
    if h == 0:
        tl.store(NTOK + bh // H_KV, n + 1)


@triton.jit
def _pg_score_kernel(
    Q, SA, SB, SS, LIST, NTOK, HI, OUT, T, NU, LW, NH, page, sink, recent,
    H_KV: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr, RP: tl.constexpr, USZ: tl.constexpr, MODE: tl.constexpr,
    AGG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_U: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
    SCALED: tl.constexpr, STEPS: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """Scores of the candidate units u of one selecting head against its G * T query rows,
    aggregated over the rows: OUT (B, NH, NU) float32; -inf where u is no candidate (the keep
    rules read it: u < ceil(sink / USZ) or u >= (n - max(recent, T)) // USZ, or past the row's
    NTOK tokens). Unit u is row (LIST[u // RP] * RP + u % RP) of SA (and SB). MODE 0: Quest's
    bound (SA min, SB max; SCALED: float8 e4m3 times the page's scale SS, fp8_bounds); 1:
    q . (SA / tokens in the page) (the mean key, rounded to Q's dtype); 2: q . SA (keys). A
    program scores STEPS blocks of BLOCK_U units in a pipelined loop (the summaries' loads of
    the next block in flight while this one is scored), q loaded once."""
    wait_previous(PDL)
    pid = tl.program_id(0)
    b = (pid // NH).to(tl.int64)
    i = pid % NH
    h = tl.load(HI + i)
    n = tl.load(NTOK + b)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < G * T
    q = tl.load(
        Q + ((b * H_KV + h) * G * T + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    if UPCAST:  # the Triton 3.6 interpreter multiplies bf16 wrongly: compute in fp32 there
        q = q.to(tl.float32)
    for j in tl.range(0, STEPS):
        u = (tl.program_id(1) * STEPS + j) * BLOCK_U + tl.arange(0, BLOCK_U)
        _pg_score_block(
            SA, SB, SS, LIST, OUT, q, b, i, h, n, u, row_ok, offs_d, T, NU, LW, NH, page, sink, recent,
            H_KV, G, HEAD_DIM, RP, USZ, MODE, AGG, DOT_PREC, SCALED, Q.dtype.element_ty,
        )  # fmt: skip


@triton.jit
def _pg_score_block(
    SA, SB, SS, LIST, OUT, q, b, i, h, n, u, row_ok, offs_d, T, NU, LW, NH, page, sink, recent,
    H_KV: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr, RP: tl.constexpr, USZ: tl.constexpr, MODE: tl.constexpr,
    AGG: tl.constexpr, DOT_PREC: tl.constexpr, SCALED: tl.constexpr, KEY_DTYPE: tl.constexpr,
):  # fmt: skip
    """One block of units u of _pg_score_kernel: their scores, aggregated, stored (KEY_DTYPE:
    the cache's, which the mean key is rounded to)."""
    ok_u = (u >= (sink + USZ - 1) // USZ) & (u < tl.maximum(n - tl.maximum(recent, T), 0) // USZ)
    entry = tl.load(LIST + (b * H_KV + h) * LW + u // RP, mask=ok_u, other=0)
    row = entry.to(tl.int64) * RP + u % RP
    a = tl.load(SA + row[:, None] * HEAD_DIM + offs_d[None, :], mask=ok_u[:, None], other=0.0)
    if MODE == 0:  # float8 in q's dtype is exact; a power-of-two scale after the sum too
        a = a.to(q.dtype)
        hi = tl.load(SB + row[:, None] * HEAD_DIM + offs_d[None, :], mask=ok_u[:, None], other=0.0).to(q.dtype)
        s = tl.dot(tl.where(q > 0, q, 0.0).to(q.dtype), tl.trans(hi), input_precision=DOT_PREC)
        s = tl.dot(tl.where(q < 0, q, 0.0).to(q.dtype), tl.trans(a), s, input_precision=DOT_PREC)
        if SCALED:
            s = s * tl.load(SS + row, mask=ok_u, other=1.0)[None, :]
    elif MODE == 1:  # the mean key in the cache's dtype (unit_scores): one product on the tensor cores
        cnt = tl.minimum(tl.load(SB + b) - u * page, page)  # SB: the row's tokens
        mean = tl.math.div_rn(a.to(tl.float32), tl.maximum(cnt, 1).to(tl.float32)[:, None])
        s = tl.dot(q, tl.trans(mean.to(KEY_DTYPE).to(q.dtype)), input_precision=DOT_PREC)
    else:
        s = tl.dot(q, tl.trans(a.to(q.dtype)), input_precision=DOT_PREC)
    if AGG == 1:
        out = tl.max(tl.where(row_ok[:, None], s, float("-inf")), 0)
    else:
        out = tl.sum(tl.where(row_ok[:, None], s, 0.0), 0)
        if AGG == 0:
            out = out / (G * T)
    out = tl.where(ok_u, out, float("-inf"))
    tl.store(OUT + (b * NH + i) * NU + u, out, mask=u < NU)


@triton.jit
def _pg_unit_keys(SC, c, NU, BLOCK: tl.constexpr):
    """Units c .. c + BLOCK - 1 of one score row: (u, key). `key` (int32) orders the float32
    scores (-0.0 equals +0.0); scores that are not finite (-inf: no candidate) are no
    candidates, as in top_blocks: their key is -2^31, below every finite score's."""
    u = c + tl.arange(0, BLOCK)
    s = tl.load(SC + u, mask=u < NU, other=float("-inf"), cache_modifier=".cg")
    s = tl.where(s == 0.0, 0.0, s)
    x = s.to(tl.int32, bitcast=True)
    return u, tl.where(tl.abs(s) < float("inf"), x ^ ((x >> 31) & 0x7FFFFFFF), -2147483648)


@triton.jit
def _pg_digits(SC, NU, lo, span, shift, key0, ONE: tl.constexpr, BLOCK: tl.constexpr, RADIX: tl.constexpr):
    """The histogram (2^RADIX,) of the digits (key - lo) >> shift of a score row's keys in
    [lo, lo + span] (unsigned span: key - lo wraps below lo); key0: the row, when it is one
    block held in registers (ONE)."""
    h = tl.zeros([1 << RADIX], tl.int32)
    for c in range(0, NU, BLOCK):
        if ONE:
            key = key0
        else:
            _, key = _pg_unit_keys(SC, c, NU, BLOCK)
        off = (key - lo).to(tl.uint32, bitcast=True)
        h += tl.histogram(((off >> shift) & ((1 << RADIX) - 1)).to(tl.int32), 1 << RADIX, mask=off <= span)
    return h


@triton.jit
def _pg_threshold(SC, NU, units, key0, ONE: tl.constexpr, BLOCK: tl.constexpr, RADIX: tl.constexpr):
    """(thr, take): the `units`-th largest candidate key of a score row (its smallest, where it
    has fewer) and how many keys equal to thr to take (every key > thr is taken). A radix
    search from the top bit, RADIX bits a pass (one histogram: one reduction round): a pass
    counts the digits of the keys in the range [lo, lo + span] still open, keeps the digit
    holding the rem-th largest of them and narrows the range to it; it stops early where that
    digit and those above hold exactly rem keys (thr: the digit's lowest key; all keys >= thr
    are taken). Ranges end at 2^31 - 1 and the first starts above -2^31, the key of no
    candidate (key - lo then wraps above span)."""
    lo = tl.full([], -2147483647, tl.int32)
    span = tl.full([], 0xFFFFFFFE, tl.uint32)
    rem = tl.zeros([], tl.int32) + units  # keys still to choose within the range
    digit = tl.arange(0, 1 << RADIX)
    shift = tl.full([], 32, tl.int32)
    done = rem < 0
    while (shift > 0) & ~done:
        shift = tl.maximum(shift - RADIX, 0)
        sfx = tl.cumsum(_pg_digits(SC, NU, lo, span, shift, key0, ONE, BLOCK, RADIX), 0, reverse=True)
        ge = (sfx >= rem) | (digit == 0)  # sfx: keys of digit >= d; digit 0 also for short rows
        d = tl.sum(ge.to(tl.int32), 0) - 1
        done = tl.min(tl.where(ge, sfx, 2147483647), 0) <= rem
        rem -= tl.max(tl.where(ge, 0, sfx), 0)  # the keys of digits above d: all taken
        lo += d << shift
        span = tl.minimum(((1 << shift) - 1).to(tl.uint32), (2147483647 - lo).to(tl.uint32, bitcast=True))
    return lo, rem


@triton.jit
def _pg_topk_kernel(
    SC, LIST, NTOK, HI, CHOSEN, SEL, SLEN, T, NU, LW, SW, NH, units, sink, recent,
    H_KV: tl.constexpr, P: tl.constexpr, TOKENS: tl.constexpr, BLOCK: tl.constexpr, ONE: tl.constexpr,
    RADIX: tl.constexpr, WS_PAD: tl.constexpr, WL_PAD: tl.constexpr, CH_PAD: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    """The units one selecting head of one row reads (program b * NH + i, head HI[i]): the keep
    rules' units (those holding positions < sink, those holding the newest max(recent, T)),
    then the `units` best candidates of its score row SC (B, NH, NU) (_pg_score_kernel), ties to
    the lowest unit (block_scores.top_blocks); fewer finite scores: all of them. Writes their
    pool entries (pages; pool slots for TOKENS) to SEL (B, H_KV, SW) and their number to SLEN
    (B, H_KV), and the chosen logical units, increasing and -1 padded, to CHOSEN (B, NH, units).
    The threshold (the k-th largest score) comes from _pg_threshold's radix search over the
    row, held in registers when it is one block (ONE); equal scores then go by index."""
    wait_previous(PDL)
    pid = tl.program_id(0)
    tl.static_assert(BLOCK < 65536)  # per block, counts of keys above and equal to thr share an int32
    sc = SC + pid.to(tl.int64) * NU
    _, key0 = _pg_unit_keys(sc, 0, NU, BLOCK)
    thr, take = _pg_threshold(sc, NU, units, key0, ONE, BLOCK, RADIX)
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
    js = tl.arange(0, WS_PAD)  # the keep rules: [0, ws) and [last0, last1)
    es = tl.load(tab + js // rp, mask=js < ws, other=0)
    tl.store(sel + js, es * rp + js % rp, mask=js < ws)
    jl = tl.arange(0, WL_PAD)
    ul = last0 + jl
    el = tl.load(tab + ul // rp, mask=ul < last1, other=0)
    tl.store(sel + ws + jl, el * rp + ul % rp, mask=ul < last1)
    nstat = ws + tl.maximum(last1 - last0, 0)
    ties = tl.zeros([], tl.int32)
    placed = tl.zeros([], tl.int32)
    out = CHOSEN + pid.to(tl.int64) * units
    for c in range(0, NU, BLOCK):
        if ONE:
            u, key = c + tl.arange(0, BLOCK), key0
        else:
            u, key = _pg_unit_keys(sc, c, NU, BLOCK)
        eq = key == thr  # thr > -2^31: no candidate is ever chosen
        above = key > thr
        both = above.to(tl.int32) * 65536 + eq.to(tl.int32)  # both counts in one scan and one sum
        cnt = tl.cumsum(both, 0)
        rank = ties + (cnt & 0xFFFF)  # of the keys equal to thr, the first `take` are chosen
        chosen = above | (eq & (rank <= take))
        slot = placed + (cnt >> 16) + tl.minimum(rank, take) - tl.minimum(ties, take) - 1
        tl.store(out + slot, u, mask=chosen)
        e = tl.load(tab + u // rp, mask=chosen, other=0)
        tl.store(sel + nstat + slot, e * rp + u % rp, mask=chosen)
        tot = tl.sum(both, 0)
        placed += (tot >> 16) + tl.minimum(ties + (tot & 0xFFFF), take) - tl.minimum(ties, take)
        ties += tot & 0xFFFF
    jc = tl.arange(0, CH_PAD)
    tl.store(out + jc, tl.full([CH_PAD], -1, tl.int32), mask=(jc >= placed) & (jc < units))
    tl.store(SLEN + b * H_KV + h, nstat + placed)


_PG_TOPK_BLOCK = 8192  # score rows up to this long stay in registers through the top-k's passes
_PG_RADIX = 5  # bits a pass of the top-k radix search: 32 bins (tl.histogram pads fewer to 32)


def _sel_width(s: Select, page: int, T: int) -> tuple[int, int, int, int]:
    """Entries one selecting head reads at most, at T query tokens: (units < sink, units of the
    newest max(recent, T) positions, chosen, their sum); units are pages, tokens for `tokens`."""
    unit = 1 if s.score == "tokens" else page
    ws, wl = -(-s.sink // unit), -(-max(s.recent, T) // unit) + 1
    return ws, wl, s.units, ws + wl + s.units


_PG_FIT: dict = {}  # (device, attention launch's constants) -> programs one SM holds at once


def _resident(regs: int, shared: int, warps: int, p=None) -> int:
    """Programs of a kernel (registers per thread, shared bytes, warps) that one SM holds at
    once: registers are allocated per warp in units of 256, 1 KiB of shared memory is reserved
    per program; p: the device's properties (absent ones: an H100's)."""
    smem = getattr(p, "shared_memory_per_multiprocessor", 233472)
    by_regs = getattr(p, "regs_per_multiprocessor", 65536) // (-(-regs * 32 // 256) * 256 * warps)
    by_warps = getattr(p, "max_threads_per_multi_processor", 2048) // (32 * warps)
    return max(1, min(by_regs, by_warps, smem // (shared + 1024), 32))


# ------------------------------------------------------------------ host state


def keep_units(n, s: Select, unit: int, T: int):
    """(B, W) logical units the keep rules always read, -1 padded (those holding positions
    < sink, and the newest max(recent, T): the step's own tokens), and (B, 1) bounds [lo, hi)
    of the units the selection chooses from, for rows holding n (B,) tokens. Device
    arithmetic only (no sync)."""
    n = n.to(torch.int64)[:, None]
    nu = (n + unit - 1) // unit
    ws = -(-s.sink // unit)
    r = max(s.recent, T)
    first = torch.arange(ws, device=n.device)[None, :]
    first = torch.where(first < nu, first, -1)
    start = ((n - r) // unit).clamp_min(0)
    last = start + torch.arange(-(-r // unit) + 1, device=n.device)[None, :]
    last = torch.where((last < nu) & (last >= ws), last, -1)
    return torch.cat([first.expand(n.shape[0], -1), last], 1), torch.full_like(start, ws), start


def fp8_bounds(lo, hi):
    """Quest's page summaries at 8 bits: per-channel minima lo and maxima hi (float32, (..., D))
    in float8 e4m3 times a power-of-two scale per page (...,): lo rounded down and hi rounded
    up, so that the bound they give stays an upper bound of q . k over the page (only looser,
    by at most one float8 step of each channel's extreme). The scale 2^(e - 8), where
    2^(e - 1) <= max |value| < 2^e (at least 2^-126), keeps every scaled value below 256 before
    rounding (at most 256 after; float8's largest is 448: nothing saturates). Returns (lo8,
    hi8, scale); the bound reads lo8 * scale and hi8 * scale."""
    amax = torch.maximum(lo.abs(), hi.abs()).amax(-1)
    e = torch.frexp(torch.where(amax.isfinite(), amax, 0.0))[1]
    scale = torch.ldexp(torch.ones_like(amax), (e - 8).clamp_min(-126))  # a normal float32
    return _fp8_outward(lo, scale[..., None], -1), _fp8_outward(hi, scale[..., None], 1), scale


def _fp8_outward(x, scale, way: int):
    """x / scale (float32, |x / scale| < 256) in float8 e4m3 rounded down (way -1) or up (way 1):
    to nearest, then one step further where that moved the value the wrong way, compared
    unscaled (x / scale may underflow); rounding keeps the sign, so a step is one code up or
    down (magnitude codes are ordered)."""
    y = (x / scale).to(torch.float8_e4m3fn)
    wrong = y.float() * scale > x if way < 0 else y.float() * scale < x
    neg = y.view(torch.uint8) >= 128
    step = torch.where(neg, -way, way).to(torch.int16)  # the code of a negative value counts its magnitude
    code = y.view(torch.uint8).to(torch.int16) + torch.where(wrong, step, 0)
    return code.to(torch.uint8).view(torch.float8_e4m3fn)


def page_bounds(keys, page: int, bits: int = 16):
    """The summaries a quest page keeps of its keys (..., N, D), as (lo, hi) float32: their
    channel minima and maxima (block_min_max), exact at 16 bits, by fp8_bounds at 8."""
    lo, hi = block_min_max(keys, page)
    if bits == 16:
        return lo, hi
    lo8, hi8, scale = fp8_bounds(lo, hi)
    return lo8.float() * scale[..., None], hi8.float() * scale[..., None]


def unit_scores(qs, keys, s: Select, page: int):
    """The scores of one KV head's units from its keys (position order) in torch: the step's
    queries qs (G * T, D) against each page's Quest bound or mean key, or each key
    (`tokens`), combined over the queries by `aggregate` (block_scores)."""
    if s.score == "quest":
        sc = quest_bound(qs, *page_bounds(keys, page, s.bits))
    elif s.score == "mean":
        sc = mean_score(qs, block_mean(keys, page).to(keys.dtype))  # rounded as the kernel scores it
    else:
        sc = mean_score(qs, keys)
    return aggregate(sc, s.aggregate, -2)


def best_units(scores, lo, hi, units: int):
    """The `units` best of scores (B, nh, NU) among the units in [lo, hi) (B, 1), -1 padded to
    `units`; equal scores go to the lowest unit (top_blocks)."""
    u = torch.arange(scores.shape[-1], device=scores.device)[None, :]
    chosen = top_blocks(scores.masked_fill(((u < lo) | (u >= hi))[:, None, :], float("-inf")), units)
    if chosen.shape[-1] < units:
        chosen = torch.cat([chosen, chosen.new_full((*chosen.shape[:-1], units - chosen.shape[-1]), -1)], -1)
    return chosen


class _PgLayer:
    """One layer: its pool, its page tables, its lengths, and their device copies."""

    def __init__(self, spec: PagedSpec, layer: int, batch: int):
        cs = spec.cache
        self.layer = layer
        self.rules = [cs.rules[r] for r in cs.table[layer]]
        self.select = spec.select[layer]
        self.tables = [[{} for _ in self.rules] for _ in range(batch)]  # logical -> pool page, in order
        self.n = [0] * batch
        self.pool = PagePool()
        self.k = self.v = self.pos = self.smin = self.smax = self.sscale = self.ssum = None
        self.list = self.llen = self.lo = self.ntok = None
        self.sinks = None
        self.chosen: dict = {}
        self.attend: dict = {}  # the decode kernel's launches (FastLaunch) per geometry
        self.launches: dict = {}  # the selection's score and top-k launches and the quiet step's (FastLaunch)
        self.geo: dict = {}  # the decode's geometry per (tokens, shape, config): _attend
        groups: dict = {}
        for h, s in enumerate(self.select):
            if s is not None:
                groups.setdefault(s, []).append(h)
        self.groups = [(s, tuple(hs)) for s, hs in groups.items()]
        pols = [cs.policies[r.policy] if r.kind == "lossy" else None for r in self.rules]
        self.plain = [h for h, p in enumerate(pols) if p is None]  # heads whose pages follow positions
        classes: dict = {}
        for h, p in enumerate(pols):
            if p is not None:
                classes.setdefault(p, []).append(h)
        self.classes = [_KvClass(tuple(hs), p, tuple(hs)) for p, hs in classes.items()]  # H2O, TOVA
        self.held = [[0] * len(self.rules) for _ in range(batch)]  # slots a lossy head of a row holds
        self.pend: list = [None] * batch  # (q, its row, scale) of a row's step whose eviction is pending
        self.decoded = False  # a decode wrote the step logits since the last append
        self.score = self.hpos = self.logits = self.held_t = self.pend_t = None
        self.fast = None  # the device state of the quiet one-token steps (PagedCacheBase._arm_fast)
        self.arms = not self.classes and not self.groups  # every head keeps tokens by position
        # heads that hold a sliding window (lo = n - ring, bounds): lo moves with every token
        self.sliding = [s is None and r.kind == "ring" and not r.sres for s, r in zip(self.select, self.rules)]
        # (m, r): a step of a row at n with n % m == r is not quiet: a chunk head's new chunk (lo
        # moves, pages die); a page opens or a window's page dies quietly (_quiet_step)
        breaks = {(r.chunk, 0) for r in self.rules if r.kind == "chunk"}
        self.breaks = tuple(sorted(breaks))

    def bounds(self, h: int, n: int) -> tuple[int, int]:
        """(sink, lo): the head holds positions < sink and >= lo (dead pages are freed)."""
        r = self.rules[h]
        if self.sliding[h]:
            return r.sink, n - r.ring
        if r.kind == "chunk":
            return 0, ((n - 1) // r.chunk) * r.chunk if n else 0
        return 0, 0


def _memo_launch(memo: dict, key, kernel, grid: tuple, constants: dict) -> FastLaunch:
    """memo[key] = FastLaunch(kernel, grid, constants); the memo is emptied past 256 entries
    (the score kernel's grid grows with the longest row: one launch per 64 of its pages)."""
    if len(memo) > 256:
        memo.clear()
    memo[key] = FastLaunch(kernel, grid, constants)
    return memo[key]


def _dead_pages(tab: dict, sink: int, lo: int, page: int) -> tuple[int, list]:
    """(where, pages): the logical pages of a table (keys in position order: pages are added as
    tokens come and leave from the front) whose every position is dead, past the sinks and
    before lo, and the index in the table of the first of them (they follow the sink pages,
    one run). Stops at the first page reaching lo, so a step looks at the sink pages and the
    dead ones only."""
    dead, where = [], 0
    for lp in tab:
        if (lp + 1) * page > lo:
            break
        if lp * page >= sink:
            dead.append(lp)
        else:
            where += 1
    return where, dead


class PagedCacheBase:
    """The paged KV cache of a pattern file (a subclass sets `spec`).

    PagedCache(batch, device=..., dtype=..., pages=None, head_dim=None): `pages` fixes each
    layer's pool (appending past it is an error); without it pools double when full.
    append(layer, k, v, rows=None) stores T new tokens of the given rows (k, v: (R, H_KV, T,
    D)), each row at its own length; release(row) returns a row's pages; decode(layer, q)
    reads the held pages (selecting heads: the keep rules and the best pages)."""

    spec: PagedSpec = None
    score_tile = (64, 4, 1, 3)  # (units, warps, steps, stages) of _pg_score_kernel (bench/decode_select.py sweeps it)
    topk_warps = 8  # warps of a program of _pg_topk_kernel (bench/decode_select.py sweeps it)

    def __init__(self, batch, *, device="cpu", dtype=torch.float16, pages=None, head_dim=None):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise CacheError(f"PagedCache: batch must be a positive int, got {batch=}")
        if dtype not in CACHE_DTYPES[:3]:
            raise CacheError(f"PagedCache: dtype must be one of {dtype_names(CACHE_DTYPES[:3])}, got {dtype=}")
        if pages is not None and (not isinstance(pages, int) or isinstance(pages, bool) or pages < 1):
            raise CacheError(f"PagedCache: pages must be a positive int or None, got {pages=}")
        cs = self.spec.cache
        for p in cs.policies:
            if p.score not in _KV_FUSED or p.timing != "decode" or p.budget is None or cs.decode.max_step != 1:
                raise CacheError(f"PagedCache: this file's cache evicts by {p.score} at {p.timing} (budget "
                                 f"{p.budget}, max_step {cs.decode.max_step}); the paged cache serves h2o and tova at "
                                 "decode with a fixed budget and one token a step: use the packed Cache")  # fmt: skip
        head_dim = cs.head_dim if head_dim is None else head_dim
        if head_dim not in HEAD_DIMS:
            raise CacheError(f"PagedCache: head_dim must be one of {HEAD_DIMS}, got {head_dim=}")
        self.batch, self.dtype, self.head_dim, self.pages = batch, dtype, head_dim, pages
        self.device = _cache_device(device, "triton")
        self.page = self.spec.page
        self._layers = [_PgLayer(self.spec, l, batch) for l in range(cs.layers)]
        self._rows = list(range(batch))  # every row, in order (append's default; never mutated)
        self._checked: set = set()  # the verdicts of append's and decode's tensor checks

    # -------------------------------------------------------------- appending

    def append(self, layer, k, v, q=None, rows=None, *, sm_scale=None):
        """Store T new tokens (positions n_b .. n_b + T - 1) of each row b in `rows` (default:
        every row, in order); k, v: (len(rows), H_KV, T, D); q (len(rows), H, T, D): the step's
        queries, which H2O and TOVA heads score with (docs/caches.md)."""
        L = self._layer(layer)
        if rows is None:
            rows = self._rows
        else:
            rows = [int(r) for r in rows]
            if len(set(rows)) != len(rows) or not all(0 <= r < self.batch for r in rows):
                raise CacheError(f"append: rows must be distinct batch rows in 0..{self.batch - 1}, got {rows}")
        D = self.head_dim
        key, R = verdict_key(k, v, q), len(rows)  # a step repeats the same append: the verdict is memoised
        self._checked_once(key and ("append", key, R, L.layer), lambda: self._check_append(L, R, k, v, q))
        T = k.shape[2]
        scale = check_scale("append", sm_scale, D, "sm_scale")
        if self._quiet_step(L, rows, k, v, T):
            return
        L.fast = None
        if L.k is None:
            self._allocate(L, self.pages or max(4, 2 * len(rows) * len(L.rules) * -(-T // self.page)))
        appended = self._write(L, rows, k, v, T) if L.plain else []
        fused = bool(L.classes) and T == 1 and L.decoded and rows == self._rows
        if L.classes and fused:
            appended += self._lossy_pages(L)
        elif L.classes:
            appended += self._lossy_torch(L, rows, k, v, q, T, scale)
        L.decoded = False
        for b in rows:
            L.n[b] += T
        if L.arms:
            appended += self._reserve(L)
        if not fused or appended or L.plain:  # at the budget, a step changes no list (CUDA graphs)
            self._update_lists(L, self._rows if L.arms else rows, appended)  # (dead pages of quiet steps)
            if fused:
                L.ntok -= 1  # the update kernel advances it
        if fused:
            self._lossy_step(L, k, v, q, scale)
        if L.arms:
            self._arm_fast(L)

    def _arm_fast(self, L) -> None:
        """The device state of the next quiet steps of a layer whose heads all keep tokens by
        position (L.arms), for _pg_append_kernel: per (row, head) its next token's position,
        its list's length with the reserve, its sink pages and the logical page its window
        starts at (the first held page past them); per head whether it slides (lo moves with
        every token). The host mirrors what the steps do (_open_pages)."""
        P, dev = self.page, self.device
        bounds = [[L.bounds(h, n) for h in range(len(L.rules))] for n in L.n]
        sinks = [[min(cdiv(s, P), len(t)) for (s, _), t in zip(bs, tabs)] for bs, tabs in zip(bounds, L.tables)]
        L.nsink = sinks
        L.lp0 = [[max(s, lo // P) for s, (_, lo) in zip(row, bs)] for row, bs in zip(sinks, bounds)]
        ints = [[n] * len(L.rules) for n in L.n] + [[len(t) for t in tabs] for tabs in L.tables] + sinks + L.lp0
        L.fast = table(ints, torch.int32, dev).view(4, self.batch, len(L.rules))

    def _quiet_step(self, L, rows, k, v, T) -> bool:
        """A one-token step of every row of an armed layer (_arm_fast) that needs no page from
        the pool (a chunk head's new chunk, or a page to open with none reserved and no dead
        one to take, is not quiet): one _pg_append_kernel launch writes the tokens and moves
        the device state on; the host mirrors the pages it opens. False where the step is not
        quiet: append's full path takes it (and reserves pages again, _reserve)."""
        f, n = L.fast, L.n
        if f is None or T != 1 or rows != self._rows:
            return False
        for m, r in L.breaks:
            for x in n:
                if x % m == r:
                    return False
        P = self.page
        opening = [b for b, x in enumerate(n) if x % P == 0]
        moves = self._open_pages(L, opening) if opening else ()
        if moves is None:
            return False
        k, v = k.contiguous(), v.contiguous()
        npos, tlen, nsink, lp0 = f
        self._append_launch(L, (k.data_ptr() | v.data_ptr()) % 16 == 0)(
            k, v, L.k, L.v, L.pos, L.list, L.llen, tlen, L.lo, L.step, L.sinks, nsink, lp0, npos, L.ntok,
            L.list.shape[2],
        )  # fmt: skip
        n[:] = [x + 1 for x in n]
        for b, h, lp0 in moves:
            tab = L.tables[b][h]
            if lp0 is None:  # the first reserved page is read from now on
                L.llen_host[b][h] += 1
            else:  # the dead page goes to the end of the reserve
                last = next(reversed(tab))
                tab[last + 1] = tab.pop(lp0)
                L.lp0[b][h] = lp0 + 1
        if moves:
            L.plain_tokens = P * max(map(max, L.llen_host))
        L.decoded = False
        return True

    def _open_pages(self, L, rows) -> list | None:
        """For the rows whose next token opens a page: (row, head, the dead first window page it
        moves to the reserve's end, or None: it takes a reserved page) per head, as
        _pg_append_kernel decides on the device; None if a head has neither."""
        P, out = self.page, []
        for b in rows:
            n = L.n[b]
            for h, tab in enumerate(L.tables[b]):
                e, s, lp0 = L.llen_host[b][h], L.nsink[b][h], L.lp0[b][h]
                sink, lo = L.bounds(h, n + 1)
                if L.sliding[h] and e > s and (lp0 + 1) * P <= lo and lp0 * P >= sink:
                    out.append((b, h, lp0))
                elif len(tab) > e:
                    out.append((b, h, None))
                else:
                    return None
        return out

    def _append_launch(self, L, aligned: bool) -> FastLaunch:
        """The quiet step's launch (one program per (row, KV head)), memoised per layer and by
        whether the step's k and v are 16-byte aligned (as Triton specialises them)."""
        key, grid = ("append", aligned), (self.batch * len(L.rules),)
        return L.launches.get(key) or _memo_launch(L.launches, key, _pg_append_kernel, grid, dict(
            H_KV=len(L.rules), HEAD_DIM=self.head_dim, PAGE=self.page, SENT=self.spec.cache.decode.sentinel,
            BLOCK_W=128, num_warps=1))  # fmt: skip

    def _reserve(self, L) -> list:
        """Pages reserved ahead for every (row, head) of an armed layer, so that steps open pages
        quietly (_reserve_size of them), from the pool's free pages only: a reserve never grows
        the pool (a pool that runs short reserves less; a step that then finds none takes the
        full path). The (row, head, list index, page) of each new one."""
        P, out, new = self.page, [], []
        for b, tabs in enumerate(L.tables):
            first = cdiv(L.n[b], P)  # the first logical page past the tokens held
            for h, tab in enumerate(tabs if L.n[b] else ()):  # rows not begun hold nothing
                want = first + self._reserve_size(L, b, h)
                lp = next(reversed(tab)) + 1 if tab else first
                while lp < want and L.pool.free_pages:  # never grows the pool
                    tab[lp] = pg = self._alloc(L, (b, h))
                    out.append((b, h, len(tab) - 1, pg))
                    new.append(pg)
                    lp += 1
        if new:
            L.pos.view(-1, P).index_fill_(0, table(new, torch.int64, self.device), self.spec.cache.decode.sentinel)
        return out

    def _reserve_size(self, L, b, h) -> int:
        """Pages to hold ahead for (row b, head h): a sixteenth of what it reads, at least two;
        a sliding window no more than it can still grow to (its sink pages, the pages its
        window spans, one dead page lingering), at least one (once whole, the page each step
        opens is the one its window let go)."""
        read = len(L.tables[b][h]) - self._ahead(L, b, h)
        size = max(2, read // 16)
        if L.sliding[h]:
            r, P = L.rules[h], self.page
            size = max(1, min(size, cdiv(r.sink, P) + cdiv(r.ring, P) + 2 - read))
        return size

    def _ahead(self, L, b, h) -> int:
        """Pages of (row b, head h) past its tokens (reserved, not read)."""
        tab = L.tables[b][h]
        if not tab:
            return 0
        return max(0, next(reversed(tab)) + 1 - cdiv(L.n[b], self.page))

    def _checked_once(self, key, check) -> None:
        """Run check() unless it passed before for `key` (None: every time)."""
        if key is None or key not in self._checked:
            check()
            if key is not None:
                self._checked.add(key)

    def _check_append(self, L, R: int, k, v, q) -> None:
        """k, v (R, H_KV, T, D) of this cache's dtype and device, T >= 1; q (R, H, T, D) where
        the layer has H2O or TOVA heads; otherwise a CacheError that says what is wrong."""
        Hk, D = len(L.rules), self.head_dim
        for name, x in (("k", k), ("v", v)):
            check_tensor("append", name, x, dims="R, H_KV, T, D", shape=(R, Hk, None, D), dtype=self.dtype,
                         device=self.device, error=CacheError)  # fmt: skip
        T = k.shape[2]
        if tuple(v.shape) != tuple(k.shape) or T < 1:
            raise CacheError(f"append: k {tuple(k.shape)} and v {tuple(v.shape)} must match, with T >= 1")
        if L.classes:
            if q is None:
                raise CacheError(f"layer {L.layer}: KV heads {[h for c in L.classes for h in c.heads]} evict by "
                                 "h2o or tova, which needs the step's queries: append(layer, k, v, q=q, rows=rows)")  # fmt: skip
            check_tensor("append", "q", q, dims="R, H, T, D", shape=(R, self.spec.cache.decode.heads, T, D),
                         dtype=self.dtype, device=self.device, error=CacheError)  # fmt: skip

    def _write(self, L, rows, k, v, T):
        """Write the tokens of the heads whose pages follow positions, allocating pages; returns
        the (row, head, list index, page) of each new page."""
        P, D, hs = self.page, self.head_dim, L.plain
        span = max((L.n[b] + T - 1) // P - L.n[b] // P + 1 for b in rows)
        if self.pages is not None:  # pages reserved ahead go back to the pool before it runs short
            last = {b: (L.n[b] + T - 1) // P for b in rows}
            tops = {(b, h): next(reversed(L.tables[b][h]), -1) for b in rows for h in hs}  # tables end in a run
            need = sum(max(0, last[b] - max(L.n[b] // P - 1, tops[b, h])) for b, h in tops)
            self._reclaim(L, need - L.pool.free_pages, last)
        phys = [[[0] * span for _ in hs] for _ in rows]  # pool page of each new logical page
        new, appended = [], []
        for i, b in enumerate(rows):
            n0 = L.n[b]
            for x, h in enumerate(hs):
                tab, row = L.tables[b][h], phys[i][x]
                for j, lp in enumerate(range(n0 // P, (n0 + T - 1) // P + 1)):
                    if lp not in tab:
                        tab[lp] = self._alloc(L, (b, h))
                        new.append(tab[lp])
                        appended.append((b, h, len(tab) - 1, tab[lp]))
                    row[j] = tab[lp]
        phys = torch.tensor(phys, dtype=torch.int64)
        dev = self.device
        if new:  # index_fill_ / index_copy_ below: one kernel each (x[idx] = y is a slower index_put_)
            pg = table(new, torch.int64, dev)
            L.pos.view(-1, P).index_fill_(0, pg, self.spec.cache.decode.sentinel)
            if L.ssum is not None:
                L.ssum.index_fill_(0, pg, 0.0)
        if len(hs) < len(L.rules):
            idx = torch.tensor(hs, dtype=torch.int64, device=k.device)
            k, v = k.index_select(1, idx), v.index_select(1, idx)
        n0s = table([L.n[b] for b in rows], torch.int64, dev)
        p = n0s[:, None] + torch.arange(T, device=dev)[None, :]  # (R, T)
        pages = torch.gather(to_device(phys, dev), 2, (p // P - n0s[:, None] // P)[:, None, :].expand(-1, len(hs), -1))
        slots = (pages * P + (p % P)[:, None, :]).reshape(-1)
        L.k.index_copy_(0, slots, k.reshape(-1, D))
        L.v.index_copy_(0, slots, v.reshape(-1, D))
        L.pos.index_copy_(0, slots, p[:, None, :].expand(-1, len(hs), -1).reshape(-1).to(torch.int32))
        pages = pages.reshape(-1)
        if L.smin is not None:
            self._summarise(L, table(sorted(set(phys.reshape(-1).tolist())), torch.int64, dev))
        if L.ssum is not None:
            L.ssum.index_add_(0, pages, k.reshape(-1, D).float())
        return appended

    # -------------------------------------------------------------- H2O and TOVA heads

    def _lossy_page(self, L, b, h, slots: int) -> list:
        """Pages for a lossy head's first `slots` slots (taken from the pool as it grows, never
        past its capacity); the (row, head, list index, page) of each new one."""
        tab, out = L.tables[b][h], []
        while len(tab) * self.page < slots:
            tab[len(tab)] = pg = self._alloc(L, (b, h))
            L.pos[pg * self.page : (pg + 1) * self.page] = self.spec.cache.decode.sentinel
            out.append((b, h, len(tab) - 1, pg))
        return out

    def _lossy_pages(self, L) -> list:
        """Before a fused step: the page of the slot each row's new token takes (the last slot
        after an eviction, else the one after the held ones)."""
        out = []
        for c in L.classes:
            for b in range(self.batch):
                E = L.held[b][c.heads[0]]
                end = E if L.pend[b] is not None and E > c.budget else E + 1
                if len(L.tables[b][c.heads[0]]) * self.page < end:  # a class's heads hold alike
                    for h in c.heads:
                        out += self._lossy_page(L, b, h, end)
        return out

    def _lossy_step(self, L, k, v, q, scale):
        """A one-token step of every row after a decode: one _kv_update_kernel launch per class
        folds the decode's logits into the scores of the rows whose step is pending, evicts
        where they pass the budget, and writes the new token (each row at its own length)."""
        pend, k, v = [p is not None for p in L.pend], k.contiguous(), v.contiguous()
        for c in L.classes:
            where = (L.held_t, L.ntok, L.list, L.pend_t, self.page, c is L.classes[-1])
            held = [L.held[b][c.heads[0]] for b in range(self.batch)]
            c.held = max(held)
            fold = any(pend)
            evict = any(p and e > c.budget for p, e in zip(pend, held))
            _kv_update_launch(self.spec.cache, c, L, k, v, fold, evict, where)
            for b, e in enumerate(held):
                if not (pend[b] and e > c.budget):  # an evicting row holds as many as before
                    for h in c.heads:
                        L.held[b][h] = e + 1
        self._pending(L, range(self.batch), q, scale)

    def _pending(self, L, rows, q, scale):
        """Rows whose last append was one token: its eviction waits for the step's read."""
        for i, b in enumerate(rows):
            L.pend[b] = None if q is None else (q, i, scale)
        flags = [int(p is not None) for p in L.pend]
        if L.pend_t is None or L.pend_host != flags:  # a step at the budget copies nothing (CUDA graphs)
            L.pend_host, L.pend_t = flags, table(flags, torch.int32, self.device)

    def _slots(self, L, b, heads, E):
        """(len(heads), E) pool slots of the first E slots of lossy heads of row b."""
        pages = table([list(L.tables[b][h].values()) for h in heads], torch.int64, self.device)
        j = torch.arange(E, device=self.device)
        return pages[:, j // self.page] * self.page + j % self.page

    def _held(self, c, E):
        """(len(c.heads), E) indices into a row of L.score and L.hpos of a class's first E slots."""
        i = torch.arange(len(c.heads), device=self.device)[:, None]
        return c.logits_row + i * c.slots + torch.arange(E, device=self.device)[None, :]

    def _stats(self, L, c, b, q, kc, pc, n, T, scale):
        """The attention of row b's queries q (H, T, D) at positions n .. n + T - 1 over a
        class's candidates kc (nh, E, D) at pc (nh, E) (policies.attention_stats)."""
        ds = self.spec.cache.decode
        qc = q.view(ds.kv_heads, ds.group, T, q.shape[-1]).index_select(0, c.idx)
        g = c.gid[:, :, None, None]
        allowed = lambda qp, kp: ds.allowed_torch(qp, kp[..., None, :, :], g)  # noqa: E731
        return attention_stats(qc, kc, pc, torch.arange(n, n + T, device=self.device), allowed, scale,
                               c.policy.window, ds.sentinel)  # fmt: skip

    def _finish(self, L, b):
        """The pending eviction of row b's last step in torch (the packed cache's rule,
        CacheBase._evict_step): its attention recomputed from its queries rescores the held
        tokens; past the budget the lowest goes, its slot taking the step's token (the last)."""
        q, i, scale = L.pend[b]
        q, sent, n = q[i], self.spec.cache.decode.sentinel, L.n[b]
        for c in L.classes:
            E = L.held[b][c.heads[0]]
            sl, r = self._slots(L, b, c.heads, E), self._held(c, E)
            kc, pc, score, hpos = L.k[sl], L.pos[sl], L.score[b], L.hpos[b]
            old = score[r]
            old[:, E - 1] = 0
            sc = score[r] = rescore(
                c.policy, old, self._stats(L, c, b, q, kc, pc, n - 1, 1, scale), kc, slice(E - 1, E)
            )
            if E > c.budget:
                vi = victim(priority(c.policy, sc, pc, n), pc, sent)
                dst = sl.gather(1, vi)[:, 0]
                for t in (L.k, L.v, L.pos):
                    t.index_copy_(0, dst, t.index_select(0, sl[:, E - 1]))
                for t in (score, hpos):
                    t[r.gather(1, vi)[:, 0]] = t[r[:, E - 1]]
                L.pos.index_fill_(0, sl[:, E - 1], sent)
                for h in c.heads:
                    L.held[b][h] = E - 1
        L.pend[b] = None

    def _lossy_torch(self, L, rows, k, v, q, T, scale) -> list:
        """Appends to lossy heads other than a fused step, in torch: pending evictions first;
        one token goes after the held ones (its eviction pending); a prompt is scored with the
        held tokens and the budget's best are kept in position order (CacheBase._compress's
        rule: policies.survivors). Returns the new pages."""
        out = []
        for i, b in enumerate(rows):
            if L.pend[b] is not None:
                self._finish(L, b)
            n = L.n[b]
            for c in L.classes:
                E0 = L.held[b][c.heads[0]]
                sl0, r0 = self._slots(L, b, c.heads, E0), self._held(c, E0)
                kc = torch.cat([L.k[sl0], k[i].index_select(0, c.idx)], 1)
                vc = torch.cat([L.v[sl0], v[i].index_select(0, c.idx)], 1)
                new = torch.arange(n, n + T, dtype=torch.int32, device=self.device)
                pc = torch.cat([L.hpos[b, r0], new.expand(len(c.heads), T)], 1)
                sc = torch.cat([L.score[b, r0], L.score.new_zeros((len(c.heads), T))], 1)
                if T == 1:
                    keep, sel = E0 + 1, torch.arange(E0 + 1, device=self.device).expand(len(c.heads), -1)
                else:
                    keep = min(E0 + T, c.budget)
                    sc = rescore(c.policy, sc, self._stats(L, c, b, q[i], kc, pc, n, T, scale), kc, slice(E0, E0 + T))
                    sel = survivors(priority(c.policy, sc, pc, n + T), pc, keep)
                for h in c.heads:
                    out += self._lossy_page(L, b, h, keep)
                sl = self._slots(L, b, c.heads, keep)
                flat = sl.reshape(-1)
                for dst, src in ((L.k, kc), (L.v, vc)):
                    dst.index_copy_(
                        0, flat, torch.gather(src, 1, sel[..., None].expand(-1, -1, src.shape[-1])).flatten(0, 1)
                    )
                L.pos.index_copy_(0, flat, torch.gather(pc, 1, sel).reshape(-1))
                r = self._held(c, keep)
                L.hpos[b, r] = torch.gather(pc, 1, sel)
                L.score[b, r] = torch.gather(sc, 1, sel)
                for h in c.heads:
                    L.held[b][h] = keep
        self._pending(L, rows, q if T == 1 else None, scale)
        L.held_t = table(L.held, torch.int32, self.device)
        return out

    def _summarise(self, L, pg):
        """Quest's summaries of pool pages pg from their held keys: the channel minima and
        maxima, at 8 bits by fp8_bounds (page_bounds is the same rule over keys in order)."""
        P, D = self.page, self.head_dim
        k = L.k.view(-1, P, D)[pg]
        held = (L.pos.view(-1, P)[pg] != self.spec.cache.decode.sentinel)[:, :, None]
        lo = torch.where(held, k, float("inf")).amin(1)
        hi = torch.where(held, k, float("-inf")).amax(1)
        if L.sscale is None:
            L.smin.index_copy_(0, pg, lo)
            L.smax.index_copy_(0, pg, hi)
        else:  # float8 written as bytes (indexing ops need not serve float8)
            lo8, hi8, scale = fp8_bounds(lo.float(), hi.float())
            L.sscale.index_copy_(0, pg, scale)
            L.smin.view(torch.uint8).index_copy_(0, pg, lo8.view(torch.uint8))
            L.smax.view(torch.uint8).index_copy_(0, pg, hi8.view(torch.uint8))

    def release(self, row):
        """End the sequence of a batch row: its pages return to every layer's pool."""
        if not isinstance(row, int) or not 0 <= row < self.batch:
            raise CacheError(f"release: row must be an int in 0..{self.batch - 1}, got {row!r}")
        for L in self._layers:
            for h, tab in enumerate(L.tables[row]):
                for page in tab.values():
                    L.pool.free(page, (row, h))
                tab.clear()
            L.n[row] = 0
            L.fast = None
            L.held[row] = [0] * len(L.rules)
            if L.classes and L.list is not None:
                self._pending(L, [row], None, None)
                L.held_t[row] = 0
            if L.list is not None:
                self._update_lists(L, [row], [], rebuild=True)

    def _alloc(self, L, owner):
        if not L.pool.free_pages:
            if self.pages is not None:
                raise CacheError(
                    f"layer {L.layer}: the pool's {self.pages} pages are all held; create the PagedCache with "
                    "more pages, or release finished rows"
                )
            self._allocate(L, 2 * L.pool.capacity)
        return L.pool.alloc(owner)

    def _reclaim(self, L, pages: int, last: dict) -> None:
        """A fixed pool short of `pages` pages: take back pages reserved ahead (_reserve), each
        the last of its head's table, past logical page last[b] (default: the row's last token's)."""
        for b, tabs in enumerate(L.tables):
            end = last.get(b, (L.n[b] - 1) // self.page)
            for h, tab in enumerate(tabs):
                while pages > 0 and self._ahead(L, b, h) and (lp := next(reversed(tab))) > end:
                    L.pool.free(tab.pop(lp), (b, h))
                    L.fast, pages = None, pages - 1  # the step's device state counted it

    def _allocate(self, L, pages):
        """(Re)allocate the layer's pool with `pages` pages, keeping what it holds (page ids stay)."""
        P, D, dev, old = self.page, self.head_dim, self.device, L.pool.capacity
        sel = {s.score for s in L.select if s is not None}

        def grown(x, shape, dtype, fill):
            if dtype == torch.float8_e4m3fn:  # as bytes (fill 0)
                return grown(None if x is None else x.view(torch.uint8), shape, torch.uint8, 0).view(dtype)
            y = torch.full(shape, fill, dtype=dtype, device=dev)
            if x is not None:
                y[: x.shape[0]] = x
            return y

        L.k = grown(L.k, (pages * P, D), self.dtype, 0)
        L.v = grown(L.v, (pages * P, D), self.dtype, 0)
        L.pos = grown(L.pos, (pages * P,), torch.int32, self.spec.cache.decode.sentinel)
        if "quest" in sel:
            fp8 = 8 in {s.bits for s in L.select if s is not None}  # one precision per file (page_size)
            L.smin = grown(L.smin, (pages, D), torch.float8_e4m3fn if fp8 else self.dtype, 0)
            L.smax = grown(L.smax, (pages, D), torch.float8_e4m3fn if fp8 else self.dtype, 0)
            if fp8:
                L.sscale = grown(L.sscale, (pages,), torch.float32, 1)
        if "mean" in sel:
            L.ssum = grown(L.ssum, (pages, D), torch.float32, 0)
        L.pool.grow(pages)
        if old == 0 and L.classes:
            self._step_logits(L)
        if old == 0:
            Hk = len(L.rules)
            L.heads_of = {tuple(hs): torch.tensor(hs, dtype=torch.int64, device=dev) for _, hs in L.groups}
            units = [1 if s is not None and s.score == "tokens" else P for s in L.select]
            L.units = torch.tensor(units, dtype=torch.int32, device=dev)
            L.sinks = torch.zeros(Hk, dtype=torch.int32, device=dev)
            L.step = table([int(x) for x in L.sliding], torch.int32, dev)  # heads whose lo moves a token a step
            L.list = torch.full((self.batch, Hk, 16), -1, dtype=torch.int32, device=dev)
            L.llen_host = [[0] * Hk for _ in range(self.batch)]
            L.selh = torch.tensor([s is not None for s in L.select], dtype=torch.int32, device=dev)
            ms = self.spec.cache.decode.max_step
            L.sel = torch.full((self.batch, Hk, max([_sel_width(s, P, ms)[3] for s, _ in L.groups], default=1)), -1,
                               dtype=torch.int32, device=dev)  # fmt: skip
            L.slen = torch.zeros((self.batch, Hk), dtype=torch.int32, device=dev)
            L.chosen_t = [torch.full((self.batch, len(hs), s.units), -1, dtype=torch.int32, device=dev)
                          for s, hs in L.groups]  # fmt: skip

    def _step_logits(self, L):
        """The classes' device state and the layer's StepLogits: each lossy head holds at most
        the packed cache's capacity (budget + max_step) in whole pages, its logits rows as many."""
        ds, dev, rows = self.spec.cache.decode, self.device, 0
        soff = [-1] * len(L.rules)
        gid_rows = table(self.spec.cache.gid[L.layer], torch.int64, dev).view(ds.kv_heads, ds.group)
        for c in L.classes:
            c.idx = table(c.heads, torch.int64, dev)
            c.gid = gid_rows[c.idx]  # the group of each of its query heads, as the packed cache's
            c.slots = -(-(c.budget + ds.max_step) // self.page) * self.page
            c.logits_row = rows
            for h in c.heads:
                soff[h], rows = rows, rows + c.slots
        L.logits = StepLogits(self.batch, ds, rows, soff, dev)
        # the held slots' scores and positions in slot order (the positions also in the pool,
        # which the decode reads): the update's fold and choice of a victim read no page list
        L.score = torch.zeros((self.batch, rows), dtype=torch.float32, device=dev)
        L.hpos = torch.full((self.batch, rows), ds.sentinel, dtype=torch.int32, device=dev)
        L.held_t = torch.zeros((self.batch, len(L.rules)), dtype=torch.int32, device=dev)
        self._pending(L, [], None, None)

    def _update_lists(self, L, rows, appended, rebuild=False):
        """Free dead pages, then bring the device page lists, lengths and bounds up to date."""
        P, Hk, dev = self.page, len(L.rules), self.device
        changed, shifts, new = set(), {}, {pg for _, _, _, pg in appended}
        for b in rows:
            for h in range(Hk):
                sink, lo = L.bounds(h, L.n[b])
                tab = L.tables[b][h]
                at, dead = _dead_pages(tab, sink, lo, P) if lo > 0 else (0, ())
                freed = [tab.pop(lp) for lp in dead]
                for page in freed:
                    L.pool.free(page, (b, h))
                if rebuild or not new.isdisjoint(freed):  # a page of this append died with it: rebuilt
                    changed.add((b, h))
                elif dead:
                    shifts.setdefault((at, len(dead)), []).append((b, h))
                L.llen_host[b][h] = len(tab) - self._ahead(L, b, h)
        width = max(len(t) for tabs in L.tables for t in tabs)
        if width > L.list.shape[2]:
            grown = torch.full((self.batch, Hk, max(width, 2 * L.list.shape[2])), -1, dtype=torch.int32, device=dev)
            grown[:, :, : L.list.shape[2]] = L.list
            L.list = grown
        w, moved = L.list.shape[2], {}
        flat = L.list.view(-1, w)  # row b * Hk + h: one (row, head)'s list
        for (at, d), bh in shifts.items():  # on the device: the pages after a dead run move up by its length
            idx = table([b * Hk + h for b, h in bh], torch.int64, dev)
            kept = flat.index_select(0, idx)
            kept = torch.cat([kept[:, :at], kept[:, at + d :], torch.full_like(kept[:, :d], -1)], 1)
            flat.index_copy_(0, idx, kept)
            moved.update(dict.fromkeys(bh, d))
        # new pages (appended before the dead ones left) at their index in the table now
        fresh = [((b * Hk + h) * w + i - moved.get((b, h), 0), pg) for b, h, i, pg in appended if (b, h) not in changed]
        if fresh:
            idx = table(fresh, torch.int64, dev)
            L.list.view(-1).index_copy_(0, idx[:, 0], idx[:, 1].to(torch.int32))
        if changed:  # the rebuilt rows in one copy (-1 padded to the lists' width)
            bh = sorted(changed)
            rows_ = [list(L.tables[b][h].values()) for b, h in bh]
            idx = table([b * Hk + h for b, h in bh], torch.int64, dev)
            flat.index_copy_(0, idx, table([r + [-1] * (w - len(r)) for r in rows_], torch.int32, dev))
        L.llen = table(L.llen_host, torch.int32, dev)
        L.plain_tokens = P * max(
            [n for row in L.llen_host for h, n in enumerate(row) if L.select[h] is None], default=0
        )
        bounds = [[L.bounds(h, L.n[b]) for h in range(Hk)] for b in range(self.batch)]
        L.lo = table([[lo for _, lo in r] for r in bounds], torch.int32, dev)
        L.sinks = table([bounds[0][h][0] for h in range(Hk)], torch.int32, dev)
        L.ntok = table(L.n, torch.int32, dev)

    # -------------------------------------------------------------- selection

    def _choose(self, L, q, s: Select, heads):
        """The chosen logical units (B, len(heads), s.units) of one selection, -1 padded, in torch
        (scores from the keys by block_scores): the best among the units the keep rules do not
        read already, ties to the lowest (best_units)."""
        unit = 1 if s.score == "tokens" else self.page
        static, lo, hi = keep_units(L.ntok, s, unit, q.shape[2])
        NU = max(-(-max(L.n) // unit), 1)
        scores = self._scores_ref(L, q, s, heads, NU)
        return best_units(scores, lo, hi, s.units), static

    def _scores_ref(self, L, q, s: Select, heads, NU):
        """The scores (B, nh, NU) of every unit in torch, from the keys themselves (block_scores),
        not the kept summaries."""
        B, H, T, D = q.shape
        G = H // len(L.rules)
        out = torch.full((B, len(heads), NU), float("-inf"), dtype=torch.float32, device=self.device)
        for b in range(B):
            for i, h in enumerate(heads):
                keys = self._keys(L, b, h)
                if not len(keys):
                    continue
                agg = unit_scores(q[b, h * G : (h + 1) * G].reshape(G * T, D), keys, s, self.page)
                out[b, i, : agg.shape[-1]] = agg
        return out

    def _keys(self, L, b, h):
        """The keys of one head of one row in position order (selecting heads hold them all)."""
        P = self.page
        n = L.n[b]
        pages = table(list(L.tables[b][h].values()), torch.int64, self.device)
        slots = (pages[:, None] * P + torch.arange(P, device=self.device)).reshape(-1)[:n]
        return L.k[slots]

    def _score(self, L, q, g: int, block_u: int = 64, num_warps: int = 4, steps: int = 1, stages: int = 3):
        """The scores (B, nh, NU) of every candidate unit of selection group g (-inf elsewhere),
        by _pg_score_kernel: one program per `steps` blocks of `block_u` units of one head of
        one row, loaded through a `stages`-deep pipeline."""
        s, heads = L.groups[g]
        B, H, T, D = q.shape
        tokens = s.score == "tokens"
        NU = max(-(-max(L.n) // (1 if tokens else self.page)), 1)
        out = torch.empty((B, len(heads), NU), dtype=torch.float32, device=self.device)
        mode = {"quest": 0, "mean": 1, "tokens": 2}[s.score]
        ss = L.sscale if L.sscale is not None else L.ntok  # the scales of float8 summaries (else unread)
        sa, sb = {0: (L.smin, L.smax), 1: (L.ssum, L.ntok), 2: (L.k, L.k)}[mode]
        grid = (B * len(heads), cdiv(NU, block_u * steps))
        ints = (T, NU, L.list.shape[2], len(heads), self.page, s.sink, s.recent)
        key = ("score", g, grid, q.device, q.dtype, T, D, block_u, num_warps, steps, stages,  # T: BLOCK_M
               q.data_ptr() % 16 == 0, int_specialisation(ints))  # fmt: skip
        launch = L.launches.get(key) or _memo_launch(L.launches, key, _pg_score_kernel, grid, dict(
            H_KV=len(L.rules), G=H // len(L.rules), HEAD_DIM=D, RP=self.page if tokens else 1,
            USZ=1 if tokens else self.page, MODE=mode, AGG=AGGREGATES[s.aggregate],
            BLOCK_M=max(16, pow2_at_least(H // len(L.rules) * T)), BLOCK_U=block_u,
            DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
            UPCAST=q.dtype == torch.bfloat16 and interpreting(), SCALED=L.sscale is not None and mode == 0,
            STEPS=steps, num_warps=num_warps, num_stages=stages))  # fmt: skip
        launch(q, sa, sb, ss, L.list, L.ntok, L.heads_of[heads], out, *ints)
        return out

    def _top(self, L, scores, T: int, g: int):
        """Selection group g's read lists from its scores, by _pg_topk_kernel: the keep rules'
        units and the best ones, into L.sel / L.slen (pool entries) and L.chosen_t[g]."""
        s, heads = L.groups[g]
        B, nh, NU = scores.shape
        ws, wl, _, _ = _sel_width(s, self.page, self.spec.cache.decode.max_step)
        block = min(pow2_at_least(NU), _PG_TOPK_BLOCK)
        ints = (T, NU, L.list.shape[2], L.sel.shape[2], nh, s.units, s.sink, s.recent)
        key = ("top", g, B * nh, scores.device, block, NU <= block, self.topk_warps, int_specialisation(ints))
        launch = L.launches.get(key) or _memo_launch(L.launches, key, _pg_topk_kernel, (B * nh,), dict(
            H_KV=len(L.rules), P=self.page, TOKENS=s.score == "tokens", BLOCK=block, ONE=NU <= block,
            RADIX=_PG_RADIX, WS_PAD=pow2_at_least(max(ws, 1)), WL_PAD=pow2_at_least(wl),
            CH_PAD=pow2_at_least(s.units), num_warps=self.topk_warps))  # fmt: skip
        launch(scores, L.list, L.ntok, L.heads_of[heads], L.chosen_t[g], L.sel, L.slen, *ints)

    def _lists_reference(self, L, q):
        """(list, lengths, units per head) that decode_reference reads: the held pages; for
        selecting heads, the keep rules' units and the chosen ones, chosen in torch."""
        if not L.groups:
            return L.list, L.llen, L.units
        parts = []
        for s, heads in L.groups:
            chosen, static = self._choose(L, q, s, heads)
            L.chosen.update({h: chosen[:, i] for i, h in enumerate(heads)})
            logical = torch.cat([static[:, None, :].expand(-1, len(heads), -1), chosen.to(torch.int64)], -1)
            hi = L.heads_of[heads]
            held = L.list.index_select(1, hi).to(torch.int64)
            if s.score == "tokens":
                page = torch.gather(held, 2, (logical.clamp_min(0) // self.page))
                phys = page * self.page + logical.clamp_min(0) % self.page
            else:
                phys = torch.gather(held, 2, logical.clamp_min(0))
            parts.append((hi, torch.where(logical >= 0, phys, -1).to(torch.int32)))
        width = max(L.list.shape[2], *(p.shape[-1] for _, p in parts))
        lst = torch.full((self.batch, len(L.rules), width), -1, dtype=torch.int32, device=self.device)
        lst[:, :, : L.list.shape[2]] = L.list
        llen = L.llen.clone()
        for hi, p in parts:
            lst.index_fill_(1, hi, -1)
            lst[:, hi, : p.shape[-1]] = p
            llen.index_fill_(1, hi, p.shape[-1])
        return lst, llen, L.units

    def selected(self, layer):
        """{kv head: (B, units) logical pages (tokens for `tokens`) the last decode chose, -1 padded}."""
        return {h: c.clone() for h, c in self._layer(layer).chosen.items()}

    # -------------------------------------------------------------- decoding

    def decode(self, layer, q, *, sm_scale=None, config=DecodeConfig()):
        """Attention of the T newest tokens' queries q (B, H, T, D) of every row over the layer's
        pages (selecting heads: the keep rules' pages and the best ones); (B, H, T, D).
        A selection group costs two launches (_score, _top), the attention one (_attend)."""
        L, T, D, scale = self._check_query(layer, q, "decode", sm_scale)
        q = q.contiguous()
        for g in range(len(L.groups)):
            self._top(L, self._score(L, q, g, *self.score_tile), T, g)
        L.chosen = {h: L.chosen_t[g][:, i] for g, (_, hs) in enumerate(L.groups) for i, h in enumerate(hs)}
        out = self._attend(L, q, scale, config)
        L.decoded = bool(L.classes)
        return out

    def _attend(self, L, q, scale, config=DecodeConfig()):
        """The pattern's _pg_fwd_kernel over what each head reads (L.list, or for selecting heads
        L.sel): one program per split of one (row, KV head), the G query heads and T tokens
        packed as the rows of each tile. The splits: about config.programs_per_sm programs per
        SM, evenly cut (multiples of block_n) from the most tokens a head may read; at most as
        many per SM as one SM holds at once (known from the compiled kernel after its first
        launch), so that every program runs in one wave: a second, partial wave of programs
        as long as the first would leave most SMs idle."""
        B, H, T, D = q.shape
        ds = self.spec.cache.decode
        fit_key = (q.device, q.dtype, D, T, config)
        geo_key = (L.plain_tokens, B, fit_key)
        geo = L.geo.get(geo_key)
        if geo is None:
            geo = self._geometry(L, B, T, D, config, fit_key)
            if fit_key in _PG_FIT or q.device.type != "cuda":  # known after the first launch on a GPU
                if len(L.geo) > 256:
                    L.geo.clear()
                L.geo[geo_key] = geo
        ns, split, block_m, (pm, pl, pacc, cnt) = geo
        out = torch.empty_like(q)
        sc = L.logits if T == 1 else None  # H2O and TOVA heads: their step's logits
        lg, lse, soff = (sc.lg, sc.lse, sc.soff) if sc is not None else (None, None, None)
        lgs = sc.lg.shape[2] if sc is not None else 1
        # everything Triton specialises on but the do_not_specialize ints: constants, grid, the
        # pointers given as None, q's alignment (the cache's own tensors are allocated aligned)
        key = (q.device, q.dtype, D, ns, block_m, config, sc is not None, lgs, q.data_ptr() % 16 == 0)
        launch = L.attend.get(key)
        if launch is None:
            kw = dict(H_KV=ds.kv_heads, G=ds.group, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=config.block_n, STAGES=config.stages,
                      DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
                      UPCAST=q.dtype == torch.bfloat16 and interpreting(), SCORES=sc is not None, LGS=lgs,
                      num_warps=config.num_warps)  # fmt: skip
            launch = L.attend[key] = FastLaunch(self.spec.kernel, (B * ds.kv_heads * ns,), kw)
        kernel = launch(
            q, L.k, L.v, L.pos, L.list, L.llen, L.sel, L.slen, L.selh, L.units, L.sinks, L.lo, L.ntok, self._gid(L),
            out, pm, pl, pacc, cnt, lg, lse, soff, T, split, ns, pm.shape[2], L.list.shape[2], L.sel.shape[2],
            scale * _DEC_LOG2E,
        )  # fmt: skip
        if fit_key not in _PG_FIT and q.device.type == "cuda" and getattr(kernel, "n_regs", 0):
            props = torch.cuda.get_device_properties(q.device)
            _PG_FIT[fit_key] = _resident(kernel.n_regs, kernel.metadata.shared, config.num_warps, props)
        return out

    def _geometry(self, L, B: int, T: int, D: int, config, fit_key) -> tuple:
        """(splits, keys per split, rows of a tile, partial buffers) of _attend for the most
        tokens a head may read now."""
        ds = self.spec.cache.decode
        tokens = L.plain_tokens
        for s, _ in L.groups:
            tokens = max(tokens, _sel_width(s, self.page, T)[3] * (1 if s.score == "tokens" else self.page))
        bn = config.block_n
        per_sm = min(config.programs_per_sm, _PG_FIT.get(fit_key) or config.programs_per_sm)
        ns = max(1, min(cdiv(tokens, bn), per_sm * _dec_sms(fit_key[0]) // (B * ds.kv_heads)))
        split = max(config.min_split, cdiv(cdiv(tokens, ns), bn) * bn)
        ns = max(1, cdiv(tokens, split))
        block_m = max(16, pow2_at_least(ds.group * T))
        return ns, split, block_m, _dec_buffers(ds, fit_key[0], B, ns, block_m, D)

    def decode_reference(self, layer, q, *, sm_scale=None):
        """decode in torch, with the selection's torch reference (scores from the keys by
        block_scores): a masked softmax over each head's read tokens (float32)."""
        L, T, D, scale = self._check_query(layer, q, "decode_reference", sm_scale)
        lst, llen, units = self._lists_reference(L, q)
        ds = self.spec.cache.decode
        G = ds.group
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        gid = self._gid(L).to(torch.int64)
        for b in range(self.batch):
            qp = torch.arange(L.n[b] - T, L.n[b], device=q.device, dtype=torch.int64)[:, None]
            for h in range(ds.kv_heads):
                u = int(units[h])
                e = lst[b, h, : int(llen[b, h])].to(torch.int64)
                e = e[e >= 0]
                slots = (e[:, None] * u + torch.arange(u, device=q.device)).reshape(-1)
                kp = L.pos[slots].to(torch.int64)[None, :]
                sink, lo = L.bounds(h, L.n[b])
                held = (kp != ds.sentinel) & ((kp < sink) | (kp >= lo))
                for g in range(G):
                    hq = h * G + g
                    sc = q[b, hq].float() @ L.k[slots].float().T * scale
                    ok = held & ds.allowed_torch(qp, kp, gid[hq])
                    p = torch.softmax(sc.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
                    out[b, hq] = p @ L.v[slots].float()
        return out.to(q.dtype)

    def _check_query(self, layer, q, where, sm_scale):
        L = self._layer(layer)
        ds = self.spec.cache.decode
        D = self.head_dim
        key = verdict_key(q)
        self._checked_once(key and (where, key), lambda: check_tensor(
            where, "q", q, dims="B, H, T, D", shape=(self.batch, ds.heads, None, D), dtype=self.dtype,
            device=self.device, error=CacheError))  # fmt: skip
        T = q.shape[2]
        if not 1 <= T <= ds.max_step or T > min(L.n):
            raise CacheError(
                f"{where}: {T} query tokens; each row must hold them (fewest held: {min(L.n)}) and "
                f"T <= max_step = {ds.max_step}"
            )
        return L, T, D, check_scale(where, sm_scale, D, "sm_scale")

    def _gid(self, L):
        if not hasattr(L, "gid"):
            L.gid = torch.tensor(self.spec.cache.gid[L.layer], dtype=torch.int32, device=self.device)
        return L.gid

    # -------------------------------------------------------------- inspection

    def _layer(self, layer):
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(self._layers):
            raise CacheError(f"layer must be an int in 0..{len(self._layers) - 1}, got {layer!r}")
        return self._layers[layer]

    def seen(self, layer):
        """Tokens appended per row."""
        return list(self._layer(layer).n)

    def kept(self, layer, b, kv_head):
        """Sorted positions one KV head of one row holds (its pages, less what it masks)."""
        L = self._layer(layer)
        sink, lo = L.bounds(kv_head, L.n[b])
        out = []
        for page in L.tables[b][kv_head].values():
            p = L.pos[page * self.page : (page + 1) * self.page].tolist()
            out += [x for x in p if x != self.spec.cache.decode.sentinel and (x < sink or x >= lo)]
        return sorted(out)

    def pages_held(self, layer):
        """Pool pages held per [row][kv head]."""
        return [[len(t) for t in row] for row in self._layer(layer).tables]
