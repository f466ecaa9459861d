"""Scores of key blocks (prefill) and key pages (decode) for selection by score at run time.

One definition of each score, used by the prefill selection, by the decode-time page
selection, by their torch references and by the Hugging Face reference backend. A block (or
page) is `size` consecutive key positions; its summary is computed from the keys alone, so a
decode cache can keep it up to date on append, with no pass over the whole cache.

- `block_mean(k, size)`: the mean key of each block (MoBA, NSA's selection branch); scored by
  `mean_score` (query, or pooled query, dot the mean key).
- `block_min_max(k, size)`: per-channel minimum and maximum of each block (Quest); scored by
  `quest_bound`, an upper bound of q . k over the block's keys.
- `top_blocks(scores, k)`: the k best blocks per row, ties to the lowest block index.

Shapes: keys `[..., N, D]` give summaries `[..., ceil(N / size), D]`; a last, partial block is
summarised over the keys it has. Scores are float32.
"""

from __future__ import annotations

import torch


def _per_block(x: torch.Tensor, size: int, reduce) -> torch.Tensor:
    """`reduce(blocks, -2)` over each block of `size` positions of x `[..., N, D]`: `[..., nb, D]`.
    Whole blocks are a view of x; a last, partial block is reduced over the positions it has
    (no padded copy of x)."""
    n = x.shape[-2]
    whole = n - n % size
    out = reduce(x[..., :whole, :].unflatten(-2, (whole // size, size)), -2)
    if whole < n:
        out = torch.cat([out, reduce(x[..., whole:, :].unsqueeze(-3), -2)], -2)
    return out


def block_mean(k: torch.Tensor, size: int) -> torch.Tensor:
    """The mean of each block of `size` keys, `[..., nb, D]` (float32)."""
    n = k.shape[-2]
    counts = torch.full((-(-n // size), 1), float(size), device=k.device, dtype=torch.float32)
    counts[-1] = n - (n - 1) // size * size
    return _per_block(k, size, lambda b, d: b.sum(d, dtype=torch.float32)) / counts  # no float32 copy of k


def block_min_max(k: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minimum and maximum of each block of `size` keys, each `[..., nb, D]`
    (float32; found in k's dtype, exactly, without a float32 copy of k)."""
    return _per_block(k, size, torch.amin).float(), _per_block(k, size, torch.amax).float()


def mean_score(q: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """q `[..., M, D]` dot each block's mean key `[..., nb, D]`: `[..., M, nb]`."""
    return q.float() @ k_mean.float().transpose(-1, -2)


def quest_bound(q: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor) -> torch.Tensor:
    """Quest's upper bound of q . k over each block: sum over channels of
    max(q_c * min_c, q_c * max_c). q `[..., M, D]`, summaries `[..., nb, D]`: `[..., M, nb]`.
    As two matrix products (no `[..., M, nb, D]` intermediate): the larger product is q_c * max_c
    where q_c > 0 and q_c * min_c where q_c < 0 (min_c <= max_c)."""
    qf = q.float()
    return qf.clamp(min=0) @ k_max.float().transpose(-1, -2) + qf.clamp(max=0) @ k_min.float().transpose(-1, -2)


def top_blocks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores along the last axis, ties to the lowest index, in
    increasing index order (int32). Rows with fewer than k finite scores pad with -1."""
    nb = scores.shape[-1]
    k = min(k, nb)
    # A stable descending sort keeps equal scores in index order: ties go to the lowest index.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    chosen = torch.gather(scores, -1, order)
    order = torch.where(torch.isfinite(chosen), order, torch.full_like(order, nb))
    order = torch.sort(order, dim=-1).values
    return torch.where(order == nb, torch.full_like(order, -1), order).to(torch.int32)


def antidiagonal_score(q: torch.Tensor, k: torch.Tensor, size: int, stride: int, scale: float) -> torch.Tensor:
    """XAttention's block score: the log of the summed exp of strided antidiagonal sums.

    q `[..., G, M, D]` (the G query heads of a KV head: all N queries, or M of them from a
    block boundary on, as a rank of context parallelism holds them), k `[..., N, D]`. Rows and
    keys are cut into runs of `stride`; entry (a, b) is the mean of the `stride` products along
    the antidiagonal of the stride x stride tile (q row a*stride + stride-1-s with key
    b*stride + s), times `scale`; a block score is the logsumexp over the G heads and the
    entries of its tile (incomplete runs at the end count for nothing). `[..., ceil(M / size),
    nb]`, float32; a block with no complete run scores -inf.
    """
    m, n, d = q.shape[-2], k.shape[-2], k.shape[-1]
    runs, q_runs, per, nb, nqb = n // stride, m // stride, size // stride, -(-n // size), -(-m // size)
    qr = q[..., : q_runs * stride, :].float().reshape(*q.shape[:-2], q_runs, stride, d).flip(-2).flatten(-2)
    kr = k[..., : runs * stride, :].float().reshape(*k.shape[:-2], runs, stride * d)
    r = qr @ kr[..., None, :, :].transpose(-1, -2) * (scale / stride)
    r = torch.nn.functional.pad(r, (0, nb * per - runs, 0, nqb * per - q_runs), value=float("-inf"))
    r = r.reshape(*r.shape[:-2], nqb, per, nb, per).transpose(-3, -2)
    return torch.logsumexp(r.flatten(-2), dim=-1).logsumexp(dim=-3)


def vslash_score(q_last: torch.Tensor, k: torch.Tensor, size: int, n_qblocks: int, scale: float) -> torch.Tensor:
    """MInference's vertical and slash lines, as block scores.

    q_last `[..., G, L, D]` holds the last L queries (positions N - L to N - 1) of the G query
    heads of a KV head; k `[..., N, D]`. Their causal attention, summed over heads and rows,
    gives a vertical score per key and a slash score per distance q - k. The block score of
    (query block i, key block j) is the log of the vertical mass of key block j plus the slash
    mass of the distances [(i - j) * size, (i - j + 1) * size). `[..., n_qblocks, nb]`."""
    n, last = k.shape[-2], q_last.shape[-2]
    pos = torch.arange(n - last, n, device=k.device)
    keys = torch.arange(n, device=k.device)
    logits = (q_last.float() @ k.float()[..., None, :, :].transpose(-1, -2)) * scale
    logits = logits.masked_fill(keys[None, :] > pos[:, None], float("-inf"))
    p = torch.softmax(logits, dim=-1).sum(-3)  # [..., L, N]
    dist = (pos[:, None] - keys[None, :]).clamp(min=0).expand_as(p)
    slash = torch.zeros_like(p[..., 0, :]).scatter_add_(-1, dist.flatten(-2), p.flatten(-2))
    nb = -(-n // size)
    pad = nb * size - n
    vert = torch.nn.functional.pad(p.sum(-2), (0, pad)).reshape(*p.shape[:-2], nb, size).sum(-1)
    slash = torch.nn.functional.pad(slash, (0, pad)).reshape(*p.shape[:-2], nb, size).sum(-1)
    delta = torch.arange(n_qblocks, device=k.device)[:, None] - torch.arange(nb, device=k.device)[None, :]
    lines = torch.where(delta >= 0, slash[..., delta.clamp(min=0)], torch.zeros((), device=k.device))
    return torch.log(vert[..., None, :] + lines)


def mass_blocks(scores: torch.Tensor, share: float) -> torch.Tensor:
    """The fewest blocks per row whose softmax over the row's finite scores reaches `share`
    (0 < share <= 1): the highest first, ties to the lowest index; in increasing index order,
    padded with -1 to the row's length (int32)."""
    nb = scores.shape[-1]
    finite = torch.isfinite(scores)
    probs = torch.softmax(scores.masked_fill(~finite, float("-inf")), dim=-1).nan_to_num(0.0)
    ranked, order = torch.sort(probs.masked_fill(~finite, -1.0), dim=-1, descending=True, stable=True)
    before = torch.cumsum(ranked.clamp(min=0.0), dim=-1) - ranked.clamp(min=0.0)
    need = ((before < share) & (ranked >= 0)).sum(-1, keepdim=True)
    slots = torch.arange(nb, device=scores.device)
    order = torch.where(slots < need, order, torch.full_like(order, nb))
    order = torch.sort(order, dim=-1).values
    return torch.where(order == nb, torch.full_like(order, -1), order).to(torch.int32)
