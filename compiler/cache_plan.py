"""Cache planning: the store each KV head keeps at decode, and what its budget allows.

A compiler pass over the IR (the pattern of every (layer, query head)) and the resolved
cache policies (`Program.cache`, spec.resolved.CachePolicy records). codegen/decode_plan.py
builds the generated cache manager and decode kernel from it, and the simulator counts
the cache's tokens with it.

Layouts (the lossless store of one KV head, from compiler.liveness's `CacheLayout` of the
union of the patterns of its query heads, mapped onto what the cache manager implements;
docs/caches.md has the formulas):
  dense  every key; capacity grows by doubling, or is `max_len`
  ring   a sink area (keys < sink), column stripes (keys >= sink with k mod m in residues,
         kept for ever) and a ring buffer of the last non-stripe keys that some future
         query of the window can still see
  chunk  the keys of the current chunk of `chunk` tokens (slot = k mod chunk)
`Layout.exact` says the store holds exactly the live keys (then `Layout.tokens(n)` is the
liveness size formula); where a region does not map exactly the store keeps a superset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .ir import Pattern, Program
from .liveness import cache_layout, decodable


class DecodePlanError(ValueError):
    """A cache block that cannot be served, with the policy's location when known."""


def plan_error(policy: Any, message: str) -> DecodePlanError:
    """A DecodePlanError located at the policy's cache rule, when it has a location."""
    loc = getattr(policy, "loc", None)
    return DecodePlanError(f"{loc}: {message}" if loc is not None else message)


@dataclass(frozen=True)
class Layout:
    """The lossless store of one KV head (see the module docstring).

    `exact`: the keys it holds after n tokens are exactly the keys some query at position
    >= n - 1 may still read (compiler.liveness's live set at t = n - 1, plus token n - 1
    itself when a query can see it), so `tokens(n)` is the liveness size formula."""

    kind: str  # "dense" | "ring" | "chunk"
    sink: int = 0
    window: int = 0  # the ring serves queries that see the last `window` positions
    stripe_mod: int = 1  # 1: no stripes
    stripe_res: tuple[int, ...] = ()
    chunk: int = 0
    exact: bool = True
    margin: bool = True  # False: keep rules, whose `recent` is a budget, get no step margin

    def span(self, max_step: int = 1) -> int:
        """Positions the ring must cover: the window, plus max_step - 1 for multi-token steps."""
        return self.window + max_step - 1 if self.window and self.margin else self.window

    def ring_capacity(self, max_step: int = 1) -> int:
        """Slots of the ring: the most non-stripe keys among span(max_step) positions."""
        if self.kind != "ring" or self.window == 0:
            return 0
        span = self.span(max_step)
        if not self.stripe_res:
            return span
        res = set(self.stripe_res)
        m = self.stripe_mod
        fewest = min(sum(((s + i) % m) in res for i in range(span)) for s in range(m))
        return span - fewest

    def stripes_before(self, x: int) -> int:
        """How many stripe residues lie in [0, x)."""
        if not self.stripe_res:
            return 0
        m = self.stripe_mod
        return (x // m) * len(self.stripe_res) + sum(1 for r in self.stripe_res if r < x % m)

    def held(self, n: int, max_step: int = 1) -> list[int]:
        """Positions in the store after n tokens (the plain-Python model of the layout). With
        stripes, the ring may still hold a few keys older than the window (dead, masked)."""
        if self.kind == "dense":
            return list(range(n))
        if self.kind == "chunk":
            return list(range(((n - 1) // self.chunk) * self.chunk, n)) if n else []
        res = set(self.stripe_res)
        sink = list(range(min(n, self.sink)))
        rest = range(self.sink, n)
        stripes = [p for p in rest if p % self.stripe_mod in res] if res else []
        ring = [p for p in rest if not res or p % self.stripe_mod not in res]
        cap = self.ring_capacity(max_step)
        return sorted(sink + stripes + (ring[-cap:] if cap else []))

    def live(self, n: int, max_step: int = 1) -> list[int]:
        """The held positions that a query at position >= n - max_step may still read."""
        if self.kind != "ring" or not self.stripe_res:
            return self.held(n, max_step)
        res, lo = set(self.stripe_res), n - self.span(max_step)
        return [p for p in self.held(n, max_step) if p < self.sink or p % self.stripe_mod in res or p >= lo]

    def tokens(self, n: int, max_step: int = 1) -> int:
        """len(live(n)) in closed form: the size formula of this layout."""
        if self.kind == "dense":
            return n
        if self.kind == "chunk":
            return (n - 1) % self.chunk + 1 if n else 0
        if n <= self.sink:
            return n
        stripes = self.stripes_before(n) - self.stripes_before(self.sink)
        if not self.stripe_res:
            return self.sink + min(n - self.sink, self.ring_capacity(max_step))
        lo = max(self.sink, n - self.span(max_step))
        ring = (n - lo) - (self.stripes_before(n) - self.stripes_before(lo))
        return self.sink + stripes + ring

    @property
    def grows(self) -> bool:
        return self.kind == "dense" or bool(self.stripe_res)

    def describe(self) -> str:
        if self.kind == "dense":
            return "dense"
        if self.kind == "chunk":
            return f"chunk({self.chunk})"
        parts = []
        if self.sink:
            parts.append(f"sink({self.sink})")
        if self.stripe_res:
            parts.append(f"stripes(mod {self.stripe_mod} in {list(self.stripe_res)})")
        if self.window:
            parts.append(f"ring({self.window})")
        return " + ".join(parts) or "empty"


def layout_of(patterns: Iterable[Pattern], max_step: int = 1) -> Layout:
    """The lossless store for a KV head whose query heads use these (causal) patterns: the
    union of compiler.liveness's layouts, mapped onto the three stores the cache manager
    implements (a superset where a region does not map exactly, with exact = False)."""
    patterns = list(patterns)
    layout = None
    for p in patterns:
        layout = cache_layout(p) if layout is None else layout.union(cache_layout(p))
    return _from_liveness(layout, patterns, max_step)


def _diagonal_visible(patterns: list[Pattern]) -> bool:
    """May the query of a token read that token's own key (at some far position)?"""
    t = np.arange(1 << 20, (1 << 20) + 720, dtype=np.int64)
    return any(bool(np.asarray(p.holds(t, t)).any()) for p in patterns)


def _from_liveness(layout: Any, patterns: list[Pattern], max_step: int) -> Layout:
    exact = layout.exact
    sink = window = 0
    chunks: set[int] = set()
    stripes: list[tuple[int, int]] = []
    for r in layout.regions:
        kind = r.kind
        if kind == "full":
            return Layout("dense", exact=exact and r.k_lo == 0 and r.stride == (1, 0) and r.until is None)
        loose = r.until is not None or r.chunk_offset_max is not None or (r.stride[0] > 1 and kind != "stripes")
        if kind == "sink":
            sink = max(sink, r.k_hi + 1)
            loose |= r.k_lo > 0
        elif kind == "ring":
            window = max(window, r.recent + 1)  # the last `recent` keys and the new one
            loose |= r.k_lo > 0 or r.k_hi is not None
        elif kind == "stripes":
            stripes.append(r.stride)
            loose |= r.k_lo > 0
        else:
            chunks.add(r.chunk)
            loose |= r.recent is not None or r.k_lo > 0 or r.k_hi is not None
        exact &= not loose
    if chunks and len(chunks) == 1 and not (sink or window or stripes) and max_step == 1:
        return Layout("chunk", chunk=chunks.pop(), exact=exact)
    if chunks:
        exact = False  # a chunk's keys are among its last `chunk` positions: a ring holds them
        window = max([window, *chunks])
    if window == 0 and _diagonal_visible(patterns):
        window = 1  # the current token, seen only by its own query
    return _ring(sink, window, stripes, exact and max_step == 1)


MAX_STRIPE_PERIOD = 4096  # column stripes with a longer period are kept as a dense store


def _ring(sink: int, window: int, stripes: list[tuple[int, int]], exact: bool) -> Layout:
    mod = 1
    for m, _ in stripes:
        mod = mod * m // math.gcd(mod, m)
    if mod > MAX_STRIPE_PERIOD:  # the store tracks each residue of the period: keep every key instead
        return Layout("dense", exact=False)
    res = tuple(sorted({r2 for m, r in stripes for r2 in range(mod) if r2 % m == r}))
    if res and len(res) == mod:
        return Layout("dense", exact=False)
    return Layout("ring", sink=sink, window=window, stripe_mod=mod if res else 1, stripe_res=res, exact=exact)


def keep_only(layout: Layout, sink: int, recent: int) -> Layout:
    """A cache block with keep rules and no score (StreamingLLM): keep the first `sink` and
    the last `recent` tokens. When the pattern's own store already fits in them nothing is
    lost and the layout stays; otherwise the keep rules are the store (lossy, and the
    kernel masks what the pattern forbids)."""
    if layout.kind == "ring" and not layout.stripe_res and layout.sink <= sink and layout.window <= recent:
        return layout
    if layout.kind == "chunk" and layout.chunk <= recent:
        return layout
    return Layout("ring", sink=sink, window=recent, exact=False, margin=False)


# --------------------------------------------------------------------------- policies


def budget_at(policy: Any, layer: int, layers: int) -> tuple[int | None, int | None]:
    """(budget in tokens or None for full, adaptive mean or None) of a policy at a layer."""
    b = policy.budget
    if b.kind == "full":
        return None, None
    if b.kind in ("tokens", "linear", "list"):
        try:
            return int(b.at_layer(layer, layers)), None
        except ValueError as exc:
            raise plan_error(policy, str(exc)) from None
    if b.kind == "adaptive":
        by = b.by or "cake"
        if by != "cake":
            raise plan_error(policy, f"adaptive budget by = {by!r} is not known: the allocator is 'cake'")
        return None, int(b.tokens)
    raise plan_error(policy, f"unknown budget kind {b.kind!r}")


def policy_for(program: Program, layer: int, kv_head: int) -> tuple[int, Any] | None:
    """The last cache policy whose scope holds (layer, kv_head)."""
    found = None
    for i, c in enumerate(program.cache):
        if (c.layers is None or layer in c.layers) and (c.kv_heads is None or kv_head in c.kv_heads):
            found = (i, c)
    return found


def _scale(patterns: list[Pattern]) -> int:
    """The largest constant of the patterns' atoms: how far apart their periods can be."""
    return max((lit.atom.scale() for p in patterns for t in p.terms for lit in t.lits), default=1) or 1


def all_visible(layout: Layout, patterns: list[Pattern], max_step: int) -> bool:
    """True when, at T == 1, every key the layout holds is visible to the newest query of
    every pattern (so the kernel may skip the mask). A dense store needs a plain causal
    pattern (a term that is causal alone); a ring is checked on the first lengths, around
    multiples of the patterns' largest constant, and on a random far sample."""
    if layout.kind == "chunk" or layout.stripe_res:
        return False
    if layout.kind == "dense":
        return all(p.covers_causal for p in patterns)
    span = layout.sink + layout.ring_capacity(max_step) + 2
    scale = max(_scale(patterns), span)
    ns = set(range(1, 130))
    for base in range(scale, 6 * scale + 1, scale):
        ns.update(range(max(base - 8, 1), base + 9))
    ns.update(np.random.default_rng(0).integers(1, 6 * scale + 64, 64).tolist())
    cap = layout.ring_capacity(max_step)
    for n in sorted(ns):
        runs = ((0, min(n, layout.sink) - 1), (max(layout.sink, n - cap), n - 1))
        if not all(_run_visible(p, n - 1, a, b) for p in patterns for a, b in runs if a <= b):
            return False
    return True


_ENUMERATED_RUN = 4096  # runs of held keys up to this long are checked key by key


def _run_visible(pattern: Pattern, q: int, a: int, b: int) -> bool:
    """Whether query q sees every key in [a, b]: one term's tile status (exact interval
    arithmetic, independent of the run's length), else key by key for short runs (unions)."""
    q_, a_, b_ = np.int64(q), np.int64(a), np.int64(b)
    if any(all(int(lit.tile(q_, q_, a_, b_)) == 2 for lit in t.lits) for t in pattern.terms):
        return True
    if b - a + 1 > _ENUMERATED_RUN:
        return False  # not proven: the kernel keeps the mask
    return bool(np.asarray(pattern.holds(q_, np.arange(a, b + 1, dtype=np.int64))).all())


@dataclass(frozen=True)
class KvStore:
    """What one (layer, KV head) keeps: the lossless layout, the lossy budget in tokens on top
    of it (None: lossless, keep rules alone included), the cache rule in force (index, policy)."""

    layout: Layout
    budget: int | None
    rule: tuple[int, Any] | None
    groups: tuple[int, ...]  # pattern groups of its query heads
    lossless: bool = True  # keeps every key a query may still read


def kv_store(program: Program, layer: int, kv: int, max_step: int = 1) -> KvStore:
    """The store of one KV head: the union of its query heads' layouts, under the cache rule
    whose scope holds it. Keep rules without a score whose budget is exactly sink + recent
    (StreamingLLM) are a layout of their own (`keep_only`), not a lossy budget."""
    m = program.model
    group = m.heads // m.kv_heads
    table = program.group_table()
    gids = tuple(sorted({table[layer][kv * group + g] for g in range(group)}))
    layout = layout_of([program.groups[i].reach for i in gids], max_step)  # a selection: all it may read
    rule = policy_for(program, layer, kv)
    if rule is None:
        return KvStore(layout, None, None, gids)
    policy = rule[1]
    if getattr(policy, "select", None) is not None and layout.kind != "dense":
        raise plan_error(
            policy,
            f"select reads pages of a whole cache, but the pattern of KV head {kv} in layer {layer} keeps only "
            f"{layout.describe()}: select on heads whose pattern keeps every key (causal)",
        )
    budget, mean = budget_at(policy, layer, m.layers)
    if budget is None and mean is None:
        return KvStore(layout, None, rule, gids)
    if mean is None and policy.evict is None and budget == policy.sink + policy.recent:
        kept = keep_only(layout, policy.sink, policy.recent)
        return KvStore(kept, None, rule, gids, lossless=kept == layout)
    return KvStore(layout, budget if budget is not None else mean, rule, gids, lossless=False)


def page_size(program: Program) -> int:
    """Tokens per page of the paged cache: the page of the file's page selections (one size
    per file), else 16. Its quest selections share one summary precision too (one pool)."""
    pages = {
        c.select.page for c in program.cache if getattr(c, "select", None) is not None and c.select.score != "tokens"
    }
    if len(pages) > 1:
        raise DecodePlanError(f"the selections of a file share one page size; this one uses {sorted(pages)}")
    bits = {
        c.select.bits for c in program.cache if getattr(c, "select", None) is not None and c.select.score == "quest"
    }
    if len(bits) > 1:
        raise DecodePlanError(
            f"the quest selections of a file share one summary precision; this one uses bits {sorted(bits)}"
        )
    return pages.pop() if pages else 16


def select_units(select: Any) -> int:
    """Units a selection chooses per step: tokens (`tokens`), else whole pages of its budget."""
    return select.budget if select.score == "tokens" else -(-select.budget // select.page)


def lossless_rules(program: Program) -> dict[int, bool]:
    """Per cache rule (its index in Program.cache): whether every (layer, KV head) it governs
    keeps every key its patterns may still read. Rules of a program without decode (a
    non-causal pattern) are not judged."""
    if not all(decodable(g.reach) for g in program.groups):
        return {}
    m = program.model
    out: dict[int, bool] = {}
    for layer in range(m.layers):
        for kv in range(m.kv_heads):
            store = kv_store(program, layer, kv)
            if store.rule is not None:
                out[store.rule[0]] = out.get(store.rule[0], True) and store.lossless
    return out
