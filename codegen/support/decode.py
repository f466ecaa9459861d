"""Decoding over the packed KV cache: the host side of flash-decoding, and its torch reference.

The decode kernel of a generated module (`_dec_fwd_kernel` in decode.py.j2, which evaluates
the pattern) reads a layer's packed store (a `CacheView`). The keys of each (batch row, KV
head) are cut into splits of SPLIT keys; one program per split (a flat grid: a head of n keys
takes ceil(n / SPLIT) programs, so short heads cost no idle programs). Partial (max, sum,
acc) of the splits are merged by the last split of the head to finish (an atomic counter)
or by `_dec_reduce_kernel`. What varies per pattern reaches this code as a `DecodeSpec`.
"""

from __future__ import annotations

import math  # noqa: F401  (the generated module, where this file is inlined, uses it)
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from .checks import check_int, check_kernel_device, check_out, check_scale, check_tensor, interpreting
from .launch import FastLaunch, pow2_at_least, table, wait_previous

_DEC_LOG2E = 1.4426950408889634


class CacheView(NamedTuple):
    """What the decode kernel reads for one layer (from Cache.view)."""

    k: torch.Tensor  # (B, slots, D): every KV head's region, packed
    v: torch.Tensor  # (B, slots, D)
    pos: torch.Tensor  # (B, slots) int32 original positions; the sentinel marks an empty slot
    lens: torch.Tensor  # (B, H_KV) int32: slots to read per head, from its offset
    offsets: torch.Tensor  # (H_KV,) int32: first slot of each head
    gid: torch.Tensor  # (H,) int32: pattern group of each query head
    n: int  # tokens appended so far (padding included): at least T
    slots: tuple  # host copy: (offset, len) per KV head, an upper bound of every row's lens
    masked: bool  # the pattern must be evaluated even at T == 1
    npos: torch.Tensor  # (B, H_KV) int32: each row's tokens so far, on the device: the T
    # queries of row b are at positions npos[b] - T .. npos[b] - 1
    logits: "StepLogits | None" = None  # where a one-token decode leaves what the scores read


class StepLogits:
    """What a one-token decode writes for the KV heads whose cache policy scores every step
    (H2O, TOVA), and the cache's next append reads (docs/caches.md, "When eviction runs"):
    the logits of the query over every key it read, in the kernel's log2 domain
    (q . k * scale * log2 e, -inf where masked), and each query head's log2-sum-exp, so that
    attention = exp2(logit - lse). lg (B, G, R) float32: head h's slot j at lg[:, :, soff[h] + j];
    lse (B, H) float32 (+inf: the row saw no key); soff (H_KV,) int32, -1: not scored.
    `read` is the view.n of the last decode that wrote them (-1: none), on the host."""

    __slots__ = ("lg", "lse", "soff", "read")

    def __init__(self, batch: int, spec: "DecodeSpec", rows: int, soff: list, device):
        """Fresh buffers: `rows` logit slots per row and query head of a group, soff per KV
        head, no key read yet (lse +inf)."""
        self.lg = torch.zeros((batch, spec.group, rows), dtype=torch.float32, device=device)
        self.lse = torch.full((batch, spec.heads), float("inf"), dtype=torch.float32, device=device)
        self.soff, self.read = table(soff, torch.int32, device), -1


class DecodeConfig(NamedTuple):
    """Tile, split and reduction choices of the decode kernel (bench/decode.py sweeps them)."""

    block_n: int = 64
    num_warps: int = 4
    stages: int = 2
    programs_per_sm: int = 4  # split the keys until about this many programs per SM are busy
    min_split: int = 256
    fused_reduce: bool = True  # the last split of a head merges (one launch), else a 2nd kernel


class DecodeSpec(NamedTuple):
    """What a pattern's decode needs from its generated module."""

    heads: int  # query heads H
    kv_heads: int  # H_KV
    group: int  # H // H_KV query heads per KV head
    max_step: int  # most query tokens per call
    sentinel: int  # the position of an empty slot
    kernel: Callable  # the pattern's _dec_fwd_kernel (a triton.jit function)
    allowed_torch: Callable  # (qp, kp, gid) -> may the query see the key (torch tensors)


class DecodePlan(NamedTuple):
    """Launch geometry of one decode call (host arithmetic on the host copy of the lengths)."""

    split: int  # keys per split
    nsplit: int  # splits of the longest head
    work: int  # programs per batch row
    reduce: int  # 0: one split per head; 1: a second kernel merges; 2: the last split merges
    block_m: int  # rows of a tile: G * T, padded to a power of two (>= 16)


_DEC_DEFAULT = DecodeConfig()
_DEC_SMS: dict = {}
_DEC_PLANS: dict = {}
_DEC_CALLS: dict = {}
_DEC_BUFS: dict = {}


@triton.jit
def _dec_work(LENS, b, r, SPLIT, H_KV: tl.constexpr):
    """Program r of batch row b -> (kv head, split, splits of that head, live): heads take
    max(1, ceil(len / SPLIT)) consecutive programs, in head order; programs past the row's
    last (the grid is sized for the host's upper bound of the lengths) are not live."""
    first = 0
    h = 0
    sid = 0
    nsh = 1
    for hh in tl.static_range(H_KV):
        ns = tl.maximum((tl.load(LENS + b * H_KV + hh) + SPLIT - 1) // SPLIT, 1)
        hit = (r >= first) & (r < first + ns)
        h = tl.where(hit, hh, h)
        sid = tl.where(hit, r - first, sid)
        nsh = tl.where(hit, ns, nsh)
        first += ns
    return h, sid, nsh, r < first


@triton.jit
def _kv_rule(TAB, CNT, h, end, CW: tl.constexpr):
    """KV head h's slot rule (TAB row h: kind, offset, sink S, ring R, stripe period L,
    stripes per period NR, chunk C; CNT row h: stripes before each residue) and, for an
    append ending at `end`, the stripes before S and before end and the ring's tokens so far."""
    row = TAB + h * 8
    kind = tl.load(row)
    off = tl.load(row + 1).to(tl.int64)
    S = tl.load(row + 2)
    R = tl.load(row + 3)
    L = tl.load(row + 4)
    NR = tl.load(row + 5)
    C = tl.load(row + 6)
    cnt = CNT + h * CW
    sb_s = (S // L) * NR + tl.load(cnt + S % L)
    sb_e = (end // L) * NR + tl.load(cnt + end % L)
    return kind, off, S, R, L, NR, C, cnt, sb_s, sb_e, (end - S) - (sb_e - sb_s)


@triton.jit
def _kv_place(TAB, CNT, h, n, end, base, p, CW: tl.constexpr):
    """(slot, keep) of the tokens at positions p (a block) of an append of positions
    n .. end - 1 to KV head h, whose length was `base`: the slot from the start of the layer's
    store (the head's offset added), and whether the token is stored (a ring's tokens dead
    before the append returns, an earlier chunk's and a padded row's negative positions are
    not). TAB row h: (kind, offset, sink S, ring R, stripe period L, stripes per period NR,
    chunk C); CNT row h: stripes before each residue. The cache's append kernel and the
    decode kernel's fused append both place tokens so (the plain-Python twin: _KvHead.place)."""
    kind, off, S, R, L, NR, C, cnt, sb_s, sb_e, ring_total = _kv_rule(TAB, CNT, h, end, CW)
    live = p >= 0
    pm = tl.where(live, p % L, 0)
    c0 = tl.load(cnt + pm, mask=live, other=0)
    c1 = tl.load(cnt + pm + 1, mask=live, other=0)
    stripe = (c1 - c0) > 0
    sb_p = (p // L) * NR + c0
    ridx = (p - S) - (sb_p - sb_s)
    ring_slot = S + ridx % tl.maximum(R, 1)
    in_ring = tl.where(p < S, p, tl.where(stripe, S + R + (sb_p - sb_s), ring_slot))
    keep_ring = (p < S) | stripe | (ridx >= ring_total - R)
    slot = tl.where(kind == 0, p, tl.where(kind == 1, in_ring, tl.where(kind == 2, p % C, base + (p - n))))
    keep = tl.where(kind == 1, keep_ring, tl.where(kind == 2, p >= ((end - 1) // C) * C, True)) & live
    return off + slot.to(tl.int64), keep


@triton.jit
def _kv_length(TAB, CNT, h, n, end, base, write, CW: tl.constexpr):
    """KV head h's slots to read after an append of positions n .. end - 1 (its length was
    `base`; `write`: a lossy head's tokens are stored at base ..)."""
    kind, _, S, R, L, NR, C, _, sb_s, sb_e, ring_total = _kv_rule(TAB, CNT, h, end, CW)
    ring_len = tl.where(L > 1, S + R + (sb_e - sb_s), S + tl.minimum(ring_total, R))
    ring_len = tl.where(end <= S, end, ring_len)
    lossy = tl.where(write, base + (end - n), base)
    chunk_len = end - ((end - 1) // C) * C
    return tl.where(kind == 0, end, tl.where(kind == 1, ring_len, tl.where(kind == 2, chunk_len, lossy)))


@triton.jit
def _dec_append(KN, VN, K, V, POS, TAB, KCNT, b, h, n, T, length, lo, hi, SLOTS, H_KV: tl.constexpr,
                CW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    """The fused append of a decode program: store those of the T new tokens of KV head h of
    row b whose slots lie in [lo, hi) (the program's keys), then wait for the program's
    threads so that its reads see them."""
    t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    slot, keep = _kv_place(TAB, KCNT, h, n, n + T, length, n + t, CW)
    keep = keep & (t < T) & (slot >= lo) & (slot < hi)
    src = ((b * H_KV + h) * T + t)[:, None] * HEAD_DIM + offs_d[None, :]
    kn = tl.load(KN + src, mask=keep[:, None], other=0.0)
    vn = tl.load(VN + src, mask=keep[:, None], other=0.0)
    dst = (b * SLOTS + slot)[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(K + dst, kn, mask=keep[:, None])
    tl.store(V + dst, vn, mask=keep[:, None])
    tl.store(POS + b * SLOTS + slot, n + t, mask=keep)
    tl.debug_barrier()


@triton.jit
def _dec_arrive(ARRIVE, LENS, NPOS, TAB, KCNT, b, W, T, H_KV: tl.constexpr, CW: tl.constexpr):
    """Count this program in among the W of row b once it has read LENS and NPOS; the last to
    arrive writes every head's new length and NPOS (the other programs read the old ones,
    which decided their keys) and resets the counter."""
    done = tl.atomic_add(ARRIVE + b, 1, sem="acq_rel")
    if done == W - 1:
        for hh in tl.static_range(H_KV):
            n = tl.load(NPOS + b * H_KV + hh)
            length = tl.load(LENS + b * H_KV + hh)
            tl.store(LENS + b * H_KV + hh, _kv_length(TAB, KCNT, hh, n, n + T, length, True, CW))
            tl.store(NPOS + b * H_KV + hh, n + T)
        tl.store(ARRIVE + b, 0)


@triton.jit
def _dec_merge(PM, PL, PACC, first, nsplit, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS):
    """Merge the partial (max, sum, acc) of splits 0 .. nsplit - 1 starting at row block
    `first`; returns the normalised output rows (zeros where no key was allowed)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < ROWS
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for s in range(0, nsplit):
        idx = (first + s) * BLOCK_M + offs_m
        ms = tl.load(PM + idx, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        ls = tl.load(PL + idx, mask=row_ok, other=0.0, cache_modifier=".cg")
        a = tl.load(
            PACC + idx[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg"
        )
        m_new = tl.maximum(m, ms)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        c_old = tl.math.exp2(m - m_use)
        c_new = tl.math.exp2(ms - m_use)
        l = l * c_old + ls * c_new
        acc = acc * c_old[:, None] + a * c_new[:, None]
        m = m_new
    return acc / tl.where(l > 0, l, 1.0)[:, None]


@triton.jit
def _dec_store_lse(LSE, m, l, mask):
    """A query row's log2-sum-exp (StepLogits.lse) from its (max, sum): +inf where the row saw
    no key, so that exp2(logit - lse) is 0 there."""
    tl.store(LSE, tl.where(l > 0, m + tl.math.log2(tl.where(l > 0, l, 1.0)), float("inf")), mask=mask)


@triton.jit
def _dec_merge_lse(PM, PL, first, nsplit, BLOCK_M: tl.constexpr, ROWS):
    """The merged (max, sum) of splits 0 .. nsplit - 1 starting at row block `first`."""
    offs_m = tl.arange(0, BLOCK_M)
    row_ok = offs_m < ROWS
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    for s in range(0, nsplit):
        idx = (first + s) * BLOCK_M + offs_m
        ms = tl.load(PM + idx, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        ls = tl.load(PL + idx, mask=row_ok, other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, ms)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.math.exp2(m - m_use) + ls * tl.math.exp2(ms - m_use)
        m = m_new
    return m, l


@triton.jit(do_not_specialize=["SPLIT", "NSPLIT"])
def _dec_reduce_kernel(
    PM,
    PL,
    PACC,
    LENS,
    O,
    T,
    SPLIT,
    NSPLIT,
    H_KV: tl.constexpr,
    G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PDL: tl.constexpr = False,
):
    wait_previous(PDL)
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    length = tl.load(LENS + b * H_KV + h)
    nsplit = tl.maximum((length + SPLIT - 1) // SPLIT, 1)
    o = _dec_merge(PM, PL, PACC, (b * H_KV + h) * NSPLIT, nsplit, BLOCK_M, HEAD_DIM, G * T)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qh = h * G + offs_m // T
    o_ptr = O + b * (G * H_KV * T * HEAD_DIM) + qh[:, None] * (T * HEAD_DIM) + (offs_m % T)[:, None] * HEAD_DIM
    tl.store(o_ptr + offs_d[None, :], o.to(O.dtype.element_ty), mask=(offs_m < G * T)[:, None])


def _dec_sms(device) -> int:
    key = (device.type, device.index)
    if key not in _DEC_SMS:
        if device.type != "cuda":
            _DEC_SMS[key] = 2
        else:
            idx = device.index if device.index is not None else torch.cuda.current_device()
            _DEC_SMS[key] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _DEC_SMS[key]


def _dec_geometry(spec: DecodeSpec, slots, batch, T, config, sms, split=None) -> DecodePlan:
    """The launch geometry, memoised (no device sync). An explicit `split` (tests,
    benchmarks) replaces the smallest power-of-two multiple of block_n (at least min_split)
    that keeps the programs near programs_per_sm per SM."""
    key = (slots, batch, T, config, sms, split, spec.group)
    plan = _DEC_PLANS.get(key)
    if plan is None:
        lens = [n for _, n in slots]
        if split is None:
            split = max(config.block_n, config.min_split)
            target = config.programs_per_sm * sms
            while split < max(lens, default=0) and batch * sum(max(1, -(-n // split)) for n in lens) > target:
                split *= 2
        per_head = [max(1, -(-n // split)) for n in lens]
        nsplit = max(per_head)
        reduce = 0 if nsplit == 1 else (2 if config.fused_reduce else 1)
        plan = DecodePlan(split, nsplit, sum(per_head), reduce, max(16, pow2_at_least(spec.group * T)))
        if len(_DEC_PLANS) > 4096:
            _DEC_PLANS.clear()
        _DEC_PLANS[key] = plan
    return plan


def _dec_buffers(spec: DecodeSpec, device, batch, nsplit, block_m, d):
    """Partial (max, sum, acc) and the per-head arrival counters, reused between calls."""
    key = (device, batch, block_m, d, spec.kv_heads)
    buf = _DEC_BUFS.get(key)
    if buf is None or buf[0].shape[2] < nsplit:
        n = max(nsplit, 2 * buf[0].shape[2] if buf is not None else nsplit)
        pm = torch.empty((batch, spec.kv_heads, n, block_m), device=device, dtype=torch.float32)
        buf = (
            pm,
            torch.empty_like(pm),
            torch.empty((batch, spec.kv_heads, n, block_m, d), device=device, dtype=torch.float32),
            torch.zeros((batch, spec.kv_heads), dtype=torch.int32, device=device),
        )
        _DEC_BUFS[key] = buf
    return buf


def check_view(where: str, view) -> CacheView:
    """A CacheView (from Cache.view), as decode reads it."""
    if not isinstance(view, CacheView):
        raise TypeError(f"{where}: view must be the CacheView of Cache.view(layer); got {type(view).__name__}")
    return view


def check_decode_query(where: str, spec: DecodeSpec, q, view: CacheView) -> tuple:
    """(B, H, T, D) of the queries of a decode call, checked against the pattern and the view."""
    k = view.k
    q = check_tensor(where, "q", q, dims="B, H, T, D", shape=(k.shape[0], None, None, k.shape[2]))
    B, H, T, D = q.shape
    if H != spec.heads:
        raise ValueError(f"{where}: q has {H} heads but the pattern was compiled for {spec.heads}: q (B, H, T, D)")
    if not 1 <= T <= spec.max_step:
        raise ValueError(
            f"{where}: {T} query tokens but this cache was generated for at most max_step = "
            f"{spec.max_step} per step; regenerate with a larger max_step or decode fewer tokens"
        )
    if T > view.n:
        raise ValueError(f"{where}: {T} queries but the cache holds only {view.n} tokens: append k, v first")
    check_tensor(where, "q", q, dims="B, H, T, D", dtype=k.dtype, device=k.device)
    return B, H, T, D


def _dec_ok(spec: DecodeSpec, q, view, out) -> bool:
    """The common case, in one expression (the detailed checks run only when it fails)."""
    if type(view) is not CacheView:
        return False
    k = view.k
    return (
        type(q) is torch.Tensor
        and q.dim() == 4
        and q.shape[1] == spec.heads
        and 1 <= q.shape[2] <= spec.max_step
        and q.shape[2] <= view.n
        and q.shape[0] == k.shape[0]
        and q.shape[3] == k.shape[2]
        and q.dtype == k.dtype
        and q.device == k.device
        and (
            out is None
            or (
                type(out) is torch.Tensor
                and out.shape == q.shape
                and out.dtype == q.dtype
                and out.device == q.device
                and out.is_contiguous()
            )
        )
    )


def decode_launch(spec: DecodeSpec, q, view, *, sm_scale=None, out=None, config=_DEC_DEFAULT, split=None, new=None):
    """decode() of a generated module: check every argument, then launch its kernel.

    Everything a call derives from the view's slots, the shapes, the dtype, the device and
    the options (geometry, partial buffers, launch constants) is memoised: a decode step of
    a model repeats the same call, whose host time is then the checks and the launch.
    `new` (Cache.decode with k and v, checked there): (k, v, slot rules, stripe counts) of T
    tokens the kernel appends before it attends; the view is the cache before them (its n
    counts them)."""
    plan, q = decode_prepare(spec, q, view, sm_scale, out, config, split, new)
    return decode_run(plan, q, view, out, new)


def decode_prepare(spec: DecodeSpec, q, view, sm_scale, out, config, split, new) -> tuple:
    """(memoised plan, q made contiguous) of a decode call, every argument checked."""
    if not _dec_ok(spec, q, view, out):
        check_view("decode", view)
        check_decode_query("decode", spec, q, view)
        check_out("decode", out, dims="B, H, T, D", shape=tuple(q.shape), dtype=q.dtype, device=q.device)
    if config is not _DEC_DEFAULT and not isinstance(config, DecodeConfig):
        raise TypeError(f"decode: config must be a DecodeConfig; got {type(config).__name__}")
    if split is not None:
        check_int("decode", "split", split, 1)
    if q.device.type != "cuda":
        check_kernel_device("decode", q.device, "decode_reference() runs anywhere.")
    if not q.is_contiguous():
        q = q.contiguous()
    sc, (lg, lse, soff, kn, vn, tab, kcnt) = _dec_extras(q, view, new)
    # the compiled kernel assumes the alignment it saw first
    aligned = _aligned(q, out, *view[:6], view.npos, lg, lse, soff, kn, vn)
    key = (spec.kernel, view.slots, q.shape, q.dtype, q.device, view.k.shape[1], view.masked, config, split, sm_scale,
           aligned, sc is not None and lg.shape[2], new and kcnt.shape[1])  # fmt: skip
    plan = _DEC_CALLS.get(key)
    if plan is None:
        plan = _dec_plan(spec, q, view, sm_scale, config, split, sc.lg.shape[2] if sc is not None else 0, new)
        if len(_DEC_CALLS) > 4096:  # caches that grow without max_len change their slots every step
            _DEC_CALLS.clear()
        _DEC_CALLS[key] = plan
    return plan, q


def decode_run(plan: tuple, q, view, out, new):
    """Launch a decode plan (from decode_prepare, for these arguments)."""
    launch, scalars, _, bufs, reduce, _ = plan
    if out is None:
        out = torch.empty_like(q)
    sc, args = _dec_args(plan, q, view, out, new)
    launch(*args)
    if sc is not None:
        sc.read = view.n
    if reduce is not None:
        pm, pl, pacc, _ = bufs
        reduce(pm, pl, pacc, view.lens, out, *scalars[:3])
    return out


_DEC_FREE = (0, 7, 16, 17)  # what changes between a cache's fused steps: q, out and the new k, v


def decode_bound(plan: tuple, q, view, new):
    """run(q, out, k, v) -> bool: a fused step (`new`: the step's k, v and the layer's tables)
    of this plan over this view, with everything but q, out and the step's k, v taken now
    (FastLaunch.bound): for a cache's memo of steps whose view stays the same tensors (a
    repack invalidates it). None where the plan launches more than the one kernel or writes
    step logits, or its launch is not bound to a raw launch."""
    sc, args = _dec_args(plan, q, view, q, new)
    if plan[4] is not None or sc is not None or new is None:
        return None
    return plan[0].bound(args, _DEC_FREE)


def _dec_args(plan: tuple, q, view, out, new) -> tuple:
    """(StepLogits or None, the decode kernel's positional arguments) of a plan's launch."""
    _, scalars, _, bufs, _, arrive = plan
    pm, pl, pacc, cnt = bufs or (None, None, None, None)
    sc, extras = _dec_extras(q, view, new)
    args = (q, view.k, view.v, view.pos, view.lens, view.offsets, view.gid, out, pm, pl, pacc, cnt, view.npos,
            *extras, arrive, *scalars)  # fmt: skip
    return sc, args


def _dec_extras(q, view, new) -> tuple:
    """(StepLogits or None, the kernel's (LG, LSE, SOFF, KN, VN, TAB, KCNT) arguments): the
    view's step logits where a one-token step writes them, the tokens to append (`new`);
    None where a feature is off: the kernel never reads them, and a None is a constant to
    Triton, not a pointer its launcher must resolve with the driver (host time per step)."""
    sc = view.logits if q.shape[2] == 1 else None  # scores read one-token steps only
    lg, lse, soff = (sc.lg, sc.lse, sc.soff) if sc is not None else (None, None, None)
    return sc, (lg, lse, soff, *(new or (None, None, None, None)))


def _aligned(*tensors) -> bool:
    """Every tensor (None: skipped) starts on 16 bytes, as Triton specialises pointers."""
    acc = 0
    for t in tensors:
        if t is not None:
            acc |= t.data_ptr()
    return acc & 15 == 0


def reduce_kw(spec: DecodeSpec, kw: dict) -> dict:
    """The constants of _dec_reduce_kernel, from the decode kernel's."""
    return dict(H_KV=kw["H_KV"], G=kw["G"], HEAD_DIM=kw["HEAD_DIM"], BLOCK_M=kw["BLOCK_M"], num_warps=4)


def _dec_plan(spec: DecodeSpec, q, view, sm_scale, config, split, scores=0, new=None) -> tuple:
    """(launch, scalars, constants, partial buffers or None, reduce launch or None, arrival
    counters) of a decode call; `scores` (the StepLogits' slots, 0: none): the kernel also
    writes them (and merges in the last split); `new`: the tokens it appends first."""
    B, H, T, D = q.shape
    scale = check_scale("decode", sm_scale, D, "sm_scale")
    geo = _dec_geometry(spec, view.slots, B, T, config, _dec_sms(q.device), split)
    bufs = _dec_buffers(spec, q.device, B, geo.nsplit, geo.block_m, D) if geo.reduce else None
    nbuf = bufs[0].shape[2] if bufs else 1
    reduce_mode = 2 if scores and geo.reduce else geo.reduce  # the log-sum-exp is merged in the kernel
    kw = dict(
        H_KV=spec.kv_heads,
        G=spec.group,
        HEAD_DIM=D,
        BLOCK_M=geo.block_m,
        BLOCK_N=config.block_n,
        STAGES=config.stages,
        MASKED=view.masked or T > 1,
        REDUCE=reduce_mode,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=q.dtype == torch.bfloat16 and interpreting(),
        SCORES=bool(scores),
        LGS=max(scores, 1),
        APPEND=new is not None,
        CW=new[3].shape[1] if new else 1,
        num_warps=config.num_warps,
    )
    if new is not None and reduce_mode == 1:  # _dec_reduce_kernel would read the lengths after the append
        raise ValueError("decode: appending k, v in the decode kernel needs DecodeConfig(fused_reduce=True)")
    scalars = (T, geo.split, nbuf, geo.work, view.k.shape[1], scale * _DEC_LOG2E)
    reduce = FastLaunch(_dec_reduce_kernel, (spec.kv_heads, B), reduce_kw(spec, kw)) if reduce_mode == 1 else None
    arrive = torch.zeros((B,), dtype=torch.int32, device=q.device) if new is not None else None
    return FastLaunch(spec.kernel, (B * geo.work,), kw), scalars, kw, bufs, reduce, arrive


def decode_split_of(spec: DecodeSpec, view, batch: int, config: DecodeConfig = _DEC_DEFAULT) -> int:
    """Keys per split that decode chooses for this view and batch."""
    check_view("decode_split", view)
    return _dec_geometry(spec, view.slots, batch, 1, config, _dec_sms(view.k.device)).split


def decode_torch(spec: DecodeSpec, q, view, *, sm_scale=None) -> torch.Tensor:
    """The torch reference of decode: a masked softmax per KV head over its stored keys,
    always evaluating the pattern (float64 for float64 inputs, float32 otherwise)."""
    check_view("decode_reference", view)
    B, H, T, D = check_decode_query("decode_reference", spec, q, view)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = check_scale("decode_reference", sm_scale, D, "sm_scale")
    out = torch.zeros((B, H, T, D), dtype=ct, device=q.device)
    qp = (view.npos[:, :1].to(torch.int64) - T + torch.arange(T, device=q.device))[:, :, None]  # (B, T, 1)
    gid = view.gid.to(torch.int64)
    for h, (off, n) in enumerate(view.slots):
        if n == 0:
            continue
        k = view.k[:, off : off + n].to(ct)
        v = view.v[:, off : off + n].to(ct)
        kp = view.pos[:, off : off + n].to(torch.int64)[:, None, :]
        read = torch.arange(n, device=q.device) < view.lens[:, h, None, None]  # the slots the kernel reads
        for g in range(spec.group):
            hq = h * spec.group + g
            s = torch.einsum("btd,bnd->btn", q[:, hq].to(ct), k) * scale
            ok = spec.allowed_torch(qp, kp, gid[hq]) & (kp != spec.sentinel) & read
            s = s.masked_fill(~ok, float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num(0.0)
            out[:, hq] = torch.einsum("btn,bnd->btd", p, v)
    return out.to(q.dtype)
