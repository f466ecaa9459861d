"""Lossy cache policies: the policy record, the eviction scores, the keep rules, GQA aggregation.

One implementation, used by the generated Cache (inlined into every generated module) and
by the Hugging Face reference backend (runtime/hf.py imports this file). docs/caches.md
defines the rules:

- `Policy` is one (layer, KV head)'s resolved policy: a budget (tokens, or None with an
  adaptive mean), keep rules (the first `sink` positions and the newest `protected_recent`
  ones are never evicted) and a score.
- `SCORERS` is the registry of eviction scores, name -> function; None is no score (the
  oldest unprotected token goes first). A scorer maps the candidates' old scores (new
  tokens at 0) to new ones; lower scores are evicted first.
- `attention_stats` is the attention of an append's queries over the candidates, under the
  pattern's mask, that the scores read (`stats(what)`).
- `priority` and `lowest` are the keep rule: protected tokens get +inf, and the lowest
  (priority, position) go first.
"""

from __future__ import annotations

from typing import Callable

import torch

from .records import Policy


AGGREGATES = {"mean": 0, "max": 1, "sum": 2}  # the kernels' code of each aggregation


def aggregate(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """GQA aggregation of per-query-head scores into one per KV head."""
    if how == "max":
        return x.amax(dim)
    if how == "sum":
        return x.sum(dim)
    return x.mean(dim)


# ------------------------------------------------------------------ scores
# stats(what) -> attention (..., G, E) for "sum" (over the queries) and "last" (the newest
# query), (..., G, w, E) for "window" (the last w queries, keys in position order).
# old: (..., E) scores so far (new tokens at 0); k: (..., E, D); new: the slice of new tokens.


def score_h2o(old, stats, k, new, pol: Policy):
    """H2O: accumulated attention. Each append adds agg_g(sum over its queries)."""
    return old + aggregate(stats("sum"), pol.aggregate, -2)


def score_tova(old, stats, k, new, pol: Policy):
    """TOVA: the attention of the newest query only, replacing older scores."""
    return aggregate(stats("last"), pol.aggregate, -2)


def score_snapkv(old, stats, k, new, pol: Policy):
    """SnapKV: mean attention of the last `window` queries, pooled along positions with a
    centred kernel (avg counts the zero padding, like F.avg_pool1d; max ignores it), then
    agg_g (pooled in position order, returned in the candidates' order)."""
    a = stats("window").mean(-2)
    flat = a.reshape(-1, 1, a.shape[-1])
    kk = pol.kernel
    pool = torch.nn.functional.max_pool1d if pol.pool == "max" else torch.nn.functional.avg_pool1d
    s = aggregate(pool(flat, kk, stride=1, padding=kk // 2).reshape(a.shape), pol.aggregate, -2)
    return torch.empty_like(s).scatter_(-1, stats.order, s)  # back to the candidates' order


def score_key_norm(old, stats, k, new, pol: Policy):
    """Key norm (kvpress KnormPress): score = -||k||, so the largest-norm keys go first and
    the keys with the lowest norm stay."""
    out = old.clone()
    out[..., new] = -k[..., new, :].to(old.dtype).norm(dim=-1)
    return out


SCORERS: dict = {"snapkv": score_snapkv, "h2o": score_h2o, "tova": score_tova, "key_norm": score_key_norm}
NEEDS_QUERIES = frozenset({"h2o", "tova", "snapkv"})  # scores that read the attention of the queries


def rescore(pol: Policy, old, stats, k, new):
    """The policy's new scores of the candidates (zeros without a score)."""
    if pol.score is None:
        return torch.zeros_like(old)
    return SCORERS[pol.score](old, stats, k, new, pol)


# ------------------------------------------------------------------ attention of the queries


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    kpos: torch.Tensor,
    qpos: torch.Tensor,
    allowed: Callable,
    scale: float,
    window: int,
    sentinel: int | None = None,
) -> Callable:
    """stats(what) over candidates k (..., E, D) at positions kpos (..., E) for queries
    q (..., G, T, D) at positions qpos (T,), memoised per `what`; stats.order is the
    permutation that sorts the candidates by position (set by "window").

    allowed(qp, kp) is the pattern's mask: qp (T', 1), kp (..., 1, E) int64 -> bool
    broadcastable to (..., G, T', E); a key at `sentinel` (an empty slot) is never seen.
    Computed in float32 (float64 for float64 keys), in chunks of queries."""
    cache = {}

    def stats(what):
        if what not in cache:
            cache[what] = _attention(q, k, kpos, qpos, allowed, scale, what, window, sentinel, stats)
        return cache[what]

    stats.order = None
    return stats


def _attention(q, k, kpos, qpos, allowed, scale, what, window, sentinel, stats):
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    T = q.shape[-2]
    if what == "last":
        q, qpos = q[..., T - 1 :, :], qpos[T - 1 :]
    elif what == "window":
        w = min(window, T)
        q, qpos = q[..., T - w :, :], qpos[T - w :]
        order = torch.argsort(kpos, dim=-1)
        k = torch.gather(k, -2, order[..., None].expand(*order.shape, k.shape[-1]))
        kpos = torch.gather(kpos, -1, order)
        stats.order = order
    kk = k if k.dtype in (torch.float16, torch.bfloat16) else k.to(ct)  # 16-bit: logits in fp32 accumulation
    kp = kpos.to(torch.int64)[..., None, :]
    G, E = q.shape[-3], k.shape[-2]
    step = max(1, (1 << 25) // max(1, kk[..., 0, 0].numel() * G * E))
    parts, total = [], None
    for s in range(0, q.shape[-2], step):
        qs = q[..., s : s + step, :].to(kk.dtype)
        t = qs.shape[-2]  # the G query heads of a KV head as one matrix: k is read once, not G times
        sc = torch.matmul(qs.reshape(*qs.shape[:-3], G * t, qs.shape[-1]), kk.transpose(-1, -2))
        sc = sc.reshape(*qs.shape[:-1], E).to(ct) * scale
        qp = qpos[s : s + step].to(torch.int64)[:, None]
        ok = allowed(qp, kp)
        if sentinel is not None:
            ok = ok & (kp != sentinel)[..., None, :, :]
        p = torch.softmax(sc.masked_fill(~ok, float("-inf")), dim=-1).nan_to_num(0.0)
        if what == "sum":
            total = p.sum(-2) if total is None else total + p.sum(-2)
        else:
            parts.append(p)
    if what == "sum":
        return total
    p = torch.cat(parts, -2)
    return p[..., -1, :] if what == "last" else p


# ------------------------------------------------------------------ keep rules


def protected(pol: Policy, pos: torch.Tensor, end: int) -> torch.Tensor:
    """Tokens the keep rules protect when the append ends at `end`: the first `sink`
    positions and the newest `protected_recent` ones."""
    return (pos < pol.sink) | (pos >= end - pol.protected_recent)


def priority(pol: Policy, scores: torch.Tensor, pos: torch.Tensor, end: int) -> torch.Tensor:
    """Eviction priority: the scores (zeros without a score), +inf where protected."""
    base = scores if pol.score is not None else torch.zeros_like(scores)
    return base.masked_fill(protected(pol, pos, end), float("inf"))


def lowest(prio: torch.Tensor, pos: torch.Tensor, m: int) -> torch.Tensor:
    """Mask of the m candidates with the lowest (priority, position): ties evict the oldest."""
    o1 = torch.argsort(pos, dim=-1, stable=True)
    o2 = torch.argsort(torch.gather(prio, -1, o1), dim=-1, stable=True)
    order = torch.gather(o1, -1, o2)
    mask = torch.zeros(prio.shape, dtype=torch.bool, device=prio.device)
    return mask.scatter_(-1, order[..., :m], True)


def survivors(prio: torch.Tensor, pos: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` candidates that stay (the others have the lowest (priority,
    position)), in position order: what a compression keeps."""
    key = pos
    if keep < pos.shape[-1]:
        key = torch.where(lowest(prio, pos, pos.shape[-1] - keep), torch.full_like(pos, 1 << 30), pos)
    return torch.argsort(key, dim=-1, stable=True)[..., :keep]


def victim(prio: torch.Tensor, pos: torch.Tensor, sentinel: int) -> torch.Tensor:
    """(..., 1) index of the one candidate a one-token eviction drops: the lowest priority,
    then the lowest position (the rule of lowest(prio, pos, 1), in one pass)."""
    low = torch.where(prio == prio.amin(-1, keepdim=True), pos, torch.full_like(pos, sentinel + 1))
    return low.argmin(-1, keepdim=True)


def evicts_after_read(pol: Policy) -> bool:
    """Whether a decode step of this policy evicts after the step's queries read the cache:
    policies timed at decode whose score reads the step's attention (H2O, TOVA, SnapKV at
    decode). Their scores are that attention (the decode computes it once), so the step's
    queries see the tokens held plus their own (budget + T), and the eviction follows, as in
    H2O's own implementation. Other decode-timed policies evict before the read."""
    return pol.timing == "decode" and pol.score in NEEDS_QUERIES
