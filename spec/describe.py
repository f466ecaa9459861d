"""Plain-English summaries of a resolved Spec, for `attnc check`.

`describe(spec)` says what each pattern lets a query see, where it applies, and what the
cache keeps, in one paragraph, for instance:

    streaming_llm: causal, the first 4 positions or the last 1020 positions, same for all
    30 layers x 9 heads; cache keeps sink 4 + recent 1020 per KV head, lossless.

Whether a cache rule without a score loses keys the pattern still reads is the compiler's
liveness analysis (compiler/cache_plan.py's `lossless_rules`): the caller passes its answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from .primitives import PRIMITIVES
from .resolved import Assignment, CachePolicy, REvict, RExpr, ROp, RPrim, Spec
from .shape import ranges

T = TypeVar("T")


def describe(spec: Spec, lossless: Mapping[int, bool] | None = None) -> str:
    """One paragraph: the pattern, where it applies, and its cache. `lossless`: per cache rule
    (its index in spec.cache), whether it keeps every key the pattern reads; without it, rules
    that keep tokens without a score are not judged."""
    text = f"{spec.name}: {_pattern(spec)}"
    if spec.cache:
        text += "; " + _cache(spec, lossless or {})
    return text + "."


# ---------------------------------------------------------------- patterns


def _pattern(spec: Spec) -> str:
    if len(spec.assignments) == 1 and spec.assignments[0].heads is None:
        return f"{describe_expr(spec.assignments[0].expr)}, {_everywhere(spec)}"
    return "; ".join(
        f"{_coverage(spec, group)}: {describe_expr(group[0].expr)}" for group in _by_section(spec.assignments)
    )


def _everywhere(spec: Spec) -> str:
    layers, heads = spec.model.layers, spec.model.heads
    if layers and heads:
        return f"same for all {layers} layers x {heads} heads"
    if heads:
        return f"same in every layer for all {heads} heads"
    return "same for every layer and head"


def _by_section(items: Sequence[T]) -> list[list[T]]:
    """Records grouped by the section (source location) they come from, in order."""
    groups: dict[object, list[T]] = {}
    for item in items:
        groups.setdefault(item.loc, []).append(item)  # type: ignore[attr-defined]
    return list(groups.values())


def _coverage(spec: Spec, group: list[Assignment]) -> str:
    """Where a section applies: explicit for a few blocks, counted for a per-layer head set."""
    if len(group) > 3:
        pairs = sum(len(a.heads or ()) * len(a.layers or ()) for a in group)
        layers = len({layer for a in group for layer in a.layers or ()})
        return f"{pairs} (layer, head) pairs in {layers} layers (a per-layer head set)"
    return "; ".join(_where(spec, a.layers, a.heads or (), "head") for a in group)


def _where(spec: Spec, layers: tuple[int, ...] | None, heads: tuple[int, ...], noun: str) -> str:
    text = f"{noun}{'s' if len(heads) > 1 else ''} {ranges(heads)}"
    if layers is None or len(layers) == spec.model.layers:
        return text
    return f"{text} in layer{'s' if len(layers) > 1 else ''} {ranges(layers)}"


def describe_expr(expr: RExpr) -> str:
    """An expression in words: `causal, the first 4 positions or the last 1020 positions`."""
    if isinstance(expr, RPrim):
        return PRIMITIVES[expr.name].words(expr.args)
    if expr.op == "&" and _is_causal(expr.left):
        return "causal, " + describe_expr(expr.right)
    if expr.op == "&" and _is_causal(expr.right):
        return "causal, " + describe_expr(expr.left)
    word = {"|": "or", "&": "and", "-": "except"}[expr.op]
    return f"{_operand(expr.left, expr)} {word} {_operand(expr.right, expr)}"


def _operand(child: RExpr, parent: ROp) -> str:
    text = describe_expr(child)
    if isinstance(child, ROp) and child.op != parent.op:
        return f"({text})"
    return text


def _is_causal(expr: RExpr) -> bool:
    return isinstance(expr, RPrim) and expr.name == "causal"


# ---------------------------------------------------------------- caches


def _cache(spec: Spec, lossless: Mapping[int, bool]) -> str:
    index = {id(p): i for i, p in enumerate(spec.cache)}
    return "; ".join(
        _cache_policy(spec, group, [lossless.get(index[id(p)]) for p in group]) for group in _by_section(spec.cache)
    )


def _cache_policy(spec: Spec, group: list[CachePolicy], lossless: list[bool | None]) -> str:
    """One section's cache policies (identical but for the heads they cover) in words."""
    policy = group[0]
    text = f"cache{_policy_where(spec, group)} {_budget(policy)}"
    if policy.evict is not None:
        text += f", evicting by {_evict(policy.evict)}, scores aggregated by {policy.aggregate} over each GQA group"
    if policy.positions == "rerotate":
        text += ", keys re-rotated to their cache slots"
    return text + _loss(policy, lossless)


def _policy_where(spec: Spec, group: list[CachePolicy]) -> str:
    if group[0].kv_heads is None:
        return ""
    if len(group) > 3:
        pairs = sum(len(p.kv_heads or ()) * len(p.layers or ()) for p in group)
        return f" for {pairs} (layer, KV head) pairs (a per-layer head set)"
    return " for " + "; ".join(_where(spec, p.layers, p.kv_heads or (), "KV head") for p in group)


def _budget(policy: CachePolicy) -> str:
    b = policy.budget
    keep = " + ".join(f"{what} {n}" for what, n in (("sink", policy.sink), ("recent", policy.recent)) if n)
    if b.kind == "full" and getattr(policy, "select", None) is not None:
        sel = policy.select
        unit = "tokens" if sel.score == "tokens" else f"tokens in pages of {sel.page} by {sel.score}"
        return f"keeps every key, and each decode step reads {sel.budget} {unit}" + (f" plus {keep}" if keep else "")
    if b.kind == "full":
        return "keeps every key"
    if b.kind == "tokens" and policy.evict is None:
        return f"keeps {keep} per KV head"
    kept = f" ({keep} always kept)" if policy.sink or policy.recent else ""
    amount = {
        "tokens": f"{b.tokens} tokens per KV head",
        "linear": f"a budget per KV head from {b.first} tokens in the first layer to {b.last} in the last",
        "list": f"per-layer budgets of {', '.join(map(str, b.per_layer))} tokens per KV head",
        "adaptive": f"an average of {b.tokens} tokens per KV head and layer, shared out by {b.by}",
    }[b.kind]
    return f"keeps {amount}{kept}"


def _evict(evict: REvict) -> str:
    options = ", ".join(f"{k} {v}" for k, v in evict.options.items())
    return f"{evict.score}{f' ({options})' if options else ''} at {evict.timing}"


def _loss(policy: CachePolicy, lossless: list[bool | None]) -> str:
    if policy.evict is not None:
        return ", lossy"
    if policy.budget.kind == "full" or (lossless and all(x is True for x in lossless)):
        return ", lossless"
    if any(x is False for x in lossless):
        return ", lossy (the pattern reaches keys the cache drops)"
    return ""
