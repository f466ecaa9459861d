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


def _blocks(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[..., N, D]` padded with zeros to whole blocks, as `[..., nb, size, D]`, and the
    number of real positions in each block `[nb]`."""
    n = x.shape[-2]
    nb = -(-n // size)
    pad = nb * size - n
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    counts = torch.full((nb,), size, device=x.device, dtype=torch.float32)
    counts[-1] = size - pad
    return x.reshape(*x.shape[:-2], nb, size, x.shape[-1]), counts


def block_mean(k: torch.Tensor, size: int) -> torch.Tensor:
    """The mean of each block of `size` keys, `[..., nb, D]` (float32)."""
    blocks, counts = _blocks(k.float(), size)
    return blocks.sum(-2) / counts[:, None]


def block_min_max(k: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minimum and maximum of each block of `size` keys, each `[..., nb, D]`."""
    n = k.shape[-2]
    nb = -(-n // size)
    pad = nb * size - n
    kf = k.float()
    lo = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("inf")) if pad else kf
    hi = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("-inf")) if pad else kf
    shape = (*k.shape[:-2], nb, size, k.shape[-1])
    return lo.reshape(shape).amin(-2), hi.reshape(shape).amax(-2)


def mean_score(q: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """q `[..., M, D]` dot each block's mean key `[..., nb, D]`: `[..., M, nb]`."""
    return q.float() @ k_mean.float().transpose(-1, -2)


def quest_bound(q: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor) -> torch.Tensor:
    """Quest's upper bound of q . k over each block: sum over channels of
    max(q_c * min_c, q_c * max_c). q `[..., M, D]`, summaries `[..., nb, D]`: `[..., M, nb]`."""
    qf = q.float()[..., :, None, :]
    return torch.maximum(qf * k_min.float()[..., None, :, :], qf * k_max.float()[..., None, :, :]).sum(-1)


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
