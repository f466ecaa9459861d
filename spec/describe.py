"""Plain-English summaries of a resolved Spec, for `attnc check`.

`describe(spec)` says what each pattern lets a query see, where it applies, and what the
cache keeps, in one paragraph, for instance:

    streaming_llm: causal, the first 4 positions or the last 1020 positions, same for all
    30 layers x 9 heads; cache keeps sink 4 + recent 1020 per KV head, lossless.

"Lossless" is claimed only when a simple bound proves it: every pattern that a cache
policy serves reaches no key outside its sink and recent tokens (the compiler's liveness
analysis is the exact version of this check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from .resolved import Assignment, CachePolicy, REvict, RExpr, ROp, RPrim, Spec
from .shape import ranges, span

T = TypeVar("T")


def describe(spec: Spec) -> str:
    """One paragraph: the pattern, where it applies, and its cache."""
    text = f"{spec.name}: {_pattern(spec)}"
    if spec.cache:
        text += "; " + _cache(spec)
    return text + "."


# ---------------------------------------------------------------- patterns


def _pattern(spec: Spec) -> str:
    if len(spec.assignments) == 1 and spec.assignments[0].heads is None:
        return f"{describe_expr(spec.assignments[0].expr)}, {_everywhere(spec)}"
    return "; ".join(f"{_coverage(spec, group)}: {describe_expr(group[0].expr)}" for group in _by_section(spec.assignments))


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
        return _PRIMS[expr.name](expr.args)
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


def _window(a: dict) -> str:
    if "size" in a:
        return f"the last {a['size']} positions"
    return f"keys from {a['left']} before to {a['right']} after the query"


def _dilated(a: dict) -> str:
    if a["dilation"] == 1:
        return f"the last {a['size']} positions"
    return f"every {_nth(a['dilation'])} of the last {a['size'] * a['dilation']} positions"


def _neighborhood(a: dict) -> str:
    text = "a " + "x".join(map(str, a["kernel"])) + " neighborhood on the grid"
    if any(d != 1 for d in a["dilation"]):
        text += " with dilation " + "x".join(map(str, a["dilation"]))
    causal_axes = [str(i) for i, c in enumerate(a["causal"]) if c]
    if causal_axes:
        text += ", causal along axis " + ", ".join(causal_axes)
    return text


def _first(n: int) -> str:
    """`position 0`, `the first 5 positions (0..5)`."""
    return "position 0" if n == 1 else f"the first {n} positions ({span(0, n)})"


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_PRIMS: dict[str, Callable[[dict], str]] = {
    "full": lambda a: "every key",
    "causal": lambda a: "causal",
    "window": _window,
    "sink": lambda a: f"the first {a['size']} positions",
    "dilated": _dilated,
    "strided": lambda a: f"every {_nth(a['stride'])} position back from the query",
    "stride": lambda a: f"positions k with k mod {a['stride']} = {a['offset']}",
    "chunk": lambda a: f"the query's own chunk of {a['size']}",
    "global": lambda a: f"{_first(a['size'])} as global, seeing and seen by every position",
    "band": lambda a: f"keys {a['lo']} to {a['hi']} positions back",
    "power": lambda a: f"blocks of {a['block']} at power-of-two block distances",
    "neighborhood": _neighborhood,
}


# ---------------------------------------------------------------- caches


def _cache(spec: Spec) -> str:
    return "; ".join(_cache_policy(spec, group) for group in _by_section(spec.cache))


def _cache_policy(spec: Spec, group: list[CachePolicy]) -> str:
    """One section's cache policies (identical but for the heads they cover) in words."""
    policy = group[0]
    text = f"cache{_policy_where(spec, group)} {_budget(policy)}"
    if policy.evict is not None:
        text += f", evicting by {_evict(policy.evict)}, scores aggregated by {policy.aggregate} over each GQA group"
    if policy.positions == "rerotate":
        text += ", keys re-rotated to their cache slots"
    return text + ", " + _loss(spec, policy)


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


def _loss(spec: Spec, policy: CachePolicy) -> str:
    if policy.evict is not None:
        return "lossy"
    if policy.budget.kind == "full":
        return "lossless"
    bounds = [_reach(a.expr) for a in spec.assignments if _serves(spec, policy, a)]
    if bounds and all(b is not None and b[0] <= policy.sink and b[1] <= policy.recent for b in bounds):
        return "lossless"
    return "lossy (the pattern reaches keys the cache drops)"


def _serves(spec: Spec, policy: CachePolicy, a: Assignment) -> bool:
    """Whether the pattern of `a` reads keys from the cache that `policy` manages."""
    if policy.layers is not None and a.layers is not None and not set(policy.layers) & set(a.layers):
        return False
    if policy.kv_heads is None or a.heads is None or not spec.model.heads:
        return True
    group = spec.model.heads // (spec.model.kv_heads or spec.model.heads)
    return bool({h // group for h in a.heads} & set(policy.kv_heads))


def _reach(expr: RExpr) -> tuple[int, int] | None:
    """(s, w) such that every allowed pair with k <= q has k < s or q - k < w; None if unbounded."""
    if isinstance(expr, RPrim):
        return _PRIM_REACH.get(expr.name, lambda a: None)(expr.args)
    left, right = _reach(expr.left), _reach(expr.right)
    if expr.op == "-":
        return left
    if expr.op == "|":
        return None if left is None or right is None else (max(left[0], right[0]), max(left[1], right[1]))
    candidates = [b for b in (left, right) if b is not None]
    return min(candidates, key=sum) if candidates else None


_PRIM_REACH: dict[str, Callable[[dict], tuple[int, int] | None]] = {
    "window": lambda a: (0, a["size"]) if "size" in a else (0, a["left"] + 1),
    "sink": lambda a: (a["size"], 0),
    "dilated": lambda a: (0, (a["size"] - 1) * a["dilation"] + 1),
    "chunk": lambda a: (0, a["size"]),
    "global": lambda a: (a["size"], a["size"]),
    "band": lambda a: (0, max(a["hi"] + 1, 0)),
}
