"""Probe: does Triton 3.6's Hopper auto warp specialization pay for the attention loop?

Hopper auto-WS (tl.range(..., warp_specialize=True)) only compiles for a kernel with a
single loop (two loops crash the NVGPUWarpSpecialization pass, seen locally when
compiling for sm_90), so the segmented prefill kernel cannot use it directly.  This
kernel is the bare interior loop (no mask, query block m reads key blocks [0, m*BM/BN)),
timed with and without WS to decide whether a single-loop variant is worth building.
Its output is not attention of any pattern; only its time matters.
"""
import triton
import triton.language as tl


@triton.jit
def ws_probe_kernel(Q, K, V, O, N, stride_n, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    WS: tl.constexpr, STAGES: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    base = bh.to(tl.int64) * N * HEAD_DIM
    qd = tl.make_tensor_descriptor(Q + base, shape=[N, HEAD_DIM], strides=[stride_n, 1],
                                   block_shape=[BLOCK_M, HEAD_DIM])
    kd = tl.make_tensor_descriptor(K + base, shape=[N, HEAD_DIM], strides=[stride_n, 1],
                                   block_shape=[BLOCK_N, HEAD_DIM])
    vd = tl.make_tensor_descriptor(V + base, shape=[N, HEAD_DIM], strides=[stride_n, 1],
                                   block_shape=[BLOCK_N, HEAD_DIM])
    od = tl.make_tensor_descriptor(O + base, shape=[N, HEAD_DIM], strides=[stride_n, 1],
                                   block_shape=[BLOCK_M, HEAD_DIM])
    q = qd.load([pid_m * BLOCK_M, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = (pid_m + 1) * BLOCK_M // BLOCK_N
    for j in tl.range(0, hi, num_stages=STAGES, warp_specialize=WS):
        k = kd.load([j * BLOCK_N, 0])
        qk = tl.dot(q, k.T)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        v = vd.load([j * BLOCK_N, 0])
        acc = tl.dot(p.to(v.dtype), v, acc)
    od.store([pid_m * BLOCK_M, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))


def run_probe(q, k, v, o, *, BLOCK_M, BLOCK_N, num_warps, STAGES, WS):
    B, H, N, D = q.shape
    grid = (triton.cdiv(N, BLOCK_M), B * H)
    ws_probe_kernel[grid](q, k, v, o, N, q.stride(2), 0.08838834764831845 * 1.4426950408889634,
                          HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, WS=WS, STAGES=STAGES,
                          num_warps=num_warps, num_stages=STAGES)
