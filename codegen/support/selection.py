"""Selection by score at run time (prefill): the torch reference of every rule, and the host
side the generated selection kernel shares with it.

A selection picks, per query block of `block` rows and per KV head, key blocks of `block`
keys: it scores every candidate block (`block_logmass`: a log-mass estimate, one per score
of block_scores.py), then keeps the `top` best or the fewest that reach `mass` percent of
the estimated mass (`choose`). Which blocks are candidates (reachable by the selection's
context, not already covered by the static part) comes from the pattern's plan as a
boolean [query blocks, key blocks] matrix. Results are index lists `[B, H_KV, n_qblocks, W]`
int32, in increasing order, padded with -1, and their counts `[B, H_KV, n_qblocks]`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .block_scores import (
    antidiagonal_score,
    block_mean,
    block_min_max,
    mass_blocks,
    mean_score,
    quest_bound,
    top_blocks,
    vslash_score,
)


class SelectSpec(NamedTuple):
    """One selection term's rule (compiler/atoms.py's Select): top or mass is 0."""

    score: str
    top: int
    mass: int
    block: int
    stride: int
    last: int


def pooled_queries(q: torch.Tensor, kv_heads: int, block: int) -> torch.Tensor:
    """The mean query of each query block over its rows and the query heads of each KV head:
    `[B, H_KV, n_qblocks, D]` float32 (MoBA's and Quest's query side)."""
    b, h, n, d = q.shape
    return block_mean(q.reshape(b, kv_heads, h // kv_heads, n, d), block).mean(2)


def key_summary(spec: SelectSpec, k: torch.Tensor) -> torch.Tensor:
    """What a `mean` or `quest` score reads of the keys: per key block, `[B, H_KV, nb, S, D]`
    float32, the mean key (S = 1) or the per-channel minimum and maximum (S = 2). Blocks are
    independent, so the summaries of a sequence cut at block boundaries are the concatenation
    of its pieces' (what context parallelism exchanges instead of keys)."""
    if spec.score == "mean":
        return block_mean(k, spec.block).unsqueeze(-2)
    return torch.stack(block_min_max(k, spec.block), -2)


def block_logmass(
    spec: SelectSpec,
    q: torch.Tensor,
    k: torch.Tensor | None,
    scale: float,
    q_offset: int = 0,
    summary: torch.Tensor | None = None,
    q_last: torch.Tensor | None = None,
) -> torch.Tensor:
    """The log-mass estimate of every (query block, key block) of every KV head,
    `[B, H_KV, n_qblocks, n_kblocks]` float32: the score of the scaled pooled query for `mean`
    and `quest` (scale * score; the scale applied to the small pooled query, not to the
    matrix), the logsumexp of scaled antidiagonal sums (`antidiagonal`), the log of vertical
    plus slash mass (`vslash`). q `[B, H, M, D]`: the queries at positions q_offset .. (a
    multiple of the block; default all N), k `[B, H_KV, N, D]`. A part of the queries (context
    parallelism) passes `summary`, the key_summary of all N keys, in place of k for `mean` and
    `quest`, and `q_last`, the last `last` queries of the sequence, for `vslash`."""
    b, h, m, d = q.shape
    kv = (k if summary is None else summary).shape[1]
    if spec.score in ("mean", "quest"):
        s = key_summary(spec, k) if summary is None else summary
        pooled = scale * pooled_queries(q, kv, spec.block)
        if spec.score == "mean":
            return mean_score(pooled, s[..., 0, :])
        return quest_bound(pooled, s[..., 0, :], s[..., 1, :])
    if spec.score == "antidiagonal":
        return antidiagonal_score(q.reshape(b, kv, h // kv, m, d), k, spec.block, spec.stride, scale)
    q_last = q[:, :, m - min(spec.last, m) :] if q_last is None else q_last
    first, nqb = q_offset // spec.block, -(-m // spec.block)
    grouped = q_last.reshape(b, kv, h // kv, q_last.shape[2], d)
    return vslash_score(grouped, k, spec.block, first + nqb, scale)[..., first:, :]


def choose(logmass: torch.Tensor, candidates: torch.Tensor, top: int, mass: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, counts) of the chosen blocks among the candidates (`[n_qblocks, n_kblocks]`
    booleans): the `top` best, or the fewest reaching `mass` percent; ties to the lowest
    index. Width: top, or every key block for a mass budget."""
    scores = logmass.masked_fill(~candidates, float("-inf"))
    idx = top_blocks(scores, top) if top else mass_blocks(scores, mass / 100.0)
    if idx.shape[-1] < (top or scores.shape[-1]):  # fewer key blocks than the budget
        idx = torch.nn.functional.pad(idx, (0, (top or scores.shape[-1]) - idx.shape[-1]), value=-1)
    return idx.contiguous(), (idx >= 0).sum(-1).to(torch.int32)


def reference_selection(
    spec: SelectSpec, q: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen blocks of one selection rule, in plain torch."""
    return choose(block_logmass(spec, q, k, scale), candidates, spec.top, spec.mass)


def chosen_matrix(indices: torch.Tensor, counts: torch.Tensor, n_kblocks: int) -> torch.Tensor:
    """Index lists as booleans `[B, H_KV, n_qblocks, n_kblocks]` (entries past the count and -1
    pads ignored)."""
    slots = torch.arange(indices.shape[-1], device=indices.device)
    valid = (indices >= 0) & (slots < counts[..., None]) & (indices < n_kblocks)
    out = torch.zeros((*indices.shape[:-1], n_kblocks + 1), dtype=torch.bool, device=indices.device)
    out.scatter_(-1, torch.where(valid, indices, n_kblocks).long(), True)
    return out[..., :n_kblocks]
