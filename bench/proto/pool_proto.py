"""A Triton prototype of the selection's pooling (the mean of each block of rows), for
bench/selection.py to time against the module's torch pooling (block_scores.block_mean): one
program per (block, batch x head) sums its rows in float32, ROWS at a time; a last, partial
block is averaged over the rows it has. If it beats torch's reduction on the GPU, the module
can take it; the torch definition stays the reference."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pool_kernel(X, OUT, N, NB, BLOCK: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr):
    blk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, D)
    acc = tl.zeros([D], dtype=tl.float32)
    for r0 in range(0, BLOCK, ROWS):
        r = blk * BLOCK + r0 + tl.arange(0, ROWS)
        x = tl.load(X + (bh * N + r[:, None]) * D + d[None, :], mask=r[:, None] < N, other=0.0)
        acc += tl.sum(x.to(tl.float32), 0)
    tl.store(OUT + (bh * NB + blk) * D + d, acc / tl.minimum(BLOCK, N - blk * BLOCK))


def block_mean_triton(x: torch.Tensor, block: int, rows: int = 32, num_warps: int = 4) -> torch.Tensor:
    """x `[B, H, N, D]` contiguous: `[B, H, nb, D]` float32, the mean of each block of rows."""
    b, h, n, d = x.shape
    nb = -(-n // block)
    out = torch.empty((b, h, nb, d), device=x.device, dtype=torch.float32)
    _pool_kernel[(nb, b * h)](x, out, n, nb, BLOCK=block, D=d, ROWS=min(rows, block), num_warps=num_warps)
    return out
