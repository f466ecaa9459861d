"""Prefill of `causal & (sink(S) | window(W))` on Hopper (sm_90) as an explicitly
warp-specialised Gluon kernel.

Triton 3.6 cannot warp-specialise the generated kernels (its automatic pass fails on their
segmented loops or miscompiles a single masked one), and without it their rate stays near
0.9x of cuDNN's. This kernel states FlashAttention-3's schedule in Gluon
(`triton.experimental.gluon`, part of Triton): per CTA a 128-row query tile split between two
consumer warpgroups (64 rows each) and a one-warp producer that streams K and V tiles of 128
keys by TMA into two-stage rings guarded by mbarriers; each consumer issues S_j = Q K_j^T
and O += P_{j-1} V_{j-1} as asynchronous wgmmas, waits for S_j alone and runs the softmax of
tile j under the PV product (P stays in registers as the wgmma's A operand). A query tile
visits the sink tiles below its window, then its window's tiles up to the diagonal (BAND; W =
0 is causal: every tile from 0); the mask runs only on tiles some row of a warpgroup needs it
on. With a window the kernel is persistent (one program per SM takes query tiles in turn; a
consumer releases its Q half after a tile's last QK^T, so the next tile's Q and first K/V tiles
load under this tile's last PV product and epilogue): a window's tiles visit few key tiles, and
the fill and drain of each would otherwise stand alone (H100: sink(4) | window(1024) at 32K
1.49-1.56 against 1.65-1.66 ms). Causal tiles visit many, and there one program per tile (the
GPU's own scheduling, longest first) balanced better (13.8-14.3 against 14.6-14.7 ms). It serves groups of that
shape (the plan's `band`) on long prompts and, with a window, long windows (the
configuration's `HOPPER` and `HOPPER_WINDOW`: compiler/configs.py), where its rate pays
(docs/codegen.md); every other launch, and every launch on the CPU (Gluon has no interpreter),
is the generated kernel.

Layouts: q, k, v are read through 2-D TMA descriptors over either (B * H * N, D) (contiguous
(B, H, N, D)) or (B * N, H * D) (a model's (B, N, H, D) projections viewed as (B, H, N, D)).
Keys past N of a head read the rows that follow (the next head's or batch's, or TMA's zero
fill at the end); they lie in diagonal tiles, where the mask weights them by zero, so the
inputs must be finite (an infinity in another head's values would reach this head's output).
"""

from __future__ import annotations

import functools

import torch

from .launch import FastLaunch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
except ImportError:  # a Triton without Gluon: the generated kernel serves every launch
    gluon = None

_HOPPER_ROWS = 64  # query rows per consumer warpgroup (two per CTA)
_HOPPER_KEYS = 128  # keys per K/V tile
_HOPPER_STAGES = 2  # depth of the K and V rings
HOPPER_PROGRAMS_PER_SM = 1  # windowed groups: persistent programs per SM (0: one per query tile)


def _gluon_jit(**options):
    """gluon.jit(**options), or a plain function where this Triton has no Gluon."""
    return gluon.jit(**options) if gluon is not None else (lambda fn: fn)


@_gluon_jit()
def _hp_tile(
    t, NUM_M, HEADS, NH, GROUP: gl.constexpr, BLOCK_M: gl.constexpr, HEAD_GROUP: gl.constexpr, SUBSET: gl.constexpr
):
    """Query tile t of the launch (of NUM_M tiles per head): (q0, batch, head, KV head). Longest
    tiles first; HEAD_GROUP > 1: heads fastest inside groups of HEAD_GROUP (their K/V fit in L2)."""
    if HEAD_GROUP == 1:
        pid_m = NUM_M - 1 - t % NUM_M
        bh = t // NUM_M
    else:
        r = t % (NUM_M * HEAD_GROUP)
        pid_m = NUM_M - 1 - r // HEAD_GROUP
        bh = (t // (NUM_M * HEAD_GROUP)) * HEAD_GROUP + r % HEAD_GROUP
    b = bh // NH
    h = bh % NH
    if SUBSET:
        h = gl.load(HEADS + h)
    return pid_m * BLOCK_M, b, h, h // GROUP


@_gluon_jit()
def _hp_span(q0, N, SINK, WINDOW, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BAND: gl.constexpr):
    """The key tiles a query tile visits, in order: (n_sink, lo, count): tiles [0, n_sink) (the
    sinks before the window), then [lo, d) up to the diagonal; tile i of the visit is
    _hp_key_tile(i, n_sink, lo). Causal (BAND off): every tile from 0."""
    d = (gl.minimum(q0 + BLOCK_M, N) - 1) // BLOCK_N + 1
    if BAND:
        lo = gl.maximum(q0 - WINDOW + 1, 0) // BLOCK_N
        n_sink = gl.minimum((SINK + BLOCK_N - 1) // BLOCK_N, lo)
    else:
        lo = 0
        n_sink = 0
    return n_sink, lo, n_sink + d - lo


@_gluon_jit()
def _hp_key_tile(i, n_sink, lo):
    """The key tile of step i of a query tile's visit (_hp_span)."""
    return gl.where(i < n_sink, i, i - n_sink + lo)


@_gluon_jit()
def _hp_softmax(
    s, m_i, l_i, qk_scale, offs_m, k0, SINK, WINDOW, MASKED: gl.constexpr, BAND: gl.constexpr, s_layout: gl.constexpr
):
    """One online-softmax step (log2 domain): p, the new max and sum, and the rescale alpha.
    MASKED: only k <= q (and, BAND, k < SINK or q - k < WINDOW) count; a row with no key yet
    keeps a zero sum (its max stays -inf, read as 0 when subtracting)."""
    if MASKED:
        k = gl.expand_dims(k0 + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, s_layout)), 0)
        q = gl.expand_dims(offs_m, 1)
        if BAND:
            s = gl.where((k <= q) & ((k < SINK) | (q - k < WINDOW)), s, float("-inf"))
        else:
            s = gl.where(k <= q, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    if MASKED and BAND:  # a row whose keys so far all lie outside its window
        m_sub = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_sub = m_new
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_sub, 1))
    alpha = gl.exp2(m_i - m_sub)
    return p, m_new, l_i * alpha + gl.sum(p, axis=1), alpha


@_gluon_jit()
def _hp_step(
    s,
    m_i,
    l_i,
    qk_scale,
    offs_m,
    j,
    c,
    q_lo,
    SINK,
    WINDOW,
    BLOCK_N: gl.constexpr,
    BAND: gl.constexpr,
    s_layout: gl.constexpr,
):
    """The softmax of key tile j for rows offs_m (q_lo, ...): masked from the diagonal tile c on
    and, BAND, on tiles that reach below the last row's window and are not wholly sinks."""
    masked = j >= c
    if BAND:
        below = j * BLOCK_N < q_lo + s.shape[0] - WINDOW
        masked = masked | (below & ((j + 1) * BLOCK_N > SINK))
    if masked:
        p, m_new, l_new, alpha = _hp_softmax(
            s, m_i, l_i, qk_scale, offs_m, j * BLOCK_N, SINK, WINDOW, True, BAND, s_layout
        )
    else:
        p, m_new, l_new, alpha = _hp_softmax(
            s, m_i, l_i, qk_scale, offs_m, j * BLOCK_N, SINK, WINDOW, False, BAND, s_layout
        )
    return p, m_new, l_new, alpha


@_gluon_jit()
def _hp_consumer(
    q_bufs, q_bar, q_empty, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, HEADS, O, LSE, N, NH, SINK, WINDOW,
    NUM_M, TILES, stride_ob, stride_oh, stride_on, stride_lb, stride_lh, qk_scale,
    WG: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_LSE: gl.constexpr,
    HEAD_GROUP: gl.constexpr, SUBSET: gl.constexpr, BAND: gl.constexpr,
):  # fmt: skip
    """Consumer warpgroup WG: query rows q0 + 64 WG .. + 63 of each of the program's tiles. Its Q
    half is released after the tile's last QK^T, so that the producer loads the next tile's Q
    (and first K/V tiles) under this tile's last PV product and epilogue."""
    ROWS: gl.constexpr = q_bufs.shape[1]
    HEAD_DIM: gl.constexpr = q_bufs.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_bufs.dtype
    q_smem = q_bufs.index(WG)
    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    g0 = 0  # K/V ring slots this program consumed before the tile
    phase = 0
    for t in range(gl.program_id(0), TILES, gl.num_programs(0)):
        q0, b, h, _ = _hp_tile(t, NUM_M, HEADS, NH, GROUP, 2 * ROWS, HEAD_GROUP, SUBSET)
        n_sink, lo, count = _hp_span(q0, N, SINK, WINDOW, 2 * ROWS, BLOCK_N, BAND)
        c = q0 // BLOCK_N  # tiles below c are under the diagonal for every row of the CTA
        q_lo = q0 + WG * ROWS
        offs_m = q_lo + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))

        mbarrier.wait(q_bar, phase)
        mbarrier.wait(k_ready.index(g0 % STAGES), (g0 // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_bufs.index(g0 % STAGES).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s_tok,))
        mbarrier.arrive(k_empty.index(g0 % STAGES), count=1)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
        j = _hp_key_tile(0, n_sink, lo)
        p, m_i, l_i, alpha = _hp_step(s, m_i, l_i, qk_scale, offs_m, j, c, q_lo, SINK, WINDOW, BLOCK_N, BAND, s_layout)
        p = gl.convert_layout(p.to(dtype), p_layout)
        o = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
        for i in range(1, count):
            g = g0 + i
            si = g % STAGES
            sp = (g - 1) % STAGES
            mbarrier.wait(k_ready.index(si), (g // STAGES) & 1)
            mbarrier.wait(v_ready.index(sp), ((g - 1) // STAGES) & 1)
            s_tok = warpgroup_mma(q_smem, k_bufs.index(si).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            o_tok = warpgroup_mma(p, v_bufs.index(sp), o, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s_tok,))  # S_i done; PV_{i-1} runs under the softmax
            mbarrier.arrive(k_empty.index(si), count=1)
            j = _hp_key_tile(i, n_sink, lo)
            p_next, m_i, l_i, alpha = _hp_step(
                s, m_i, l_i, qk_scale, offs_m, j, c, q_lo, SINK, WINDOW, BLOCK_N, BAND, s_layout
            )
            p_next = gl.convert_layout(p_next.to(dtype), p_layout)
            o, p = warpgroup_mma_wait(0, deps=(o_tok, p))
            mbarrier.arrive(v_empty.index(sp), count=1)
            o = o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            p = p_next
        mbarrier.arrive(q_empty, count=1)  # every QK^T of the tile is done
        g = g0 + count - 1
        mbarrier.wait(v_ready.index(g % STAGES), (g // STAGES) & 1)
        o_tok = warpgroup_mma(p, v_bufs.index(g % STAGES), o, is_async=True)
        o, p = warpgroup_mma_wait(0, deps=(o_tok, p))
        mbarrier.arrive(v_empty.index(g % STAGES), count=1)
        g0 += count
        phase ^= 1

        out = (o / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 1)).to(dtype)
        rows = q_lo + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_layout))
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        base = O + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
        ptrs = base + gl.expand_dims(rows.to(gl.int64) * stride_on, 1) + gl.expand_dims(cols, 0)
        gl.store(ptrs, out, mask=gl.expand_dims(rows < N, 1))
        if HAS_LSE:
            lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
            rows_s = q_lo + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
            gl.store(LSE + b.to(gl.int64) * stride_lb + h * stride_lh + rows_s, lse, mask=rows_s < N)


@_gluon_jit()
def _hp_producer(
    q_desc, k_desc, v_desc, q_bufs, q_bar, q_empty, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, HEADS, N,
    NH, SINK, WINDOW, NUM_M, TILES, Q_RB, Q_RH, Q_CH, K_RB, K_RH, K_CH,
    GROUP: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HEAD_GROUP: gl.constexpr,
    SUBSET: gl.constexpr, BAND: gl.constexpr,
):  # fmt: skip
    """The one-warp producer, per tile of the program: Q's two halves once both consumers released
    the last tile's, then each visited key tile's K and V into their rings. A head's rows start
    at b * RB + h * RH of a descriptor, its columns at h * CH."""
    ROWS: gl.constexpr = q_bufs.shape[1]
    g = 0  # K/V ring slots filled so far
    phase = 0
    for t in range(gl.program_id(0), TILES, gl.num_programs(0)):
        q0, b, h, kv = _hp_tile(t, NUM_M, HEADS, NH, GROUP, 2 * ROWS, HEAD_GROUP, SUBSET)
        n_sink, lo, count = _hp_span(q0, N, SINK, WINDOW, 2 * ROWS, BLOCK_N, BAND)
        q_row = b * Q_RB + h * Q_RH + q0
        kv_row = b * K_RB + kv * K_RH
        # a fresh mbarrier has completed the phase before phase 0: the first wait passes at once
        mbarrier.wait(q_empty, phase ^ 1)
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, h * Q_CH], q_bar, q_bufs.index(0))
        tma.async_copy_global_to_shared(q_desc, [q_row + ROWS, h * Q_CH], q_bar, q_bufs.index(1))
        phase ^= 1
        for i in range(count):
            s = g % STAGES
            ph = (g // STAGES) & 1
            row = kv_row + _hp_key_tile(i, n_sink, lo) * BLOCK_N
            mbarrier.wait(k_empty.index(s), ph ^ 1)
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row, kv * K_CH], k_ready.index(s), k_bufs.index(s))
            mbarrier.wait(v_empty.index(s), ph ^ 1)
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [row, kv * K_CH], v_ready.index(s), v_bufs.index(s))
            g += 1


_RUNTIME = ["N", "NH", "SINK", "WINDOW", "NUM_M", "TILES", "Q_RB", "Q_RH", "K_RB", "K_RH"] + [
    f"stride_{x}" for x in ("ob", "oh", "on", "lb", "lh")
]


@_gluon_jit(do_not_specialize=_RUNTIME)
def _hopper_kernel(
    q_desc, k_desc, v_desc, HEADS, O, LSE, N, NH, SINK, WINDOW, NUM_M, TILES, Q_RB, Q_RH, Q_CH, K_RB, K_RH, K_CH,
    stride_ob, stride_oh, stride_on, stride_lb, stride_lh, qk_scale,
    GROUP: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_LSE: gl.constexpr,
    HEAD_GROUP: gl.constexpr, SUBSET: gl.constexpr, BAND: gl.constexpr,
):  # fmt: skip
    """`causal & (sink(SINK) | window(WINDOW))` (BAND; else causal) over 128-row query tiles
    t = program, program + programs, ... < TILES: two consumer warpgroups and a TMA producer
    warp, the K/V rings running on from one tile to the next."""
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(q_empty, count=2)  # one arrival per consumer warpgroup
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)
        mbarrier.init(v_empty.index(i), count=2)
    fence_async_shared()
    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    # fmt: off
    gl.warp_specialize([
        (_hp_consumer, (q_bufs, q_bar, q_empty, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, HEADS, O, LSE, N,
                        NH, SINK, WINDOW, NUM_M, TILES, stride_ob, stride_oh, stride_on, stride_lb, stride_lh, qk_scale,
                        WG0, GROUP, BLOCK_N, STAGES, HAS_LSE, HEAD_GROUP, SUBSET, BAND)),
        (_hp_consumer, (q_bufs, q_bar, q_empty, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, HEADS, O, LSE, N,
                        NH, SINK, WINDOW, NUM_M, TILES, stride_ob, stride_oh, stride_on, stride_lb, stride_lh, qk_scale,
                        WG1, GROUP, BLOCK_N, STAGES, HAS_LSE, HEAD_GROUP, SUBSET, BAND)),
        (_hp_producer, (q_desc, k_desc, v_desc, q_bufs, q_bar, q_empty, k_bufs, v_bufs, k_ready, v_ready, k_empty,
                        v_empty, HEADS, N, NH, SINK, WINDOW, NUM_M, TILES, Q_RB, Q_RH, Q_CH, K_RB, K_RH, K_CH, GROUP,
                        BLOCK_N, STAGES, HEAD_GROUP, SUBSET, BAND)),
    ], [4, 1], [240, 24])  # the two consumers' arguments differ in WG only (a tuple built once loses constexprs)
    # fmt: on


# ------------------------------------------------------------------ host side


def hopper_rows(t: torch.Tensor):
    """(2-D view, rows per batch, rows per head, columns per head) of a (B, H, N, D) tensor whose
    rows TMA can address: (B * H * N, D) for a contiguous tensor, (B * N, H * D) for (B, N, H, D)
    viewed as (B, H, N, D); None for another layout or unaligned addresses."""
    B, H, N, D = t.shape
    s0, s1, s2, s3 = t.stride()
    if s3 != 1 or t.data_ptr() % 16 or (s2 * t.element_size()) % 16:
        return None
    if s2 == D and (H == 1 or s1 == N * D) and (B == 1 or s0 == H * N * D):
        return torch.as_strided(t, (B * H * N, D), (D, 1)), H * N, N, 0
    if s1 == D and s2 == H * D and (B == 1 or s0 == N * H * D):
        return torch.as_strided(t, (B * N, H * D), (H * D, 1)), N, 0, D
    return None


def hopper_ok(q: torch.Tensor, N: int, min_n: int) -> bool:
    """Whether the Hopper kernel may serve a launch of N keys whose configuration allows it from
    min_n keys on (0: never): Gluon, q on a GPU (the configuration checked the rest)."""
    return 0 < min_n <= N and gluon is not None and q.is_cuda


@functools.cache
def _sm_count(device_index: int) -> int:
    """The GPU's streaming multiprocessors: the persistent grid's size, read once per device."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def hopper_launcher(q, k, v, o, heads, nh: int, H: int, band: tuple, scale: float, return_lse: bool, head_group: int):
    """run(q, k, v, o, lse, tr, lengths, sel=None): one launch of the Hopper kernel over
    `causal & (sink(S) | window(W))`, band = (S, W) (W = 0: causal), for these tensors' layouts
    (the caller's memo key fixes shapes and strides), or None where a layout does not suit it
    (hopper_rows)."""
    rows = [hopper_rows(t) for t in (q, k, v)]
    if None in rows or o.stride() != q.stride():
        return None
    B, _, N, D = q.shape
    dt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_block, kv_block = [_HOPPER_ROWS, D], [_HOPPER_KEYS, D]
    q_layout = gl.NVMMASharedLayout.get_default_for(q_block, dt)
    kv_layout = gl.NVMMASharedLayout.get_default_for(kv_block, dt)
    (_, q_rb, q_rh, q_ch), (_, k_rb, k_rh, k_ch) = rows[0], rows[1]
    num_m = -(-N // (2 * _HOPPER_ROWS))
    tiles = num_m * B * nh
    programs = HOPPER_PROGRAMS_PER_SM * _sm_count(q.device.index) if band[1] else 0  # causal: per tile
    grid = (min(tiles, programs) if programs else tiles,)
    const = dict(GROUP=H // k.shape[1], BLOCK_N=_HOPPER_KEYS, STAGES=_HOPPER_STAGES, HAS_LSE=return_lse,
                 HEAD_GROUP=head_group, SUBSET=heads is not None, BAND=band[1] > 0, num_warps=4,
                 maxnreg=168)  # fmt: skip

    launch = FastLaunch(_hopper_kernel, grid, const)
    blocks = ((q_block, q_layout), (kv_block, kv_layout), (kv_block, kv_layout))
    tail = (N, nh, *band, num_m, tiles, q_rb, q_rh, q_ch, k_rb, k_rh, k_ch)
    lse_strides = (0, 0)

    def run(q, k, v, o, lse, tr=None, lengths=None, sel=None):
        if launch.describes:  # the C launch describes bare tensors as at the first launch
            descs = (q, k, v)
        else:
            descs = [GluonDescriptor(view, list(view.shape), list(view.stride()), *box)
                     for view, box in zip((hopper_rows(t)[0] for t in (q, k, v)), blocks)]  # fmt: skip
        return launch(*descs, heads, o, lse, *tail, *o.stride()[:3],
                      *(lse.stride()[:2] if return_lse else lse_strides), scale * 1.4426950408889634)  # fmt: skip

    return run
