"""Prototype of attnc's prefill forward kernel (the future Jinja template).

One hand-written, pattern-generic FlashAttention-2 style forward kernel.  Everything
that depends on the sparsity pattern lives in two places that the code generator
rewrites:

* ``_mask(offs_m, offs_n, N, ...)``: the pattern as a boolean BLOCK_M x BLOCK_N tile
  (keys >= N are always masked).  Only *masked* segments ever call it.
* the "segments" block in ``_fwd_kernel``: scalar integer arithmetic on the query-block
  index that yields a short list of key-block ranges ``[lo, hi)`` with a constexpr
  ``MASKED`` flag.  No index tables, no key block visited twice.

The pattern implemented here is the family

    causal & (sink(S) | band(L, W))      i.e. pairs (q, k) with
    (k < S and k <= q)  or  (L <= q - k < W)

``window(W)`` is band(0, W); plain ``causal`` is S = 0, L = 0, W = infinity
(HAS_WINDOW = False).  L > 0 only exists so that the tests can produce query rows with
no allowed key (their output is exactly 0 and their LSE is -inf).  The pattern's integer
parameters are passed as run-time scalars (P_SINK, P_WIN, P_WLO) so that several window
sizes share one compiled kernel; the template may render them as literals instead.

Layout: q, o are (B, H, N, D); k, v are (B, H_KV, N, D) with H % H_KV == 0 (GQA: kv head
= h // (H // H_KV)); last dimension contiguous; other strides are explicit.  Optional
LSE output (B, H, N) float32, natural log.

Segments per query block (rows [q0, q_last]), key blocks of BLOCK_N:
    sink     [0, n_sink)  tiles of BLOCK_N_SINK (16), masked, only keys below the band
    lower    [a, b)       masked   (band's lower edge: q - k < W cuts through)
    interior [b, c)       no mask  (every pair allowed, every key < N)
    upper    [c, d)       masked   (causal diagonal / band upper edge, keys >= N)
plain causal has only interior [0, c) and upper [c, d).

Knobs (Config).  Template defaults (default_config, measured best on an H100, see
NOTES.md): USE_TMA=2 (host 4D descriptors), BLOCK 128x64, 8 warps, 2 stages,
maxnreg=128 (two CTAs per SM), MASK_IMPL=1, GRID_ORDER 3/2 for causal, EDGE_MERGE for
windows >= 2048.  Kept only to reproduce the measurements, candidates to drop from the
template: USE_TMA 0/1, MASK_IMPL=0, LAZY (slower), SINK_PREFETCH (no gain), WARP_SPEC
(Triton 3.6's Hopper auto-WS pass crashes on a kernel with more than one loop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# --------------------------------------------------------------------------- pattern
@triton.jit
def _mask(offs_m, offs_n, N, P_SINK, P_WIN, P_WLO,
          HAS_SINK: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK_IMPL: tl.constexpr = 1):
    """Boolean (BLOCK_M, BLOCK_N) tile: may query offs_m[i] attend key offs_n[j]?"""
    k = offs_n[None, :]
    if MASK_IMPL == 0:
        # literal form: one subtraction and a compare per primitive per element
        q = offs_m[:, None]
        d = q - k
        allowed = d >= P_WLO                      # causal (band lower edge, 0 for causal)
        if HAS_WINDOW:
            allowed = allowed & (d < P_WIN)       # window(W): q - k < W
        if HAS_SINK:
            allowed = allowed | ((k < P_SINK) & (d >= 0))   # causal & sink(S)
        allowed = allowed & (k < N)
    else:
        # per-row key intervals (BLOCK_M scalars), one compare per bound per element:
        # band keys [q - W + 1, min(q - L, N - 1)], sink keys [0, min(S, q + 1, N))
        hi = tl.minimum(offs_m - P_WLO, N - 1)
        allowed = k <= hi[:, None]
        if HAS_WINDOW:
            allowed = allowed & (k > (offs_m - P_WIN)[:, None])
        if HAS_SINK:
            allowed = allowed | (k < tl.minimum(tl.minimum(offs_m + 1, P_SINK), N)[:, None])
    return allowed


@triton.jit
def _masked_update(acc, m_i, l_i, qk, v, allowed, qk_scale, DOT_PREC: tl.constexpr):
    """One masked online-softmax step on a score tile qk (unscaled) and its V tile."""
    s = tl.where(allowed, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    acc = acc * alpha[:, None]
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc, m_new, l_i


# --------------------------------------------------------------------------- inner loop
@triton.jit
def _attend(acc, m_i, l_i, q,
            K_src, V_src, stride_kn, stride_vn, kv_b, kv_h,
            lo_block, hi_block, gap_at, gap_len, offs_m, qk_scale, N,
            P_SINK, P_WIN, P_WLO,
            HAS_SINK: tl.constexpr, HAS_WINDOW: tl.constexpr,
            MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
            USE_TMA: tl.constexpr, STAGES: tl.constexpr, WARP_SPEC: tl.constexpr,
            LAZY: tl.constexpr, DOT_PREC: tl.constexpr, MASK_IMPL: tl.constexpr):
    """Online softmax over key blocks [lo_block, hi_block) of size BLOCK_N.

    Blocks at or after gap_at are shifted by gap_len (scalar arithmetic), so one loop can
    cover two disjoint ranges [lo, gap_at) and [gap_at + gap_len, hi + gap_len); pass
    gap_len = 0 for a plain range.  USE_TMA: 0 pointers (K_src/V_src point at this
    (b, kv head)), 1 device-side 2D descriptors of this (b, kv head), 2 host-side 4D
    descriptors over (B, H_KV, N, D) addressed with (kv_b, kv_h).

    Scores live in the log2 domain: s = (q . k) * sm_scale * log2(e), p = exp2(s - m).
    MASKED applies _mask (the only place masking happens); unmasked blocks are
    guaranteed by the caller to be fully allowed and fully inside [0, N).
    LAZY: skip the rescale of acc / l unless some row's max grew by more than 2^8
    (p then stays <= 256, safe in fp32 and in the 16-bit p fed to the second dot).
    """
    offs_d = tl.arange(0, HEAD_DIM)
    for i in tl.range(lo_block, hi_block, num_stages=STAGES, warp_specialize=WARP_SPEC):
        j = i + tl.where(i >= gap_at, gap_len, 0)
        start_n = tl.multiple_of(j * BLOCK_N, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        # ---- K tile (BLOCK_N, HEAD_DIM)
        if USE_TMA == 2:
            k = K_src.load([kv_b, kv_h, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
        elif USE_TMA == 1:
            k = K_src.load([start_n, 0])
        else:
            k_ptrs = K_src + offs_n[:, None] * stride_kn + offs_d[None, :]
            if MASKED:
                k = tl.load(k_ptrs, mask=offs_n[:, None] < N, other=0.0)
            else:
                k = tl.load(k_ptrs)
        qk = tl.dot(q, k.T, input_precision=DOT_PREC)
        # ---- online softmax
        if MASKED:
            allowed = _mask(offs_m, offs_n, N, P_SINK, P_WIN, P_WLO, HAS_SINK, HAS_WINDOW, MASK_IMPL)
            s = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            # rows with no allowed key so far keep m = -inf; subtract 0 instead (p = 0)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s * qk_scale - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            if LAZY:
                # rescale only when the max moved by > 8 (log2 units) in some row
                if tl.max(m_new - m_i, 0) > 8.0:
                    alpha = tl.math.exp2(m_i - m_new)
                    acc = acc * alpha[:, None]
                    l_i = l_i * alpha
                    m_i = m_new
                p = tl.math.exp2(qk * qk_scale - m_i[:, None])
                l_i = l_i + tl.sum(p, 1)
            else:
                p = tl.math.exp2(qk * qk_scale - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
                acc = acc * alpha[:, None]
                l_i = l_i * alpha + tl.sum(p, 1)
                m_i = m_new
        # ---- V tile (BLOCK_N, HEAD_DIM)
        if USE_TMA == 2:
            v = V_src.load([kv_b, kv_h, start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
        elif USE_TMA == 1:
            v = V_src.load([start_n, 0])
        else:
            v_ptrs = V_src + offs_n[:, None] * stride_vn + offs_d[None, :]
            if MASKED:
                v = tl.load(v_ptrs, mask=offs_n[:, None] < N, other=0.0)
            else:
                v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc, m_i, l_i


@triton.jit
def _cdiv(a, b):
    return (a + b - 1) // b


# --------------------------------------------------------------------------- kernel
@triton.jit(do_not_specialize=["H", "P_SINK", "P_WIN", "P_WLO"])
def _fwd_kernel(Q, K, V, O, LSE, K_ptr, V_ptr, Q_ptr,
                stride_qb, stride_qh, stride_qn,
                stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn,
                stride_ob, stride_oh, stride_on,
                stride_lb, stride_lh,
                N, H, qk_scale,
                P_SINK, P_WIN, P_WLO,
                GROUP: tl.constexpr,            # H // H_KV
                HEAD_DIM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_SINK: tl.constexpr,
                HAS_SINK: tl.constexpr, HAS_WINDOW: tl.constexpr,
                HAS_LSE: tl.constexpr, USE_TMA: tl.constexpr, EDGE_MERGE: tl.constexpr,
                GRID_ORDER: tl.constexpr,      # 0 natural, 1-3 longest query block first
                HEAD_GROUP: tl.constexpr,      # GRID_ORDER 3: heads per group (divides B*H)
                STAGES: tl.constexpr, EDGE_STAGES: tl.constexpr,
                WARP_SPEC: tl.constexpr, LAZY: tl.constexpr, DOT_PREC: tl.constexpr,
                MASK_IMPL: tl.constexpr, SINK_PREFETCH: tl.constexpr):
    # ---- which (query block, batch*head) this program owns
    num_m = tl.num_programs(0)
    if GRID_ORDER == 1:
        # heads fastest, query blocks from the last (longest for causal) to the first
        lin = tl.program_id(1) * num_m + tl.program_id(0)
        BH = tl.num_programs(1)
        pid_m = num_m - 1 - lin // BH
        pid_bh = lin % BH
    elif GRID_ORDER == 3:
        # groups of HEAD_GROUP heads (their K/V fit in L2 together); inside a group heads
        # fastest and query blocks longest first (LPT-like tail with L2 locality)
        lin = tl.program_id(1) * num_m + tl.program_id(0)
        per_group = num_m * HEAD_GROUP
        grp = lin // per_group
        r = lin % per_group
        pid_m = num_m - 1 - r // HEAD_GROUP
        pid_bh = grp * HEAD_GROUP + r % HEAD_GROUP
    elif GRID_ORDER == 2:
        # query blocks fastest (keeps one head's K/V hot in L2), longest first
        pid_m = num_m - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
    else:
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    h_kv = h // GROUP

    # K_ptr / V_ptr / Q_ptr are raw pointers (the sink loop and the pointer paths use them);
    # Q, K, V, O are host-side 4D tensor descriptors when USE_TMA == 2, else pointers too
    q_base = Q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K_ptr + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V_ptr + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh

    q0 = pid_m * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)

    if USE_TMA == 2:
        k_src = K
        v_src = V
        q = Q.load([b, h, q0, 0]).reshape([BLOCK_M, HEAD_DIM])
    elif USE_TMA == 1:
        q_desc = tl.make_tensor_descriptor(q_base, shape=[N, HEAD_DIM], strides=[stride_qn, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        k_src = tl.make_tensor_descriptor(k_base, shape=[N, HEAD_DIM], strides=[stride_kn, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(v_base, shape=[N, HEAD_DIM], strides=[stride_vn, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        q = q_desc.load([q0, 0])
    else:
        k_src = k_base
        v_src = v_base
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :],
                    mask=offs_m[:, None] < N, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # ---- segments: scalar arithmetic on the query block (the code generator's part)
    # rows [q0, q_last]; band keys for row q: [q - (W - 1), q - L]; sinks [0, S) & k <= q
    q_last = tl.minimum(q0 + BLOCK_M, N) - 1
    # window / causal key blocks [a, d) of size BLOCK_N; full ones are [b, c)
    d_blk = tl.maximum(q_last - P_WLO + BLOCK_N, 0) // BLOCK_N
    c_blk = tl.maximum(q0 - P_WLO + 1, 0) // BLOCK_N
    if HAS_WINDOW:
        a_blk = tl.maximum(q0 - P_WIN + 1, 0) // BLOCK_N
        b_blk = _cdiv(tl.maximum(q_last - P_WIN + 1, 0), BLOCK_N)
    else:
        a_blk = q0 * 0
        b_blk = q0 * 0
    a_blk = tl.minimum(a_blk, d_blk)
    b_blk = tl.minimum(tl.maximum(b_blk, a_blk), d_blk)
    c_blk = tl.minimum(tl.maximum(c_blk, b_blk), d_blk)

    if HAS_SINK:
        # sink keys not already covered by the window blocks, tiles of BLOCK_N_SINK
        sink_hi = tl.minimum(P_SINK, q_last + 1)
        sink_hi = tl.where(a_blk < d_blk, tl.minimum(sink_hi, a_blk * BLOCK_N), sink_hi)
    if SINK_PREFETCH:
        # sink <= BLOCK_N_SINK (checked by the host): one tile, loaded now into registers so
        # its latency hides behind the band loops, folded in after them (no loop of its own)
        offs_s = tl.arange(0, BLOCK_N_SINK)
        sk = tl.load(k_base + offs_s[:, None] * stride_kn + offs_d[None, :], mask=offs_s[:, None] < N, other=0.0)
        sv = tl.load(v_base + offs_s[:, None] * stride_vn + offs_d[None, :], mask=offs_s[:, None] < N, other=0.0)
    elif HAS_SINK:
        n_sink = _cdiv(tl.maximum(sink_hi, 0), BLOCK_N_SINK)
        n_sink_full = tl.minimum(tl.minimum(P_SINK, q0 + 1) // BLOCK_N_SINK, n_sink)
        if P_SINK >= BLOCK_N_SINK:   # run-time scalar test; full sink tiles exist
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, b, h_kv,
                                    0, n_sink_full, 0, 0, offs_m, qk_scale, N, P_SINK, P_WIN, P_WLO,
                                    HAS_SINK, HAS_WINDOW, False, BLOCK_N_SINK, HEAD_DIM,
                                    0, EDGE_STAGES, False, False, DOT_PREC, MASK_IMPL)
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, b, h_kv,
                                n_sink_full, n_sink, 0, 0, offs_m, qk_scale, N, P_SINK, P_WIN, P_WLO,
                                HAS_SINK, HAS_WINDOW, True, BLOCK_N_SINK, HEAD_DIM,
                                0, EDGE_STAGES, False, False, DOT_PREC, MASK_IMPL)
    if EDGE_MERGE:
        # both band edges in one masked loop: blocks [a, b) then [c, d)
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_vn, b, h_kv,
                                a_blk, b_blk + (d_blk - c_blk), b_blk, c_blk - b_blk,
                                offs_m, qk_scale, N, P_SINK, P_WIN, P_WLO,
                                HAS_SINK, HAS_WINDOW, True, BLOCK_N, HEAD_DIM,
                                USE_TMA, EDGE_STAGES, False, False, DOT_PREC, MASK_IMPL)
    elif HAS_WINDOW:
        # lower band edge (partial tiles)
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_vn, b, h_kv,
                                a_blk, b_blk, 0, 0, offs_m, qk_scale, N, P_SINK, P_WIN, P_WLO,
                                HAS_SINK, HAS_WINDOW, True, BLOCK_N, HEAD_DIM,
                                USE_TMA, EDGE_STAGES, False, False, DOT_PREC, MASK_IMPL)
    # interior: every pair allowed, no mask at all
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_vn, b, h_kv,
                            b_blk, c_blk, 0, 0, offs_m, qk_scale, N, P_SINK, P_WIN, P_WLO,
                            HAS_SINK, HAS_WINDOW, False, BLOCK_N, HEAD_DIM,
                            USE_TMA, STAGES, WARP_SPEC, LAZY, DOT_PREC, MASK_IMPL)
    if not EDGE_MERGE:
        # upper band edge: the causal diagonal (and keys >= N)
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_vn, b, h_kv,
                                c_blk, d_blk, 0, 0, offs_m, qk_scale, N, P_SINK, P_WIN, P_WLO,
                                HAS_SINK, HAS_WINDOW, True, BLOCK_N, HEAD_DIM,
                                USE_TMA, EDGE_STAGES, False, False, DOT_PREC, MASK_IMPL)

    if SINK_PREFETCH:
        if sink_hi > 0:
            qk = tl.dot(q, sk.T, input_precision=DOT_PREC)
            allowed = _mask(offs_m, offs_s, N, P_SINK, P_WIN, P_WLO, HAS_SINK, HAS_WINDOW, MASK_IMPL)
            acc, m_i, l_i = _masked_update(acc, m_i, l_i, qk, sv, allowed, qk_scale, DOT_PREC)

    # ---- epilogue: rows with no allowed key give 0 and LSE = -inf
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    if USE_TMA == 2:
        O.store([b, h, q0, 0], out.to(Q_ptr.dtype.element_ty).reshape([1, 1, BLOCK_M, HEAD_DIM]))
    elif USE_TMA == 1:
        o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
        o_desc = tl.make_tensor_descriptor(o_base, shape=[N, HEAD_DIM], strides=[stride_on, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        o_desc.store([q0, 0], out.to(Q_ptr.dtype.element_ty))
    else:
        o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
        tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :],
                 out.to(Q_ptr.dtype.element_ty), mask=offs_m[:, None] < N)
    if HAS_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        l_ptrs = LSE + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + offs_m
        tl.store(l_ptrs, lse, mask=offs_m < N)


# --------------------------------------------------------------------------- host side
@dataclass(frozen=True)
class Config:
    BLOCK_M: int = 128
    BLOCK_N: int = 128
    num_warps: int = 8
    num_stages: int = 3          # kernel-level pipelining (loads feeding dots)
    STAGES: int = 3              # tl.range num_stages of the unmasked interior loop
    EDGE_STAGES: int = 2         # tl.range num_stages of masked / sink loops
    BLOCK_N_SINK: int = 16       # key tile of the sink loop (>= 16, <= BLOCK_N)
    USE_TMA: int = 1             # 0 pointers, 1 device-side descriptors, 2 host-side 4D descriptors
    EDGE_MERGE: bool = False     # both masked band edges in one loop (one pipeline restart less)
    GRID_ORDER: int = 0
    HEAD_GROUP: int = 4
    WARP_SPEC: bool = False
    LAZY: bool = False
    maxnreg: int | None = None
    MASK_IMPL: int = 1           # 0 literal per-element differences, 1 per-row key intervals
    SINK_PREFETCH: bool = False  # sink <= BLOCK_N_SINK: one prefetched tile instead of a loop

    def name(self) -> str:
        s = f"M{self.BLOCK_M}N{self.BLOCK_N}w{self.num_warps}s{self.num_stages}/{self.STAGES}/{self.EDGE_STAGES}"
        s += ["-ptr", "-tma", "-htma"][int(self.USE_TMA)]
        if self.EDGE_MERGE:
            s += "-em"
        if self.GRID_ORDER:
            s += f"-g{self.GRID_ORDER}"
        if self.GRID_ORDER == 3:
            s += f"h{self.HEAD_GROUP}"
        if self.WARP_SPEC:
            s += "-ws"
        if self.LAZY:
            s += "-lazy"
        if self.BLOCK_N_SINK != 16:
            s += f"-snk{self.BLOCK_N_SINK}"
        if self.maxnreg:
            s += f"-r{self.maxnreg}"
        if self.SINK_PREFETCH:
            s += "-sp"
        if self.MASK_IMPL != 1:
            s += f"-mask{self.MASK_IMPL}"
        return s


def default_config(head_dim: int, causal_only: bool, dtype=torch.bfloat16, N: int = 8192,
                   window: int | None = None) -> Config:
    """Winning configurations from bench/proto/tune.py on an H100 (see NOTES.md).

    bf16/fp16: 128x64 tiles, 8 warps, 2-stage pipelines, registers capped at 128 so that
    two CTAs (2 x 96 KB of shared memory) share an SM, host-side 4D TMA descriptors.
    Causal: longest query blocks first, heads interleaved in groups whose K/V fit in L2.
    Windows of 2048 or more: both masked band edges in one loop (measured +1..5% at
    W=4096, -3% at W=1024).  Sink prefetch did not pay (NOTES.md), so the sink keeps its
    own short loop.
    """
    if dtype == torch.float32:
        return Config(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2, STAGES=2, EDGE_STAGES=1)
    base = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, STAGES=2, EDGE_STAGES=2,
                maxnreg=128, USE_TMA=2)
    if causal_only:
        kv_bytes_per_head = 2 * N * head_dim * 2
        hg = max(1, (24 << 20) // kv_bytes_per_head)
        hg = 1 << (hg.bit_length() - 1)          # power of two, <= 24 MB of K/V in flight
        if hg > 1:
            return Config(**base, GRID_ORDER=3, HEAD_GROUP=min(hg, 8))
        return Config(**base, GRID_ORDER=2)
    return Config(**base, EDGE_MERGE=window is not None and window >= 2048)


_ALLOCATOR_SET = False


def _ensure_allocator():
    # device-side tensor descriptors need a scratch allocation per launch
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        def alloc(size: int, alignment: int, stream):
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            return torch.empty(size, device=dev, dtype=torch.int8)
        triton.set_allocator(alloc)
        _ALLOCATOR_SET = True


def attention(q, k, v, *, sink: int = 0, window: int | None = None, window_lo: int = 0,
              sm_scale: float | None = None, return_lse: bool = False,
              config: Config | None = None, out: torch.Tensor | None = None,
              lse_out: torch.Tensor | None = None):
    """Forward attention for causal & (sink(sink) | band(window_lo, window)).

    window=None means no window limit (plain causal when sink == 0 and window_lo == 0).
    """
    B, H, N, D = q.shape
    Bk, H_KV, Nk, Dk = k.shape
    assert (Bk, Nk, Dk) == (B, N, D) and v.shape == k.shape and H % H_KV == 0
    assert D in (64, 128), "head_dim 64 or 128"
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    has_window = window is not None
    has_sink = sink > 0
    # the segment arithmetic assumes sink keys never lie above the band (see module doc)
    assert not (has_sink and window_lo > 0), "sink with a band lower offset is not supported"
    assert window_lo >= 0 and (window is None or window >= 1)
    if config is None:
        config = default_config(D, causal_only=not has_window and not has_sink, dtype=q.dtype,
                                N=N, window=window)
    cfg = config
    assert cfg.BLOCK_N_SINK <= cfg.BLOCK_N and cfg.BLOCK_N % cfg.BLOCK_N_SINK == 0
    if cfg.SINK_PREFETCH and has_sink:
        assert sink <= cfg.BLOCK_N_SINK, "SINK_PREFETCH needs sink <= BLOCK_N_SINK"
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    o = torch.empty_like(q) if out is None else out
    assert o.shape == q.shape and o.dtype == q.dtype and o.stride(-1) == 1
    if return_lse:
        lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32) if lse_out is None else lse_out
        assert lse.shape == (B, H, N) and lse.stride(-1) == 1
    else:
        lse = torch.empty((1, 1), device=q.device, dtype=torch.float32)
    use_tma = int(cfg.USE_TMA)
    if use_tma == 1:
        _ensure_allocator()
    if use_tma == 2:
        from triton.tools.tensor_descriptor import TensorDescriptor
        bm = [1, 1, cfg.BLOCK_M, D]
        bn = [1, 1, cfg.BLOCK_N, D]
        q_arg = TensorDescriptor(q, list(q.shape), list(q.stride()), bm)
        k_arg = TensorDescriptor(k, list(k.shape), list(k.stride()), bn)
        v_arg = TensorDescriptor(v, list(v.shape), list(v.stride()), bn)
        o_arg = TensorDescriptor(o, list(o.shape), list(o.stride()), bm)
    else:
        q_arg, k_arg, v_arg, o_arg = q, k, v, o
    grid = (triton.cdiv(N, cfg.BLOCK_M), B * H)
    extra = {}
    if cfg.maxnreg:
        extra["maxnreg"] = cfg.maxnreg
    _fwd_kernel[grid](
        q_arg, k_arg, v_arg, o_arg, lse, k, v, q,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0) if return_lse else 0, lse.stride(1) if return_lse else 0,
        N, H, sm_scale * LOG2E,
        sink, window if has_window else 0, window_lo,
        GROUP=H // H_KV, HEAD_DIM=D,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_N_SINK=cfg.BLOCK_N_SINK,
        HAS_SINK=has_sink, HAS_WINDOW=has_window, HAS_LSE=return_lse, USE_TMA=use_tma,
        EDGE_MERGE=cfg.EDGE_MERGE and has_window,
        GRID_ORDER=cfg.GRID_ORDER, HEAD_GROUP=math.gcd(cfg.HEAD_GROUP, B * H), STAGES=cfg.STAGES, EDGE_STAGES=cfg.EDGE_STAGES,
        WARP_SPEC=cfg.WARP_SPEC, LAZY=cfg.LAZY, MASK_IMPL=cfg.MASK_IMPL,
        SINK_PREFETCH=bool(cfg.SINK_PREFETCH and has_sink),
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **extra,
    )
    return (o, lse) if return_lse else o


# --------------------------------------------------------------------------- reference
def pattern_mask(N: int, *, sink: int = 0, window: int | None = None, window_lo: int = 0,
                 device="cpu") -> torch.Tensor:
    """Dense (N, N) bool mask of causal & (sink | band(window_lo, window))."""
    qi = torch.arange(N, device=device)[:, None]
    ki = torch.arange(N, device=device)[None, :]
    d = qi - ki
    allowed = d >= window_lo
    if window is not None:
        allowed &= d < window
    if sink > 0:
        allowed |= (ki < sink) & (d >= 0)
    return allowed


def reference(q, k, v, mask: torch.Tensor, sm_scale: float | None = None):
    """float32 dense reference; rows with no allowed key give 0 and LSE -inf."""
    B, H, N, D = q.shape
    group = H // k.shape[1]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    qf = q.float()
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * sm_scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)
    o = torch.matmul(p, vf)
    return o, lse


def allowed_pairs(N: int, *, sink: int = 0, window: int | None = None, window_lo: int = 0) -> int:
    """Exact count of allowed (q, k) pairs, O(N) arithmetic."""
    total = 0
    import numpy as np
    q = np.arange(N, dtype=np.int64)
    hi = q - window_lo                      # band keys [lo, hi]
    lo = np.zeros_like(q) if window is None else np.maximum(q - window + 1, 0)
    band = np.where(hi >= lo, hi - lo + 1, 0)
    total = int(band.sum())
    if sink > 0:
        # sink keys k < min(sink, q + 1) outside the band
        s_hi = np.minimum(sink, q + 1)        # sink keys [0, s_hi)
        inter = np.clip(np.minimum(s_hi - 1, hi) - np.maximum(lo, 0) + 1, 0, None)
        inter = np.where(hi >= lo, inter, 0)
        total += int((s_hi - inter).sum())
    return total
