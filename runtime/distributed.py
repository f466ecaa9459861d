"""Attention over several devices, by the compiler's plans, with torch.distributed as the engine
(NCCL on GPUs, gloo on CPUs).

Context parallelism (`context_attention`): each rank holds the tokens of its segments (`shard`
cuts them). The keys and values its queries need from other ranks, exactly the ranges of the
plan (compiler/distributed.py), move with point-to-point operations (`batch_isend_irecv`)
into a buffer of key positions 0 .. N - 1; while they are in flight, the rank attends to its
own keys; then to the received ones; the partial results merge by log-sum-exp. The kernel
is the generated module's `prefill_at` (queries at their positions, one key range per call).
It is differentiable (`_ContextAttention`): the backward keeps the key and value ranges the
forward received, runs the module's `backward_at` on the same parts with the rows' merged
output and log-sum-exp, and returns the gradients of received keys and values to their owners
over the same ranges, in the reverse direction (`context_backward`). A pattern that selects key
blocks (plan["selection"]) also moves what its scores read (key block summaries, or keys),
chooses for its own query blocks with the module's `select_at`, fetches the chosen keys it
lacks from their owners (`_fetch`) and attends them in one more call per segment; no backward.

Head parallelism (`head_attention`): each rank computes the heads the head plan gives it;
`permute_heads` reorders a projection's heads so that each rank's are one contiguous shard.

Plans arrive as compiler.distributed.ContextPlan / HeadPlan objects or as their dicts
(`to_dict`, JSON), so that a GPU machine without the compiler's dependencies can run them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist


def _plan(plan: Any) -> dict[str, Any]:
    return plan.to_dict() if hasattr(plan, "to_dict") else plan


def _local(plan: dict, rank: int) -> list[tuple[int, int, int]]:
    """(start, stop, offset in the rank's local tokens) of each of its segments."""
    out, at = [], 0
    for a, b in plan["segments"][rank]:
        out.append((a, b, at))
        at += b - a
    return out


def _at(segments: list[tuple[int, int, int]], a: int, b: int) -> int:
    """The local offset of positions a..b-1, which lie in one of the rank's segments."""
    return next(o + a - s for s, e, o in segments if s <= a and b <= e)


def shard(x: torch.Tensor, plan: Any, rank: int, dim: int = 2) -> torch.Tensor:
    """The rank's tokens of a whole-sequence tensor: its segments, concatenated along `dim`."""
    plan = _plan(plan)
    return torch.cat([x.narrow(dim, a, b - a) for a, b in plan["segments"][rank]], dim=dim)


def unshard(parts: list[torch.Tensor], plan: Any, dim: int = 2) -> torch.Tensor:
    """The whole sequence from every rank's tokens (the inverse of `shard`)."""
    plan = _plan(plan)
    pieces = []
    for rank, part in enumerate(parts):
        pieces += [(a, part.narrow(dim, at, b - a)) for a, b, at in _local(plan, rank)]
    return torch.cat([p for _, p in sorted(pieces, key=lambda x: x[0])], dim=dim)


def _rows(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Tokens a..b-1 of a (B, H, n, D) tensor as a contiguous (b - a, B, H, D) block."""
    return t[:, :, a:b].permute(2, 0, 1, 3).contiguous()


def exchange(k: torch.Tensor, v: torch.Tensor, plan: Any, rank: int, group=None, stats: dict | None = None):
    """Start moving the plan's key and value ranges. Returns (keys, values, pending): buffers
    (B, H_KV, N, D) of every position (kept between calls, see _buffers), this rank's own
    tokens in place, the ranges it receives arriving once `wait(pending)` returns (pending also
    keeps the tensors being sent alive until then); `stats` gets the bytes this rank sends and
    receives."""
    plan = _plan(plan)
    raw_k, raw_v = _own_buffers(k, v, plan, rank)
    own = _local(plan, rank)
    sends, recvs = [], []
    for src, dst, a, b in _transfers(plan):
        if src == rank:
            at = _at(own, a, b)
            sends += [(dst, _rows(k, at, at + b - a)), (dst, _rows(v, at, at + b - a))]
        elif dst == rank:
            recvs += [(src, raw_k[a:b]), (src, raw_v[a:b])]
    pending = _start(sends, recvs, group, stats, "")
    return raw_k.permute(1, 2, 0, 3), raw_v.permute(1, 2, 0, 3), pending


def _transfers(plan: dict) -> list:
    """The key ranges that move before attention: the static part's, then a selection's estimate ranges."""
    return list(plan["transfers"]) + list((plan.get("selection") or {}).get("transfers", ()))


def _own_buffers(k: torch.Tensor, v: torch.Tensor, plan: dict, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept (N, B, H_KV, D) key and value buffers with this rank's own tokens in place."""
    B, H, _, D = k.shape
    raw_k, raw_v = _buffers((plan["n"], B, H, D), k.dtype, k.device)
    for a, b, at in _local(plan, rank):
        raw_k[a:b] = _rows(k, at, at + b - a)
        raw_v[a:b] = _rows(v, at, at + b - a)
    return raw_k, raw_v


def _start(sends: list, recvs: list, group, stats: dict | None, prefix: str):
    """Start the point-to-point operations ((peer, tensor) each): the pending handle of `wait`;
    `stats` gets the bytes sent and received under prefix + "sent_bytes", "received_bytes"."""
    ops = [dist.P2POp(dist.isend, t, _global(peer, group), group) for peer, t in sends]
    ops += [dist.P2POp(dist.irecv, t, _global(peer, group), group) for peer, t in recvs]
    if stats is not None:
        for key, pairs in (("sent_bytes", sends), ("received_bytes", recvs)):
            stats[prefix + key] = stats.get(prefix + key, 0) + sum(t.numel() * t.element_size() for _, t in pairs)
    return (dist.batch_isend_irecv(ops) if ops else [], ops)


def wait(pending) -> None:
    """Wait for the transfers that `exchange` started."""
    for request in pending[0]:
        request.wait()


_BUFFERS: dict = {}


def _buffers(shape: tuple, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value buffers of every position, zeroed once and kept: a later call overwrites
    the ranges it moves, and what else they hold (zeros, or keys of an earlier call) is finite
    and masked, which is all the kernel asks of keys no query may attend to."""
    key = (shape, dtype, str(device))
    if key not in _BUFFERS:
        _BUFFERS[key] = (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
    return _BUFFERS[key]


def release_buffers() -> None:
    """Free the kept key and value buffers."""
    _BUFFERS.clear()


def _global(rank: int, group) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def merge(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor):
    """Two partial attentions of the same queries over disjoint keys, merged by their
    log-sum-exps: (out, lse) in float32. Rows without keys in either stay 0 with lse -inf."""
    m = torch.maximum(l1, l2)
    safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w1, w2 = torch.exp(l1 - safe), torch.exp(l2 - safe)
    total = w1 + w2
    out = (o1.float() * w1[..., None] + o2.float() * w2[..., None]) / torch.where(total > 0, total, 1)[..., None]
    return out, torch.where(total > 0, safe + torch.log(total), m)


def context_attention(
    mod: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: Any,
    *,
    rank: int | None = None,
    group=None,
    scale: float | None = None,
    layer: int | None = None,
    heads: list[int] | None = None,
    config: dict | None = None,
    attend: Callable | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's queries (q, k, v: its tokens, as `shard` cuts them, (B, H, n, D)
    and (B, H_KV, n, D)) over the whole sequence's allowed keys: (out in q's dtype, lse).

    Own keys are attended while the planned ranges move; the rest after they arrive. `heads`:
    the model's query heads q holds (a head group's, with their KV heads in k, v), as in
    prefill_at. `attend`: the function run on each part (default mod.prefill_at; the module's
    `reference` has the same signature). `stats`: bytes moved and the time of each phase
    (`local_s`, `wait_s`, `remote_s`, measured on the host after synchronising).

    Differentiable in q, k, v (out and lse) when an input requires grad: the backward
    (`context_backward`, the module's backward_at kernels whatever `attend` is) moves the
    gradients of the received keys and values back to their owners, the forward's bytes again;
    its stats are the same names prefixed `backward_`."""
    plan = _plan(plan)
    rank = dist.get_rank(group) if rank is None else rank
    kw = dict(scale=scale, layer=layer, heads=heads)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        if plan.get("selection"):
            raise NotImplementedError(
                "context_attention: patterns that select key blocks at run time have no backward (prefill on one "
                "device has none either); run them under torch.no_grad() or detach q, k, v"
            )
        return _ContextAttention.apply(q, k, v, mod, plan, rank, group, kw, config, attend, stats)
    out, lse, _ = _forward(mod, q, k, v, plan, rank, group, kw, config, attend, stats)
    return out, lse


def _forward(mod, q, k, v, plan: dict, rank: int, group, kw: dict, config, attend, stats):
    """context_attention's work: (out, lse, (keys, values)), the last the (N, B, H_KV, D)
    buffers that hold the received ranges."""
    attend = attend or mod.prefill_at
    if config is not None:
        kw = dict(kw, config=config)
    if attend is getattr(mod, "reference", None):
        kw = dict(kw, return_lse=True)
    clock = _Clock(q.device, stats)
    keys, values, pending = exchange(k, v, plan, rank, group, stats)
    scores = _start_scores(mod, q, k, plan, rank, group, kw, stats) if plan.get("selection") else None
    segments = _local(plan, rank)
    acc: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    own = {tuple(s) for s in plan["segments"][rank]}
    for phase in ("local", "remote"):
        if phase == "remote":
            wait(pending)
            clock.lap("wait_s")
            if scores is not None:
                chosen, fetch = _choose_and_fetch(mod, q, k, v, keys, values, plan, rank, group, kw, stats, scores)
                clock.lap("select_s")
        for qa, qb, ka, kb in plan["pieces"][rank]:
            if ((ka, kb) in own) != (phase == "local"):
                continue
            at = _at(segments, qa, qb)
            o, lse = attend(q[:, :, at : at + qb - qa], keys, values, q_offset=qa, k_range=(ka, kb), **kw)
            acc[at] = merge(*acc[at], o, lse) if at in acc else (o.float(), lse)
        clock.lap(f"{phase}_s")
    if scores is not None:  # the chosen blocks' pairs, once the fetched keys are in
        _land(fetch)
        clock.lap("fetch_wait_s")
        for (qa, qb, at), indices in zip(segments, chosen):
            o, lse = attend(
                q[:, :, at : at + qb - qa], keys, values, q_offset=qa, k_range=(0, 0), indices=indices, **kw
            )
            acc[at] = merge(*acc[at], o, lse) if at in acc else (o.float(), lse)
        clock.lap("selected_s")
    out = q.new_zeros(q.shape)
    lse = torch.full(q.shape[:3], float("-inf"), device=q.device)
    for at, (o, l) in acc.items():
        out[:, :, at : at + o.shape[2]] = o.to(q.dtype)
        lse[:, :, at : at + o.shape[2]] = l
    return out, lse, (keys.permute(2, 0, 1, 3), values.permute(2, 0, 1, 3))


def _start_scores(mod, q, k, plan: dict, rank: int, group, kw: dict, stats) -> tuple:
    """Start moving what a selection's scores need besides keys (plan["selection"]): every
    rank's key block summaries to every other (route "summaries": mod.block_summary of each
    own segment, float32), or the sequence's last queries to every rank (vslash). Returns
    (summaries (B, H_KV, n_kblocks, S, D) or None, last queries (B, H, L, D) or None, pending)."""
    sel, n = plan["selection"], plan["n"]
    block, nb = sel["block"], -(-plan["n"] // sel["block"])
    others = [r for r in range(plan["ranks"]) if r != rank]
    sends, recvs, summary, q_last = [], [], None, None
    if sel["route"] == "summaries":
        for a, b, at in _local(plan, rank):
            part = mod.block_summary(k[:, :, at : at + b - a], heads=kw["heads"], layer=kw["layer"])
            if summary is None:
                summary = part.new_zeros((nb, *part.shape[:2], *part.shape[3:]))
            summary[a // block : a // block + part.shape[2]] = part.permute(2, 0, 1, 3, 4)
            sends += [(r, summary[a // block : a // block + part.shape[2]]) for r in others]
        for r in others:
            recvs += [(r, summary[a // block : -(-b // block)]) for a, b in plan["segments"][r]]
    if sel["q_last"]:
        lo = min(a for _, a, _ in sel["q_last"])
        q_last = q.new_empty((n - lo, q.shape[0], q.shape[1], q.shape[3]))
        for src, a, b in sel["q_last"]:
            if src == rank:
                at = _at(_local(plan, rank), a, b)
                q_last[a - lo : b - lo] = _rows(q, at, at + b - a)
                sends += [(r, q_last[a - lo : b - lo]) for r in others]
            else:
                recvs.append((src, q_last[a - lo : b - lo]))
    pending = _start(sends, recvs, group, stats, "score_")
    return summary, q_last, pending


def _choose_and_fetch(mod, q, k, v, keys, values, plan: dict, rank: int, group, kw: dict, stats, scores) -> tuple:
    """Each own segment's chosen blocks (mod.select_at, the module's own rule), and the start
    of fetching the chosen keys this rank does not hold (route "summaries"; the "keys" route
    holds every candidate already): ([(indices, counts)] per segment, pending)."""
    summary, q_last, pending = scores
    wait(pending)
    summary = None if summary is None else summary.permute(1, 2, 0, 3, 4)
    q_last = None if q_last is None else q_last.permute(1, 2, 0, 3)
    opts = dict(heads=kw["heads"], scale=kw["scale"], layer=kw["layer"], summary=summary, q_last=q_last)
    chosen = [mod.select_at(q[:, :, at : at + b - a], keys, q_offset=a, **opts) for a, b, at in _local(plan, rank)]
    if plan["selection"]["route"] != "summaries":
        return chosen, ([], ([], [], None, None))
    return chosen, _fetch(chosen, k, v, keys, values, plan, rank, group, stats)


def _held(plan: dict, rank: int, device) -> torch.Tensor:
    """(N,) booleans: the keys a rank holds before choosing (its own, and those moved to it)."""
    held = torch.zeros(plan["n"], dtype=torch.bool, device=device)
    for a, b in plan["segments"][rank]:
        held[a:b] = True
    for _, dst, a, b in _transfers(plan):
        if dst == rank:
            held[a:b] = True
    return held


def _rows_of(ids: torch.Tensor, missing: torch.Tensor, shape: tuple, block: int):
    """(batch, KV head, position) of the keys that requests `ids` ((b * H_KV + h) * n_kblocks +
    block each) fetch: the block's keys that `missing` (N,) marks, for that batch entry and head."""
    B, H_KV, nb = shape
    n = missing.shape[0]
    pos = (ids % nb)[:, None] * block + torch.arange(block, device=ids.device)[None, :]
    ok = (pos < n) & missing[pos.clamp(max=n - 1)]
    bh = (ids // nb)[:, None].expand_as(pos)[ok]
    return bh // H_KV, bh % H_KV, pos[ok]


def _fetch(chosen: list, k, v, keys, values, plan: dict, rank: int, group, stats) -> tuple:
    """Request from each owner the keys of this rank's chosen blocks that it does not hold, per
    (batch entry, KV head, block): the numbers of requests and their ids move first
    (`request_` bytes, 8 per id), then the owners start sending the keys and values
    (`select_` bytes) into the key buffers; returns their pending handle."""
    sel, n, ranks = plan["selection"], plan["n"], plan["ranks"]
    block, nb = sel["block"], -(-n // sel["block"])
    B, H_KV = k.shape[:2]
    device = k.device
    want = torch.zeros((B, H_KV, nb + 1), dtype=torch.bool, device=device)
    for idx, cnt in chosen:
        valid = torch.arange(idx.shape[-1], device=device) < cnt[..., None]
        want.scatter_(2, torch.where(valid, idx, nb).long().flatten(2), True)
    mine = ~_held(plan, rank, device)
    missing_blocks = torch.nn.functional.pad(mine, (0, nb * block - n)).view(nb, block).any(1)
    owner = torch.empty(nb, dtype=torch.long, device=device)
    for r, segs in enumerate(plan["segments"]):
        for a, b in segs:
            owner[a // block : -(-b // block)] = r
    flat = (want[..., :nb] & missing_blocks).flatten()
    ids = torch.nonzero(flat).flatten()
    others = [r for r in range(ranks) if r != rank]
    asked = {r: ids[owner[ids % nb] == r] for r in others}
    counts = {r: torch.zeros(1, dtype=torch.long, device=device) for r in others}
    wait(_start([(r, torch.tensor([len(asked[r])], device=device)) for r in others],
                [(r, counts[r]) for r in others], group, stats, "request_"))  # fmt: skip
    inbox = {r: torch.empty(int(counts[r]), dtype=torch.long, device=device) for r in others if int(counts[r])}
    wait(_start([(r, asked[r]) for r in others if len(asked[r])], list(inbox.items()), group, stats, "request_"))
    local = torch.full((n,), -1, dtype=torch.long, device=device)
    for a, b, at in _local(plan, rank):
        local[a:b] = torch.arange(at, at + b - a, device=device)
    sends, recvs, places = [], [], []
    for r, theirs in inbox.items():
        bb, hh, pp = _rows_of(theirs, ~_held(plan, r, device), (B, H_KV, nb), block)
        sends += [(r, k[bb, hh, local[pp]].contiguous()), (r, v[bb, hh, local[pp]].contiguous())]
    for r in others:
        if len(asked[r]):
            bb, hh, pp = _rows_of(asked[r], mine, (B, H_KV, nb), block)
            got = [keys.new_empty((len(pp), k.shape[3])) for _ in range(2)]
            recvs += [(r, got[0]), (r, got[1])]
            places.append((bb, hh, pp, got))
    pending = _start(sends, recvs, group, stats, "select_")
    return pending[0], (pending[1], places, keys, values)


def _land(fetch: tuple) -> None:
    """Wait for the fetched keys and values and put them in the key buffers at their (batch, head, position)."""
    wait(fetch)
    _, places, keys, values = fetch[1]
    for bb, hh, pp, (got_k, got_v) in places:
        keys[bb, hh, pp] = got_k
        values[bb, hh, pp] = got_v


def _received(plan: dict, rank: int) -> list[tuple[int, int, int]]:
    """(source rank, start, stop) of each range this rank receives, in the plan's order."""
    return [(src, a, b) for src, dst, a, b in plan["transfers"] if dst == rank]


class _ContextAttention(torch.autograd.Function):
    """context_attention with its backward: the forward keeps its inputs, out, lse and the key
    and value ranges it received (concatenated, the plan's exact ranges: no second transfer)."""

    @staticmethod
    def forward(ctx, q, k, v, mod, plan, rank, group, kw, config, attend, stats):
        out, lse, (raw_k, raw_v) = _forward(mod, q, k, v, plan, rank, group, kw, config, attend, stats)
        ranges = _received(plan, rank)
        kept = [torch.cat([t[a:b] for _, a, b in ranges]) if ranges else t[:0].clone() for t in (raw_k, raw_v)]
        ctx.save_for_backward(q, k, v, out, lse, *kept)
        ctx.set_materialize_grads(False)
        ctx.args = (mod, plan, rank, group, kw, stats)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, kept_k, kept_v = ctx.saved_tensors
        mod, plan, rank, group, kw, stats = ctx.args
        dout = torch.zeros_like(out) if dout is None else dout
        grads = context_backward(mod, dout, q, k, v, out, lse, plan, (kept_k, kept_v), rank=rank, group=group,
                                 dlse=dlse, stats=stats, **kw)  # fmt: skip
        return (*grads, *[None] * 8)


def context_backward(
    mod: Any,
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    plan: Any,
    kept: tuple[torch.Tensor, torch.Tensor],
    *,
    rank: int | None = None,
    group=None,
    scale: float | None = None,
    layer: int | None = None,
    heads: list[int] | None = None,
    dlse: torch.Tensor | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of this rank's tokens for the context attention that gave (out, lse).

    kept: the key and value ranges the forward received (the plan's, concatenated in its
    order). Every attention call of the forward has its backward_at: the calls on received
    keys first, their dK, dV shares summed per key range; those of each received range go
    back to its owner (point-to-point, in k's dtype: the forward's bytes in reverse) while the
    calls on own keys run; then the shares this rank's keys got from other ranks are added.
    dQ accumulates locally. All sums in float32."""
    plan = _plan(plan)
    rank = dist.get_rank(group) if rank is None else rank
    raw_k, raw_v = _own_buffers(k, v, plan, rank)
    at = 0
    for _, a, b in _received(plan, rank):
        raw_k[a:b], raw_v[a:b] = kept[0][at : at + b - a], kept[1][at : at + b - a]
        at += b - a
    keys, values = raw_k.permute(1, 2, 0, 3), raw_v.permute(1, 2, 0, 3)
    segments = _local(plan, rank)
    own = {tuple(s) for s in plan["segments"][rank]}
    dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    dk, dv = (torch.zeros(k.shape, device=k.device, dtype=torch.float32) for _ in range(2))
    shares: dict[tuple[int, int], list[torch.Tensor]] = {}
    clock = _Clock(q.device, stats)
    for phase in ("remote", "local"):
        if phase == "local":
            pending, inbox = _return_shares(shares, plan, rank, group, k, stats)
        for qa, qb, ka, kb in plan["pieces"][rank]:
            if ((ka, kb) in own) != (phase == "local"):
                continue
            rows = slice(_at(segments, qa, qb), _at(segments, qa, qb) + qb - qa)
            g = mod.backward_at(dout[:, :, rows], q[:, :, rows], keys, values, out[:, :, rows], lse[:, :, rows],
                                q_offset=qa, k_range=(ka, kb), heads=heads, scale=scale, layer=layer,
                                dlse=None if dlse is None else dlse[:, :, rows])  # fmt: skip
            dq[:, :, rows] += g[0]
            if phase == "local":
                cols = slice(_at(segments, ka, kb), _at(segments, ka, kb) + kb - ka)
                dk[:, :, cols] += g[1]
                dv[:, :, cols] += g[2]
            elif (ka, kb) in shares:
                shares[(ka, kb)][0] += g[1]
                shares[(ka, kb)][1] += g[2]
            else:
                shares[(ka, kb)] = [g[1], g[2]]
        clock.lap(f"backward_{phase}_s")
    wait(pending)
    clock.lap("backward_wait_s")
    for a, b, got_k, got_v in inbox:
        cols = slice(_at(segments, a, b), _at(segments, a, b) + b - a)
        dk[:, :, cols] += got_k.permute(1, 2, 0, 3)
        dv[:, :, cols] += got_v.permute(1, 2, 0, 3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _return_shares(shares: dict, plan: dict, rank: int, group, k: torch.Tensor, stats: dict | None):
    """Start sending each received range's dK, dV shares to its owner (in k's dtype, as
    (keys, B, H_KV, D) blocks, the forward's layout) and receiving the shares of this rank's
    keys that the others computed: (pending, [(start, stop, dk block, dv block)])."""
    B, H, _, D = k.shape
    sends, recvs, inbox = [], [], []
    for src, dst, a, b in plan["transfers"]:
        if dst == rank:
            ka, kb = next(r for r in shares if r[0] <= a and b <= r[1])
            sends += [(src, _rows(t, a - ka, b - ka).to(k.dtype)) for t in shares[(ka, kb)]]
        elif src == rank:
            box = [torch.empty((b - a, B, H, D), device=k.device, dtype=k.dtype) for _ in range(2)]
            recvs += [(dst, t) for t in box]
            inbox.append((a, b, *box))
    return _start(sends, recvs, group, stats, "backward_"), inbox


def context_attention_layer(mod: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans, *, layer=None, **kw):
    """context_attention for a whole layer of a module whose heads use different patterns:
    `plans` holds one plan per head group (compiler.distributed.program_contexts, one layout);
    each group's heads run with its own plan, moving only its KV heads' ranges."""
    members = [{h for l, h in g["members"] if l == (layer or 0)} for g in mod.PATTERN["groups"]]
    used = [g for g, hs in enumerate(members) if hs]
    if len(used) == 1:
        return context_attention(mod, q, k, v, plans[used[0]], layer=layer, **kw)
    per_kv = q.shape[1] // k.shape[1]
    out, lse = torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    for g in used:
        heads = sorted(members[g])
        kv = sorted({h // per_kv for h in heads})
        o, l = context_attention(mod, q[:, heads], k[:, kv], v[:, kv], plans[g], layer=layer, heads=heads, **kw)
        out[:, heads], lse[:, heads] = o, l
    return out, lse


class _Clock:
    """Host-side phase timer (synchronising the device first) into stats; inert without stats."""

    def __init__(self, device: torch.device, stats: dict | None) -> None:
        import time

        self.time, self.device, self.stats = time.perf_counter, device, stats
        self.t = self._now()

    def _now(self) -> float:
        if self.stats is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.time() if self.stats is not None else 0.0

    def lap(self, name: str) -> None:
        if self.stats is not None:
            t = self._now()
            self.stats[name] = self.stats.get(name, 0.0) + t - self.t
            self.t = t


def head_attention(
    mod: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: Any,
    *,
    rank: int | None = None,
    group=None,
    scale: float | None = None,
    layer: int | None = None,
    config: dict | None = None,
    attend: Callable | None = None,
) -> torch.Tensor:
    """This rank's heads of a head-parallel layer: q (B, H_rank, N, D) holds the query heads
    plan.heads[rank] (in that order), k and v their KV heads; the output has q's heads. A
    pattern that selects key blocks chooses them here (mod.select_at over the whole sequence
    of the rank's heads: a KV head's choice needs nothing from other heads)."""
    plan = _plan(plan)
    rank = dist.get_rank(group) if rank is None else rank
    attend = attend or mod.prefill_at
    heads = list(plan["heads"][rank])
    kw = {} if config is None else {"config": config}
    if attend is getattr(mod, "reference", None):
        kw["return_lse"] = True
    if mod.PATTERN["selects"]:
        kw["indices"] = mod.select_at(q, k, heads=heads, scale=scale, layer=layer)
    out, _ = attend(q, k, v, heads=heads, scale=scale, layer=layer, **kw)
    return out


def permute_heads(weight: torch.Tensor, order: list[int], head_dim: int, dim: int = 0) -> torch.Tensor:
    """A projection's weight with its heads (blocks of head_dim along `dim`) in `order`
    (HeadPlan.order for q_proj rows and o_proj columns, kv_order for k_proj and v_proj rows):
    an even tensor-parallel shard of the result holds each rank's planned heads."""
    shape = weight.shape
    w = weight.unflatten(dim, (shape[dim] // head_dim, head_dim))
    return w.index_select(dim, torch.tensor(order, device=weight.device)).flatten(dim, dim + 1)
