"""Decode planning: what the generated cache manager and decode kernel of a program hold.

`plan_decode(program)` reads the IR (the pattern of every (layer, query head)) and the
resolved cache policies (`Program.cache`, spec.resolved.CachePolicy records) and returns a
`DecodePlan`: per layer and KV head the lossless store that liveness allows (`Layout`) and
the lossy policy on top of it (`HeadPolicy`), plus the pattern predicates that the decode
kernel evaluates. `DecodePlan.context()` is what the templates `cache.py.j2` and
`decode.py.j2` read (one variable, `dp`); codegen.writer renders them.

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
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..compiler.ir import Band, Lit, Pattern, Program
from ..compiler.liveness import cache_layout
from . import masks
from .support.cache import HeadRule
from .support.policies import SCORERS, Policy

SENTINEL = 1 << 30  # the position stored in an empty slot: no causal pattern allows it
HeadPolicy = Policy  # the lossy part of one KV head's cache (support/policies.py)


class DecodePlanError(ValueError):
    """A cache block that cannot be served, with the policy's location when known."""


# --------------------------------------------------------------------------- layouts


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


def _ring(sink: int, window: int, stripes: list[tuple[int, int]], exact: bool) -> Layout:
    mod = 1
    for m, _ in stripes:
        mod = mod * m // math.gcd(mod, m)
    res = tuple(sorted({r2 for m, r in stripes for r2 in range(mod) if r2 % m == r}))
    if res and len(res) == mod:
        return Layout("dense", exact=False)
    return Layout("ring", sink=sink, window=window, stripe_mod=mod if res else 1, stripe_res=res, exact=exact)


def _keep_only(layout: Layout, sink: int, recent: int) -> Layout:
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


@dataclass(frozen=True)
class HeadPlan:
    """One (layer, KV head): its layout, its lossy policy (None: lossless), its positions."""

    layout: Layout
    policy: HeadPolicy | None
    rerotate: bool
    groups: tuple[int, ...]  # pattern groups of its query heads


@dataclass(frozen=True)
class DecodePlan:
    program: Program
    max_step: int
    heads: tuple[tuple[HeadPlan, ...], ...]  # [layer][kv head]
    gid: tuple[tuple[int, ...], ...]  # pattern group per [layer][query head]
    masked: tuple[bool, ...]  # per layer: the kernel must evaluate the pattern at T == 1
    masks: tuple[tuple[int, str], ...]  # (group, mask expression over qp, kp)
    scores_used: frozenset[str] = field(default_factory=frozenset)

    @property
    def layers(self) -> int:
        return len(self.heads)

    def tokens(self, n: int) -> list[list[int]]:
        """Tokens held per [layer][kv head] after n tokens, for lossless heads (liveness)."""
        return [[h.layout.tokens(n, self.max_step) if h.policy is None else -1 for h in row]
                for row in self.heads]

    def context(self) -> dict[str, Any]:
        """The template variables: {'dp': ...} (see the report and docs/caches.md)."""
        m = self.program.model
        pol_names = {}
        policies = []
        for row in self.heads:
            for h in row:
                if h.policy is not None and h.policy not in pol_names:
                    pol_names[h.policy] = len(policies)
                    policies.append(h.policy)
        rules: dict[HeadRule, int] = {}
        table = tuple(tuple(rules.setdefault(_head_rule(h, pol_names, self.max_step), len(rules)) for h in row)
                      for row in self.heads)
        return {"dp": {
            "name": self.program.name,
            "digest": self.program.digest(),
            "layers": self.layers,
            "heads": m.heads,
            "kv_heads": m.kv_heads,
            "group_size": m.heads // m.kv_heads,
            "head_dim": m.head_dim,
            "max_step": self.max_step,
            "sentinel": SENTINEL,
            "masks": [{"gid": g, "expr": e} for g, e in self.masks],
            "single_group": len(self.masks) == 1,
            "rules_literal": _literal(tuple(rules)),
            "table_literal": _literal(table),
            "policies_literal": _literal(tuple(policies)),
            "gid_literal": _literal(self.gid),
            "masked_literal": _literal(self.masked),
            "lossy": bool(policies),
            "adaptive": any(p.adaptive_mean is not None for p in policies),
            "describe_literal": _literal(tuple(tuple(
                h.layout.describe() + (f" | {_describe_policy(h.policy)}" if h.policy else "")
                for h in row) for row in self.heads)),
            "head_dim_literal": _literal(m.head_dim),
        }}


def _describe_policy(p: HeadPolicy) -> str:
    budget = f"adaptive({p.adaptive_mean})" if p.adaptive_mean is not None else str(p.budget)
    return f"budget {budget}, sink {p.sink}, recent {p.recent}, {p.score or 'fifo'} at {p.timing}"


def _literal(x: Any) -> str:
    return repr(x)


def _head_rule(h: HeadPlan, pol_names: dict, max_step: int) -> HeadRule:
    """The generated cache's record of one (layer, KV head)."""
    lay = h.layout
    if h.policy is not None:
        return HeadRule("lossy", policy=pol_names[h.policy], rerotate=h.rerotate)
    return HeadRule(lay.kind, lay.sink, lay.span(max_step), lay.ring_capacity(max_step), lay.stripe_mod,
                    lay.stripe_res, lay.chunk, -1, h.rerotate)


def _error(policy: Any, message: str) -> DecodePlanError:
    loc = getattr(policy, "loc", None)
    return DecodePlanError(f"{loc}: {message}" if loc is not None else message)


def _budget_for(policy: Any, layer: int, layers: int) -> tuple[int | None, int | None]:
    """(budget in tokens or None for full, adaptive mean or None) of a policy at a layer."""
    b = policy.budget
    if b.kind == "full":
        return None, None
    if b.kind in ("tokens", "linear", "list"):
        try:
            return int(b.at_layer(layer, layers)), None
        except ValueError as exc:
            raise _error(policy, str(exc)) from None
    if b.kind == "adaptive":
        by = b.by or "cake"
        if by != "cake":
            raise _error(policy, f"adaptive budget by = {by!r} is not known: the allocator is 'cake'")
        return None, int(b.tokens)
    raise _error(policy, f"unknown budget kind {b.kind!r}")


def head_policy(policy: Any, index: int, layer: int, layers: int, max_step: int) -> Policy | None:
    """The lossy policy of a resolved CachePolicy (spec.resolved) at a layer, checked against
    its keep rules and max_step; None where its budget is full. Raises DecodePlanError with
    the policy's location. The generated cache and the reference backend both read it."""
    budget, mean = _budget_for(policy, layer, layers)
    ev = policy.evict
    if budget is None and mean is None:
        return None  # full: lossless (the layout alone)
    opts = dict(ev.options) if ev is not None else {}
    score = ev.score if ev is not None else None
    timing = ev.timing if ev is not None else "decode"
    if mean is not None and (score is None or timing != "prefill"):
        score, timing = score or "snapkv", "prefill"
    if score is not None and score not in SCORERS:
        raise _error(policy, f"unknown eviction score {score!r}: one of {', '.join(SCORERS)}")
    pool = str(opts.get("pool", "max"))  # spec/cache.py's defaults: window 32, pool max, kernel 7
    if pool not in ("avg", "max", "mean"):
        raise _error(policy, f"snapkv pool = {pool!r}: use pool = avg or pool = max")
    hp = Policy(
        index=index, budget=budget, adaptive_mean=mean, sink=int(policy.sink), recent=int(policy.recent),
        score=score, timing=timing, aggregate=policy.aggregate,
        window=int(opts.get("window", 32)) if score == "snapkv" or mean is not None else 0,
        pool="avg" if pool == "mean" else pool, kernel=int(opts.get("kernel", 7)),
        tau1=float(opts.get("tau1", 1)), tau2=float(opts.get("tau2", 1)),
    )
    if hp.kernel < 1 or hp.kernel % 2 == 0:
        raise _error(policy, f"snapkv kernel = {hp.kernel}: the pooling kernel must be odd and >= 1 "
                             "(it is centred on each key)")
    need = hp.protected
    b = budget if budget is not None else mean
    if b < need or b < 1:
        what = f"sink({hp.sink}) + recent({hp.protected_recent})"
        raise _error(policy, f"budget {b} at layer {layer} is below its keep rules {what} = {need}: "
                             f"raise the budget to at least {max(need, 1)} or keep fewer tokens")
    if budget is not None and timing == "decode" and budget < max_step:
        raise _error(policy, f"budget {budget} at layer {layer} is below max_step = {max_step}: "
                             "a decode step must fit in the budget")
    return hp


def policy_for(program: Program, layer: int, kv_head: int) -> tuple[int, Any] | None:
    """The last cache policy whose scope holds (layer, kv_head)."""
    found = None
    for i, c in enumerate(program.cache):
        if (c.layers is None or layer in c.layers) and (c.kv_heads is None or kv_head in c.kv_heads):
            found = (i, c)
    return found


# --------------------------------------------------------------------------- masks


def render_pattern(p: Pattern) -> str:
    """The pattern over the decode kernel's position tensors qp, kp (codegen/masks.py)."""
    return masks.render_pattern(p, "qp", "kp").text()


# --------------------------------------------------------------------------- planning


def _decodable(p: Pattern) -> bool:
    """Causal token patterns: grid neighbourhoods are not served at decode."""
    return p.is_causal and not any(t.conj.grids for t in p.terms)


def _scale(patterns: list[Pattern]) -> int:
    """The largest constant of the patterns' atoms: how far apart their periods can be."""
    return max((lit.atom.scale() for p in patterns for t in p.terms for lit in t.lits), default=1) or 1


def _all_visible(layout: Layout, patterns: list[Pattern], max_step: int) -> bool:
    """True when, at T == 1, every key the layout holds is visible to the newest query of
    every pattern (so the kernel may skip the mask). A dense store needs a plain causal
    pattern (a term that is causal alone); a ring is checked on the first lengths, around
    multiples of the patterns' largest constant, and on a random far sample."""
    if layout.kind == "chunk" or layout.stripe_res:
        return False
    if layout.kind == "dense":
        return all(_is_causal_full(p) for p in patterns)
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


def _is_causal_full(p: Pattern) -> bool:
    """The pattern is exactly causal (a causal pattern with a term that is causal alone)."""
    return any(t.lits == (Lit(Band(0, None)),) for t in p.terms)


def plan_decode(program: Program, *, max_step: int = 1) -> DecodePlan | None:
    """The decode plan of a program, or None when some pattern is not causal (no decode)."""
    if max_step < 1:
        raise DecodePlanError(f"max_step must be >= 1, got {max_step=}")
    m = program.model
    if m.heads % m.kv_heads:
        raise DecodePlanError(f"heads = {m.heads} is not a multiple of kv_heads = {m.kv_heads}")
    if not all(_decodable(g.pattern) for g in program.groups):
        return None
    G = m.heads // m.kv_heads
    table = program.group_table()
    heads: list[tuple[HeadPlan, ...]] = []
    masked: list[bool] = []
    scores: set[str] = set()
    visible_cache: dict[tuple, bool] = {}
    for layer in range(m.layers):
        row = []
        layer_masked = False
        for kv in range(m.kv_heads):
            gids = tuple(sorted({table[layer][kv * G + g] for g in range(G)}))
            pats = [program.groups[i].pattern for i in gids]
            layout = layout_of(pats, max_step)
            found = policy_for(program, layer, kv)
            policy = rerotate = None
            if found is not None:
                policy = head_policy(found[1], found[0], layer, m.layers, max_step)
                rerotate = found[1].positions == "rerotate"
                if policy is not None and policy.score is None and policy.budget == policy.sink + policy.recent:
                    layout, policy = _keep_only(layout, policy.sink, policy.recent), None
            if policy is not None:
                if policy.score:
                    scores.add(policy.score)
                vis = all(_is_causal_full(p) for p in pats)
            else:
                key = (layout, gids)
                if key not in visible_cache:
                    visible_cache[key] = _all_visible(layout, pats, max_step)
                vis = visible_cache[key]
            layer_masked |= not vis
            row.append(HeadPlan(layout, policy, bool(rerotate), gids))
        heads.append(tuple(row))
        masked.append(layer_masked)
    used = sorted({g for row in table for g in row})
    masks = tuple((g, render_pattern(program.groups[g].pattern)) for g in used)
    return DecodePlan(program, max_step, tuple(heads), tuple(tuple(r) for r in table), tuple(masked),
                      masks, frozenset(scores))


# --------------------------------------------------------------------------- rendering


def decode_context(program: Program, *, max_step: int = 1) -> dict[str, Any]:
    """The template variables the module template passes to the decode includes:
    {"dp": ...}, with dp None when the program has no decode (a non-causal pattern)."""
    plan = plan_decode(program, max_step=max_step)
    return plan.context() if plan is not None else {"dp": None}
