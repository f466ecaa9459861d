"""Plans for attention over several devices, as data: what each rank computes and what moves.

Context parallelism. The sequence is cut into segments of queries; rank r owns the queries
and the keys/values of its segments. Two layouts are candidates: `contiguous` (R equal
segments) and `zigzag` (2R segments, rank r holding segments r and 2R - 1 - r, which evens
out causal work). The work of a rank is the exact number of allowed pairs in its rows
(`count.count_pairs` of the pattern restricted to those queries); the layout with the least
maximum work wins, and among layouts within BALANCE_SLACK of it the one that moves the
fewest keys (a sink + window pattern is balanced either way and moves far less contiguous).

What moves is exact, key by key: the keys a segment's queries may attend to come from the exact
block map (`blocks.block_map`), its partial tiles enumerated pair by pair where they decide a
key (`needed_keys`), so sink(S) | window(W) needs the S sinks and the
W keys before the segment, a chunked pattern whose chunks align with the segments needs
nothing, and a dilated pattern needs its sparse ranges. Each rank receives the keys it needs
that other ranks own, from their owners; a ring pass (or an all-gather) moves every key to
every rank. Bytes per key: keys and values, kv_heads x head_dim elements each, per batch entry.
A selecting group's plan adds its run-time part (`plan_selection`): what its scores read, exactly,
and a bound of the chosen blocks' keys.

Head parallelism. Query heads are assigned to ranks whole KV head by whole KV head (a GQA
group stays together, as tensor-parallel projections shard them), balancing each rank's
predicted kernel time: the simulator's SM time per head (`simulate`), so that a DuoAttention
mix puts its expensive full heads on different ranks. The plan lists the heads of each rank
and the head order that makes each rank's heads one contiguous shard of the projections, which
is what a DTensor `Shard(0)` / Hugging Face `colwise` plan of q/k/v_proj (and `rowwise` of
o_proj) cuts.

This module is data only: the runtime (runtime/distributed.py) moves tensors with
torch.distributed by these plans.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from dataclasses import replace as dataclasses_replace
from functools import reduce
from typing import Any

import numpy as np

from .algebra import conjoin
from .blocks import block_map
from .count import count_pairs
from .ir import Lit, Pattern, QRange, Status, Term

Range = tuple[int, int]  # half-open [start, stop)
LAYOUTS = ("contiguous", "zigzag")
BALANCE_SLACK = 0.05  # layouts within 5% of the best maximum work compete on bytes moved
ALIGN = 128  # segment boundaries are multiples of this (the kernel's widest key tile)


# ----------------------------------------------------------------------------- ranges
def merge_ranges(ranges) -> tuple[Range, ...]:
    """Sorted, disjoint, non-adjacent ranges covering the same positions."""
    out: list[list[int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def intersect_ranges(xs, ys) -> tuple[Range, ...]:
    """Positions in both unions of ranges."""
    return merge_ranges((max(a, c), min(b, d)) for a, b in xs for c, d in ys if min(b, d) > max(a, c))


def subtract_ranges(xs, ys) -> tuple[Range, ...]:
    """Positions of xs not in ys."""
    out = []
    for a, b in merge_ranges(xs):
        for c, d in merge_ranges(ys):
            if d <= a or c >= b:
                continue
            if c > a:
                out.append((a, c))
            a = max(a, d)
        if a < b:
            out.append((a, b))
    return merge_ranges(out)


def range_length(xs) -> int:
    return sum(b - a for a, b in xs)


def _runs(mask: np.ndarray, offset: int = 0) -> tuple[Range, ...]:
    """The runs of True in a boolean vector as ranges."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return tuple((int(a) + offset, int(b) + offset) for a, b in zip(edges[::2], edges[1::2]))


# ----------------------------------------------------------------------------- context
def segments_of(layout: str, n: int, ranks: int, align: int = ALIGN) -> tuple[tuple[Range, ...], ...]:
    """The query (and owned key) ranges of each rank: `contiguous` R equal pieces, `zigzag`
    2R pieces with rank r holding pieces r and 2R - 1 - r; inner boundaries are multiples of
    `align` (the last piece takes the remainder)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    pieces = ranks if layout == "contiguous" else 2 * ranks
    cuts = [0] + [min(n, round(i * n / pieces / align) * align) for i in range(1, pieces)] + [n]
    piece = [(cuts[i], cuts[i + 1]) for i in range(pieces)]
    if layout == "contiguous":
        return tuple((piece[r],) for r in range(ranks))
    return tuple(merge_ranges((piece[r], piece[pieces - 1 - r])) for r in range(ranks))


def rows_pattern(pattern: Pattern, a: int, b: int) -> Pattern:
    """The pattern restricted to queries a..b-1."""
    rows = Term((Lit(QRange(a, b - 1)),))
    return Pattern(tuple(t for t in (conjoin(term, rows) for term in pattern.terms) if t is not None))


def row_pairs(pattern: Pattern, n: int, ranges) -> int:
    """Allowed pairs (exactly) of the queries in `ranges`, for n queries and n keys."""
    return sum(count_pairs(rows_pattern(pattern, a, b), n) for a, b in ranges if b > a)


EXACT_BUDGET = 1 << 26  # pairs enumerated to refine partial tiles key by key; beyond it, whole tiles


def needed_keys(pattern: Pattern, n: int, cuts: list[int], budget: int = EXACT_BUDGET) -> tuple[list, bool]:
    """For each piece cuts[i]..cuts[i+1] of queries, the keys some query of it may attend to,
    and whether they are exact. From the exact block map at tiles of A x A (A divides every
    cut): a key tile is needed whole when one of the piece's tiles in its column is full,
    not at all when all are empty; otherwise its partial tiles are enumerated pair by pair,
    one row of tiles per round for the columns still missing keys, until `budget` pairs
    (then the rest of such columns is taken whole, and the result is not exact)."""
    a = reduce(math.gcd, cuts[1:], ALIGN)
    fine = block_map(pattern, n, a, a).status
    spent, exact, out = 0, True, []
    offs = np.arange(a, dtype=np.int64)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        rows = fine[lo // a : -(-hi // a)]
        whole = (rows == Status.ALL).any(axis=0)
        part = np.flatnonzero((rows == Status.SOME).any(axis=0) & ~whole)
        keys = np.repeat(whole, a)[:n]
        order = [np.flatnonzero(rows[:, j] == Status.SOME) for j in part]
        pending = list(range(len(part)))
        step = 0
        while pending:
            if spent > budget:
                exact = False
                for i in pending:
                    keys[part[i] * a : (part[i] + 1) * a] = True
                break
            cols = np.array([part[i] for i in pending])
            q = (lo // a + np.array([order[i][step] for i in pending])) * a
            qq = q[:, None, None] + offs[None, :, None]
            kk = cols[:, None, None] * a + offs[None, None, :]
            hit = (np.asarray(pattern.holds(qq, kk), dtype=bool) & (qq < hi) & (kk < n)).any(axis=1)
            spent += hit.size * a
            for c, h in zip(cols, hit):
                keys[c * a : c * a + a] |= h[: n - c * a]
            step += 1
            pending = [i for i in pending if step < len(order[i]) and not keys[part[i] * a : part[i] * a + a].all()]
        out.append(_runs(keys))
    return out, exact


@dataclass(frozen=True)
class ContextPlan:
    """Context parallelism over `ranks` ranks for n tokens (see the module docstring).

    segments[r]: rank r's queries and owned keys; work[r]: its allowed pairs; needs[r]: the
    keys its queries may attend to; transfers: (src, dst, start, stop), keys start..stop-1
    that src sends to dst; pieces[r]: (q_start, q_stop, k_start, k_stop) of the attention
    calls rank r makes, each over one of its query segments and one contiguous key range
    (owned ranges first, so that they can run while remote keys are in flight), only those
    with an allowed pair (the keys a call reads outside `needs` are masked: zeros suffice)."""

    n: int
    ranks: int
    layout: str
    segments: tuple[tuple[Range, ...], ...]
    work: tuple[int, ...]
    needs: tuple[tuple[Range, ...], ...]
    transfers: tuple[tuple[int, int, int, int], ...]
    pieces: tuple[tuple[tuple[int, int, int, int], ...], ...]
    exact: bool = True  # needs are exact key by key (else whole tiles where enumeration was too dear)
    selection: dict | None = None  # a selecting group's run-time part (plan_selection), None for a static one

    def received_keys(self, rank: int) -> int:
        """Keys the rank receives before attending: the static part's, and a selection's estimate ranges."""
        return sum(b - a for s, d, a, b in self.all_transfers if d == rank)

    def sent_keys(self, rank: int) -> int:
        return sum(b - a for s, d, a, b in self.all_transfers if s == rank)

    @property
    def all_transfers(self) -> tuple[tuple[int, int, int, int], ...]:
        """The static part's transfers, then those a selection's scores need (raw-key scores)."""
        extra = tuple(tuple(t) for t in self.selection["transfers"]) if self.selection else ()
        return tuple(self.transfers) + extra

    def ring_received_keys(self, rank: int) -> int:
        """A ring pass (or all-gather): every key this rank does not own."""
        return self.n - range_length(self.segments[rank])

    def ring_sent_keys(self, rank: int) -> int:
        return range_length(self.segments[rank]) * (self.ranks - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_bytes(kv_heads: int, head_dim: int, dtype_bytes: int = 2, batch: int = 1) -> int:
    """Bytes moved per key position: its key and its value."""
    return 2 * kv_heads * head_dim * dtype_bytes * batch


def plan_layout(pattern: Pattern, n: int, ranks: int, layout: str, align: int = ALIGN) -> ContextPlan:
    """The context plan of one layout."""
    segments = segments_of(layout, n, ranks, align)
    cuts = sorted({0, n} | {x for segs in segments for s in segs for x in s})
    needed, exact = needed_keys(pattern, n, cuts)
    per_piece = dict(zip(zip(cuts[:-1], cuts[1:]), needed))
    needs, transfers, pieces = [], [], []
    for r, segs in enumerate(segments):
        mine = [per_piece[p] for p in per_piece if any(a <= p[0] and p[1] <= b for a, b in segs)]
        need = merge_ranges(x for m in mine for x in m)
        needs.append(need)
        for src, theirs in enumerate(segments):
            if src != r:
                transfers += [(src, r, a, b) for a, b in intersect_ranges(need, theirs)]
        keys = list(segs) + list(subtract_ranges([(0, n)], segs))
        calls = []
        for qa, qb in segs:
            seg_need = merge_ranges(x for p, m in per_piece.items() if qa <= p[0] and p[1] <= qb for x in m)
            calls += [(qa, qb, ka, kb) for ka, kb in keys if intersect_ranges(seg_need, [(ka, kb)])]
        pieces.append(tuple(calls))
    work = tuple(row_pairs(pattern, n, segs) for segs in segments)
    return ContextPlan(n, ranks, layout, segments, work, tuple(needs), tuple(transfers), tuple(pieces), exact)


def plan_contexts(
    patterns, n: int, ranks: int, layout: str | None = None, align: int = ALIGN, whole: bool = False
) -> tuple[ContextPlan, ...]:
    """Context plans of several head groups, (pattern, heads using it) each, sharing one layout
    (the tokens are cut once): the given one, or the best (least maximum work summed over the
    groups by their heads; within BALANCE_SLACK of it, fewest keys moved). `whole`: only
    layouts that give every rank tokens (a selection's blocks must not be cut)."""
    if ranks < 1 or n < ranks:
        raise ValueError(f"context parallelism needs 1 <= ranks <= n, got ranks={ranks}, n={n}")
    names = LAYOUTS if layout is None else (layout,)
    if whole:
        names = tuple(x for x in names if all(range_length(s) for s in segments_of(x, n, ranks, align)))
        if not names:
            raise ValueError(
                f"context parallelism of a selecting pattern cuts the sequence at multiples of its selection "
                f"block ({align} with the kernel's tile): N = {n} is too short to give each of {ranks} ranks "
                f"{'a piece' if layout != 'zigzag' else 'two pieces'}; use fewer ranks or a longer sequence"
            )
    options = [tuple(plan_layout(p, n, ranks, name, align) for p, _ in patterns) for name in names]

    def work(plans) -> int:
        return max(sum(w * pl.work[r] for pl, (_, w) in zip(plans, patterns)) for r in range(ranks))

    def moved(plans) -> int:
        return sum(w * pl.received_keys(r) for pl, (_, w) in zip(plans, patterns) for r in range(ranks))

    best = min(work(o) for o in options)
    return min((o for o in options if work(o) <= best * (1 + BALANCE_SLACK)), key=moved)


def plan_context(pattern: Pattern, n: int, ranks: int, layout: str | None = None, align: int = ALIGN) -> ContextPlan:
    """The context plan of one pattern (see plan_contexts)."""
    return plan_contexts([(pattern, 1)], n, ranks, layout, align)[0]


def program_contexts(program: Any, n: int, ranks: int, layout: str | None = None, align: int = ALIGN):
    """One context plan per head group of a program, sharing one layout. A program that selects
    key blocks cuts its segments at multiples of every selection block too, and its selecting
    groups' plans carry their run-time part (plan_selection)."""
    blocks = [g.selection.atom.block for g in program.groups if g.selection is not None]
    align = math.lcm(align, *blocks)
    plans = plan_contexts([(g.pattern, len(g.members)) for g in program.groups], n, ranks, layout, align, bool(blocks))
    return tuple(p if g.selection is None else plan_selection(p, g) for p, g in zip(plans, program.groups))


# ----------------------------------------------------------------------------- selection
SUMMARY_SLOTS = {"mean": 1, "quest": 2}  # float32 vectors per key block that a score reads (key_summary)


def _blocks_of(segments, block: int, n: int) -> list[int]:
    """The selection blocks (query or key) of a rank's segments, whose bounds are multiples of block or n."""
    return [i for a, b in segments for i in range(a // block, -(-b // block))]


def _block_ranges(blocks, block: int, n: int) -> tuple[Range, ...]:
    return merge_ranges((int(i) * block, min(n, (int(i) + 1) * block)) for i in blocks)


def plan_selection(plan: ContextPlan, group: Any) -> ContextPlan:
    """A selecting group's context plan with its run-time part (`selection`), from the static
    plan: what the scores need and the most the chosen blocks can move, per rank.

    `mean` and `quest` read key block summaries (SUMMARY_SLOTS float32 vectors of head_dim per
    block and KV head): every rank sends its blocks' summaries to every other ("summaries"),
    chooses for its query blocks, then fetches the keys of its chosen blocks that it does not
    hold (owned or received for the static part). Per rank that is at most `top` blocks per
    query block (Σ min(top, candidates)), and never more than its candidates' keys it does not
    hold (`reach`, a mass budget's bound). `antidiagonal` reads every candidate block's keys:
    they move before the choice (`transfers`, exact), and nothing after; `vslash` reads every
    key and the sequence's last `last` queries: every key moves to every rank, and those
    queries from their owners (`q_last`: (owner, start, stop) each)."""
    from .plan import plan_select
    from .selection import candidate_matrix

    atom, n, block = group.selection.atom, plan.n, group.selection.atom.block
    for r, segs in enumerate(plan.segments):
        if any(a % block or (b % block and b != n) for a, b in segs):
            raise ValueError(f"rank {r}'s tokens {segs} do not start and end on selection blocks of {block}")
    cand = candidate_matrix(plan_select(group.pattern, group.selection), n)
    transfers, bound, reach, q_last = [], [], [], ()
    for r, segs in enumerate(plan.segments):
        rows = _blocks_of(segs, block, n)
        held = merge_ranges([*segs, *((a, b) for s, d, a, b in plan.transfers if d == r)])
        wanted = _block_ranges(np.flatnonzero(cand[rows].any(0)), block, n)
        if atom.score == "vslash":
            wanted = ((0, n),)
        missing = subtract_ranges(wanted, held)
        if atom.score in SUMMARY_SLOTS:
            reach.append(range_length(missing))
            per_row = cand[rows].sum(1)
            chosen = per_row if atom.mass else np.minimum(per_row, atom.top)
            bound.append(int(min(reach[-1], int(chosen.sum()) * block)))
            continue
        reach.append(0)
        bound.append(0)
        for src, theirs in enumerate(plan.segments):
            transfers += [(src, r, a, b) for a, b in intersect_ranges(missing, theirs) if src != r]
    if atom.score == "vslash":
        rows = ((max(0, n - atom.last), n),)
        q_last = tuple((r, a, b) for r, segs in enumerate(plan.segments) for a, b in intersect_ranges(rows, segs))
    return dataclasses_replace(plan, selection={
        "block": block, "score": atom.score, "top": atom.top, "mass": atom.mass,
        "route": "summaries" if atom.score in SUMMARY_SLOTS else "keys",
        "slots": SUMMARY_SLOTS.get(atom.score, 0), "transfers": tuple(transfers), "q_last": q_last,
        "bound": tuple(bound), "reach": tuple(reach),
    })  # fmt: skip


def summary_blocks(plan: ContextPlan, rank: int) -> tuple[int, int]:
    """(sent, received) key block summaries of a rank: its blocks to every other rank, every other block to it."""
    if not plan.selection or plan.selection["route"] != "summaries":
        return 0, 0
    mine = len(_blocks_of(plan.segments[rank], plan.selection["block"], plan.n))
    return mine * (plan.ranks - 1), -(-plan.n // plan.selection["block"]) - mine


# ----------------------------------------------------------------------------- heads
@dataclass(frozen=True)
class HeadPlan:
    """Query heads per rank (whole GQA groups), with their predicted time per rank (ms)."""

    heads: tuple[tuple[int, ...], ...]
    kv_heads: tuple[tuple[int, ...], ...]
    times: tuple[float, ...]

    @property
    def order(self) -> list[int]:
        """Query heads rank by rank: permuting q_proj's output heads (and o_proj's input heads)
        into this order makes each rank's heads one contiguous, equal shard."""
        return [h for hs in self.heads for h in hs]

    @property
    def kv_order(self) -> list[int]:
        """KV heads rank by rank, for k_proj and v_proj."""
        return [h for hs in self.kv_heads for h in hs]

    @property
    def imbalance(self) -> float:
        """Slowest rank's predicted time over the fastest's, minus 1."""
        return max(self.times) / min(self.times) - 1 if min(self.times) > 0 else math.inf

    def tp_plan(self, prefix: str = "layers.*.self_attn") -> dict[str, str]:
        """A Hugging Face `base_model_tp_plan` for the attention projections, valid once the
        projections' heads are permuted into `order` / `kv_order` (each rank then holds its
        heads as one colwise shard: DTensor Shard(0) of q/k/v_proj, Shard(1) of o_proj)."""
        return {f"{prefix}.{p}_proj": "colwise" for p in "qkv"} | {f"{prefix}.o_proj": "rowwise"}


def assign_heads(costs: list[float], kv_group: int, ranks: int) -> HeadPlan:
    """Balance per-query-head costs over ranks in whole GQA groups, each rank taking the same
    number of groups (what an even tensor-parallel shard needs): longest first to the least
    loaded rank with room, then pairwise swaps while they lower the maximum."""
    groups = len(costs) // kv_group
    if groups % ranks:
        raise ValueError(f"{groups} KV heads do not split evenly over {ranks} ranks")
    per_rank = groups // ranks
    cost = [sum(costs[g * kv_group : (g + 1) * kv_group]) for g in range(groups)]
    bins: list[list[int]] = [[] for _ in range(ranks)]
    load = [0.0] * ranks
    for g in sorted(range(groups), key=lambda g: (-cost[g], g)):
        r = min((r for r in range(ranks) if len(bins[r]) < per_rank), key=lambda r: (load[r], r))
        bins[r].append(g)
        load[r] += cost[g]
    improved = True
    while improved:
        improved = False
        hi = max(range(ranks), key=lambda r: load[r])
        for lo in sorted(range(ranks), key=lambda r: load[r]):
            for i, a in enumerate(bins[hi]):
                for j, b in enumerate(bins[lo]):
                    delta = cost[a] - cost[b]
                    if 0 < delta and max(load[hi] - delta, load[lo] + delta) < load[hi] - 1e-12:
                        bins[hi][i], bins[lo][j] = b, a
                        load[hi] -= delta
                        load[lo] += delta
                        improved = True
                        break
                if improved:
                    break
            if improved:
                break
    kv = tuple(tuple(sorted(b)) for b in bins)
    heads = tuple(tuple(h for g in b for h in range(g * kv_group, (g + 1) * kv_group)) for b in kv)
    return HeadPlan(heads, kv, tuple(load))


def head_costs(program: Any, shape: Any, profile: Any = "h100", layer: int = 0) -> list[float]:
    """Predicted kernel time of each query head of `layer` (ms of the whole device: the head's
    programs' tile costs over the device's slots), from the simulator's tile model."""
    from . import simulate as sim

    prof = sim.load_profile(profile)
    plans = sim._plans(program)
    gids = sim.head_patterns(program, shape.heads, layer)
    out: dict[int, float] = {}
    for g in set(gids):
        cfg = sim.kernel_config(program, shape.head_dim, shape.dtype, prof.capability, g, shape.n)
        feats, count = sim.Launch((sim.kernel_tiles(plans[g], shape.n, cfg),), shape.batch).programs()
        costs = prof.kernel("attnc").lookup(shape.head_dim, shape.dtype, cfg.bm, cfg.bn, prof.dtype_scale)
        slots = prof.sms * costs.slots_per_sm
        out[g] = float(((feats @ costs.unit(cfg.bn_narrow)) * count).sum() / slots / 1000.0)
    return [out[g] for g in gids]


def plan_heads(program: Any, shape: Any, ranks: int, profile: Any = "h100", layer: int = 0) -> HeadPlan:
    """Head parallelism for `shape` (simulate.Shape) over `ranks` ranks."""
    return assign_heads(head_costs(program, shape, profile, layer), shape.heads // shape.kv, ranks)


# ----------------------------------------------------------------------------- report
def _ranges_text(xs, limit: int = 3) -> str:
    parts = [f"{a}..{b}" for a, b in xs[:limit]]
    return ", ".join(parts) + (f", +{len(xs) - limit} more" if len(xs) > limit else "") if xs else "-"


def _mib(x: int) -> str:
    return f"{x / 2**20:,.2f} MiB"


def context_rows(plan: ContextPlan, per_key: int, per_block: int = 0, per_query: int = 0) -> list[dict[str, Any]]:
    """One row per rank: its queries, pairs, received and sent keys and bytes, and a ring's.
    A backward pass (training) moves the same bytes in reverse: the dK, dV of every received
    range go back to its owner, so a rank sends backward what it received forward. A selecting
    plan adds `selection` (selection_row; per_block: bytes of one key block's summaries,
    per_query: of one query row, its heads)."""
    rows = [
        {
            "rank": r,
            "queries": [list(s) for s in plan.segments[r]],
            "pairs": plan.work[r],
            "receives_from": {
                s: [[a, b] for x, d, a, b in plan.all_transfers if x == s and d == r]
                for s in range(plan.ranks)
                if any(x == s and d == r for x, d, _, _ in plan.all_transfers)
            },
            "received_bytes": plan.received_keys(r) * per_key,
            "sent_bytes": plan.sent_keys(r) * per_key,
            "backward_sent_bytes": plan.received_keys(r) * per_key,
            "backward_received_bytes": plan.sent_keys(r) * per_key,
            "ring_received_bytes": plan.ring_received_keys(r) * per_key,
            "ring_sent_bytes": plan.ring_sent_keys(r) * per_key,
        }
        for r in range(plan.ranks)
    ]
    if plan.selection:
        for r, row in enumerate(rows):
            row["selection"] = selection_row(plan, r, per_key, per_block, per_query)
            row["backward_sent_bytes"] = row["backward_received_bytes"] = None  # no backward
    return rows


def selection_row(plan: ContextPlan, rank: int, per_key: int, per_block: int, per_query: int) -> dict[str, int]:
    """A selecting plan's bytes for one rank, beyond its static part: the estimate ranges (exact,
    part of received_bytes), block summaries and last queries (exact), and the chosen blocks'
    keys it fetches (at most `chosen_max_received_bytes`: min(top, candidates) blocks per query
    block, within its candidates' keys it does not hold)."""
    sel = plan.selection
    out, into = summary_blocks(plan, rank)
    rows = [(src, b - a) for src, a, b in sel["q_last"]]
    return {
        "estimate_received_bytes": sum(b - a for _, d, a, b in sel["transfers"] if d == rank) * per_key,
        "score_sent_bytes": out * per_block + sum(m * (plan.ranks - 1) for s, m in rows if s == rank) * per_query,
        "score_received_bytes": into * per_block + sum(m for s, m in rows if s != rank) * per_query,
        "chosen_max_received_bytes": sel["bound"][rank] * per_key,
        "candidates_not_held_bytes": sel["reach"][rank] * per_key,
    }


def render_context(plan: ContextPlan, per_key: int, what: str = "", per_block: int = 0, per_query: int = 0) -> str:
    """The context plan as a text table (attnc analyze --ranks); a selecting plan adds its own."""
    total = sum(plan.received_keys(r) for r in range(plan.ranks)) * per_key
    ring = sum(plan.ring_received_keys(r) for r in range(plan.ranks)) * per_key
    ratio = f"{ring / total:,.1f}x fewer bytes than a ring pass" if total else "nothing moves"
    head = (
        f"context parallel over {plan.ranks} ranks, N = {plan.n:,}: {plan.layout} layout, "
        f"pairs per rank max/mean {max(plan.work) / max(1e-9, sum(plan.work) / plan.ranks):.3f}; "
        f"{_mib(total)} moved{' before the choice' if plan.selection else ''}{what}, {ratio}{'' if plan.exact else ' (some ranges rounded to whole tiles)'}; "
        + ("a backward pass moves the same bytes in reverse" if not plan.selection else "no backward pass (selection)")
    )
    lines = [
        head,
        f"{'rank':>4}  {'queries':<24} {'pairs':>16}  {'receives (from rank: keys)':<44} "
        f"{'recv':>12} {'sent':>12} {'ring recv':>12} {'ring sent':>12}",
    ]
    for row in context_rows(plan, per_key):
        src = "; ".join(f"{s}: {_ranges_text([tuple(x) for x in rs])}" for s, rs in row["receives_from"].items())
        lines.append(
            f"{row['rank']:>4}  {_ranges_text(plan.segments[row['rank']]):<24} {row['pairs']:>16,}  {src or '-':<44} "
            f"{_mib(row['received_bytes']):>12} {_mib(row['sent_bytes']):>12} "
            f"{_mib(row['ring_received_bytes']):>12} {_mib(row['ring_sent_bytes']):>12}"
        )
    if plan.selection:
        lines += _render_selection(plan, per_key, per_block, per_query)
    return "\n".join(lines)


def _render_selection(plan: ContextPlan, per_key: int, per_block: int, per_query: int) -> list[str]:
    """The selected part's lines: what the scores move (exact) and the chosen blocks (a bound)."""
    sel = plan.selection
    budget = f"top {sel['top']}" if sel["top"] else f"mass {sel['mass']}%"
    if sel["route"] == "summaries":
        how = (
            f"float32 block summaries ({sel['slots']} x head_dim per block) go to every rank; each rank chooses "
            "for its query blocks, then fetches its chosen blocks' keys it does not hold: "
            + (f"at most {sel['top']} blocks per query block" if sel["top"] else "at most every candidate")
            + ", so `chosen recv` is a bound, the rest exact"
        )
    else:
        what = "every key (and the last queries)" if sel["score"] == "vslash" else "the keys of every candidate block"
        how = f"the estimate reads {what}: they move before the choice (in recv above, exact); the chosen blocks are then held"
    lines = [f"selected part: select({sel['score']}, {budget}, block = {sel['block']}): {how}"]
    lines.append(
        f"{'rank':>4}  {'of recv: estimate':>17} {'scores recv':>12} {'scores sent':>12} {'chosen recv':>16} "
        f"{'all recv':>16} {'ring recv':>12}"
    )
    for r in range(plan.ranks):
        row = selection_row(plan, r, per_key, per_block, per_query)
        total = plan.received_keys(r) * per_key + row["score_received_bytes"] + row["chosen_max_received_bytes"]
        lines.append(
            f"{r:>4}  {_mib(row['estimate_received_bytes']):>17} {_mib(row['score_received_bytes']):>12} "
            f"{_mib(row['score_sent_bytes']):>12} {'<= ' + _mib(row['chosen_max_received_bytes']):>16} "
            f"{'<= ' + _mib(total):>16} {_mib(plan.ring_received_keys(r) * per_key):>12}"
        )
    return lines
