"""Decode planning: what the generated cache manager and decode kernel of a program hold.

`plan_decode(program)` reads the IR (the pattern of every (layer, query head)) and the
resolved cache policies (`Program.cache`, spec.resolved.CachePolicy records) and returns a
`DecodePlan`: per layer and KV head the lossless store that liveness allows (`Layout`) and
the lossy policy on top of it (`HeadPolicy`), plus the pattern predicates that the decode
kernel evaluates. `DecodePlan.context()` is what the templates `cache.py.j2` and
`decode.py.j2` read (one variable, `dp`); codegen.writer renders them.

Layouts, budgets and whether the kernel may skip the mask are planned in
compiler/cache_plan.py (the simulator reads the same plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from ..compiler.cache_plan import (
    DecodePlanError,
    Layout,
    all_visible,
    budget_at,
    kv_store,
    page_size,
    plan_error,
    select_units,
)
from ..compiler.ir import Pattern, Program
from ..compiler.liveness import decodable
from . import masks
from ..spec.cache import SCORES
from .support.records import HeadRule, Policy, Select

SENTINEL = 1 << 30  # the position stored in an empty slot: no causal pattern allows it
HeadPolicy = Policy  # the lossy part of one KV head's cache (support/policies.py)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class HeadPlan:
    """One (layer, KV head): its layout, its lossy policy (None: lossless), its positions."""

    layout: Layout
    policy: HeadPolicy | None
    rerotate: bool
    groups: tuple[int, ...]  # pattern groups of its query heads
    select: Select | None = None  # decode-time selection (the paged cache)


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
        return [[h.layout.tokens(n, self.max_step) if h.policy is None else -1 for h in row] for row in self.heads]

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
        table = tuple(
            tuple(rules.setdefault(_head_rule(h, pol_names, self.max_step), len(rules)) for h in row)
            for row in self.heads
        )
        return {
            "dp": {
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
                "describe_literal": _literal(
                    tuple(
                        tuple(
                            h.layout.describe()
                            + (f" | {_describe_policy(h.policy)}" if h.policy else "")
                            + (f" | select {h.select.score} {h.select.units} per step" if h.select else "")
                            for h in row
                        )
                        for row in self.heads
                    )
                ),
                "head_dim_literal": _literal(m.head_dim),
                "page": page_size(self.program),
                "select_literal": _literal(tuple(tuple(h.select for h in row) for row in self.heads)),
            }
        }


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
    return HeadRule(
        lay.kind,
        lay.sink,
        lay.span(max_step),
        lay.ring_capacity(max_step),
        lay.stripe_mod,
        lay.stripe_res,
        lay.chunk,
        -1,
        h.rerotate,
    )


def head_policy(policy: Any, index: int, layer: int, layers: int, max_step: int) -> Policy | None:
    """The lossy policy of a resolved CachePolicy (spec.resolved) at a layer, checked against
    its keep rules and max_step; None where its budget is full. Raises DecodePlanError with
    the policy's location. The generated cache and the reference backend both read it."""
    budget, mean = budget_at(policy, layer, layers)
    ev = policy.evict
    if budget is None and mean is None:
        return None  # full: lossless (the layout alone)
    opts = dict(ev.options) if ev is not None else {}
    score = ev.score if ev is not None else None
    timing = ev.timing if ev is not None else "decode"
    if mean is not None and (score is None or timing != "prefill"):
        score, timing = score or "snapkv", "prefill"
    if score is not None and score not in SCORES:
        raise plan_error(policy, f"unknown eviction score {score!r}: one of {', '.join(SCORES)}")
    pool = str(opts.get("pool", "max"))  # spec/cache.py's defaults: window 32, pool max, kernel 7
    if pool not in ("avg", "max", "mean"):
        raise plan_error(policy, f"snapkv pool = {pool!r}: use pool = avg or pool = max")
    hp = Policy(
        index=index,
        budget=budget,
        adaptive_mean=mean,
        sink=int(policy.sink),
        recent=int(policy.recent),
        score=score,
        timing=timing,
        aggregate=policy.aggregate,
        window=int(opts.get("window", 32)) if score == "snapkv" or mean is not None else 0,
        pool="avg" if pool == "mean" else pool,
        kernel=int(opts.get("kernel", 7)),
        tau1=float(opts.get("tau1", 1)),
        tau2=float(opts.get("tau2", 1)),
    )
    if hp.kernel < 1 or hp.kernel % 2 == 0:
        raise plan_error(
            policy, f"snapkv kernel = {hp.kernel}: the pooling kernel must be odd and >= 1 (it is centred on each key)"
        )
    need = hp.protected
    b = budget if budget is not None else mean
    if b < need or b < 1:
        what = f"sink({hp.sink}) + recent({hp.protected_recent})"
        raise plan_error(
            policy,
            f"budget {b} at layer {layer} is below its keep rules {what} = {need}: "
            f"raise the budget to at least {max(need, 1)} or keep fewer tokens",
        )
    if budget is not None and timing == "decode" and budget < max_step:
        raise plan_error(
            policy,
            f"budget {budget} at layer {layer} is below max_step = {max_step}: a decode step must fit in the budget",
        )
    return hp


def head_select(rule: tuple[int, Any] | None) -> Select | None:
    """The decode-time selection of a cache rule, as the paged cache reads it."""
    sel = getattr(rule[1], "select", None) if rule is not None else None
    if sel is None:
        return None
    return Select(sel.score, select_units(sel), int(rule[1].sink), int(rule[1].recent), rule[1].aggregate, sel.bits)


# --------------------------------------------------------------------------- masks


def render_pattern(p: Pattern) -> str:
    """The pattern over the decode kernel's position tensors qp, kp (codegen/masks.py)."""
    return masks.render_pattern(p, "qp", "kp").text()


# --------------------------------------------------------------------------- planning


def plan_decode(program: Program, *, max_step: int = 1) -> DecodePlan | None:
    """The decode plan of a program, or None when some pattern is not causal or selects key blocks
    at run time (no decode: a prefill selection chooses per query block, not per decoded token)."""
    if any(g.selection is not None for g in program.groups):
        return None
    if max_step < 1:
        raise DecodePlanError(f"max_step must be >= 1, got {max_step=}")
    m = program.model
    if m.heads % m.kv_heads:
        raise DecodePlanError(f"heads = {m.heads} is not a multiple of kv_heads = {m.kv_heads}")
    if not all(decodable(g.pattern) for g in program.groups):
        return None
    table = program.group_table()
    heads: list[tuple[HeadPlan, ...]] = []
    masked: list[bool] = []
    scores: set[str] = set()
    visible_cache: dict[tuple, bool] = {}
    for layer in range(m.layers):
        row = []
        layer_masked = False
        for kv in range(m.kv_heads):
            store = kv_store(program, layer, kv, max_step)
            layout, gids = store.layout, store.groups
            pats = [program.groups[i].pattern for i in gids]
            policy = rerotate = None
            if store.rule is not None:
                policy = head_policy(store.rule[1], store.rule[0], layer, m.layers, max_step)  # checks it
                rerotate = store.rule[1].positions == "rerotate"
                policy = policy if store.budget is not None else None
            if policy is not None:
                if policy.score:
                    scores.add(policy.score)
                vis = all(p.covers_causal for p in pats)
            else:
                key = (layout, gids)
                if key not in visible_cache:
                    visible_cache[key] = all_visible(layout, pats, max_step)
                vis = visible_cache[key]
            layer_masked |= not vis
            row.append(HeadPlan(layout, policy, bool(rerotate), gids, head_select(store.rule)))
        heads.append(tuple(row))
        masked.append(layer_masked)
    used = sorted({g for row in table for g in row})
    masks = tuple((g, render_pattern(program.groups[g].pattern)) for g in used)
    return DecodePlan(
        program, max_step, tuple(heads), tuple(tuple(r) for r in table), tuple(masked), masks, frozenset(scores)
    )


# --------------------------------------------------------------------------- rendering


def decode_context(program: Program, *, max_step: int = 1) -> dict[str, Any]:
    """The template variables the module template passes to the decode includes:
    {"dp": ...}, with dp None when the program has no decode (a non-causal pattern)."""
    plan = plan_decode(program, max_step=max_step)
    return plan.context() if plan is not None else {"dp": None}
