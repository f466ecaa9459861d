"""The `cache { ... }` block, resolved to `resolved.CachePolicy` records.

A cache block's rules (budget, keep, evict, aggregate, positions) apply to every
(layer, KV head); its sections override them where they select, field by field, like a
cascade: a nested section overrides its enclosing one, a later section an earlier one, and
a field a section does not set is inherited. The result is a partition: every
(layer, KV head) gets exactly one CachePolicy, whose `loc` is the section that shaped it.

Meaning of the rules (docs/language.md):
- Without `evict`, a cache keeps exactly its keep rules: the budget defaults to
  sink + recent (or `full` when there are none) and cannot be larger.
- With `budget = full`, nothing is evicted (an inherited `evict` is dropped).
- A budget smaller than sink + recent is an error.
- Eviction timing defaults per score: snapkv and key_norm at prefill, h2o and tova at decode.
- `select` keeps the whole cache (the budget is full) and reads, at each decode step, the
  keep rules plus the best pages (or tokens) by its score; it takes no `evict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import ast
from .errors import one_of, suggest
from .intexpr import INT64_MAX, give_model
from .limits import position_problem
from .resolved import CachePolicy, RBudget, REvict, RSelect
from .select import Selection
from .shape import Pair, blocks

# score -> option -> (default, allowed words or None for an integer >= 1)
SCORES: dict[str, dict[str, tuple[object, tuple[str, ...] | None]]] = {
    "snapkv": {"window": (32, None), "pool": ("max", ("max", "avg")), "kernel": (7, None)},
    "h2o": {},
    "tova": {},
    "key_norm": {},
}
# selection score -> its options (page: tokens per page; tokens selects single tokens)
SELECT_SCORES: dict[str, tuple[str, ...]] = {
    "quest": ("budget", "page", "bits"),
    "mean": ("budget", "page"),
    "tokens": ("budget",),
}
PAGE_SIZES = (16, 32, 64, 128, 256)
SUMMARY_BITS = (8, 16)  # quest's page summaries: float8 rounded outward, or the cache's dtype
DEFAULT_TIMING = {"snapkv": "prefill", "key_norm": "prefill", "h2o": "decode", "tova": "decode"}
SETTINGS = {"aggregate": ("mean", "max", "sum"), "positions": ("original", "rerotate")}
ALLOCATORS = ("cake",)

Field = tuple[object, ast.Loc]
"""A rule's value and where it was written."""


@dataclass
class _Cell:
    """The rules in force for one (layer, KV head), and the section that set them last."""

    fields: dict[str, Field]
    origin: ast.Loc


def resolve_cache(decl: ast.CacheDecl, selection: Selection) -> list[CachePolicy]:
    """The CachePolicies of a cache block (empty after reporting a problem)."""
    errors_before = len(selection.reporter.diagnostics)
    base = _rules(decl.items, selection)
    sections = [i for i in decl.items if isinstance(i, ast.CacheSection)]
    if not sections:
        _keeps_matter([_Cell(base, decl.loc)], selection)
        policy = _policy(base, decl.loc, selection)
        return [] if policy is None else [policy]
    universe = selection.shape.universe("kv_heads")
    cells = {pair: _Cell(dict(base), decl.loc) for pair in universe}
    _apply(sections, universe, cells, selection)
    _keeps_matter(list(cells.values()), selection)
    policies = _grouped(cells, selection)
    return policies if len(selection.reporter.diagnostics) == errors_before else []


def _keeps_matter(cells: list[_Cell], selection: Selection) -> None:
    """A keep rule that only ever applies under `budget = full` is a mistake: it keeps nothing
    that would not be kept anyway (the section probably needs a budget of its own)."""
    matters: dict[tuple[str, ast.Loc], bool] = {}
    for cell in cells:
        budget = cell.fields.get("budget", (None, cell.origin))[0]
        full = isinstance(budget, RBudget) and budget.kind == "full" and "select" not in cell.fields
        for kind in ("sink", "recent"):
            if kind in cell.fields:
                key = (kind, cell.fields[kind][1])
                matters[key] = matters.get(key, False) or not full
    for (kind, loc), ok in matters.items():
        if not ok:
            selection.reporter.error(
                loc,
                f"keep {kind} has no effect: the budget is full wherever it applies",
                "give this block a budget, such as budget = sink + recent, or remove the keep rule",
            )


def _apply(
    sections: list[ast.CacheSection], domain: frozenset[Pair], cells: dict[Pair, _Cell], selection: Selection
) -> None:
    """Override the cells each section selects, in source order, nested ones after their parent."""
    for section in sections:
        if section.selector.kind == "rest":
            selection.reporter.error(
                section.selector.loc,
                "a cache has no `rest` section",
                "the rules outside any section already apply to whatever no section selects",
            )
            continue
        pairs = selection.select(section.selector, "kv_heads", domain)
        if pairs is None:
            continue
        rules = _rules(section.items, selection)
        for pair in pairs:
            cells[pair].fields.update(rules)
            cells[pair].origin = section.loc
        _apply([i for i in section.items if isinstance(i, ast.CacheSection)], pairs, cells, selection)


def _grouped(cells: dict[Pair, _Cell], selection: Selection) -> list[CachePolicy]:
    """One CachePolicy per (rules, origin) and block of layers with the same KV heads."""
    groups: dict[tuple, list[Pair]] = {}
    for pair, cell in cells.items():
        key = (tuple(sorted((k, repr(v[0])) for k, v in cell.fields.items())), cell.origin)
        groups.setdefault(key, []).append(pair)
    policies = []
    for pairs in sorted(groups.values(), key=min):
        cell = cells[pairs[0]]
        policy = _policy(cell.fields, cell.origin, selection)
        if policy is None:
            continue
        for layers, kv_heads in blocks(pairs):
            policies.append(policy.model_copy(update={"layers": layers, "kv_heads": kv_heads}))
    return policies


# ---------------------------------------------------------------- one block's rules


def _rules(items: list, selection: Selection) -> dict[str, Field]:
    """The rules one block writes itself (not its sections), each evaluated."""
    fields: dict[str, Field] = {}
    for item in items:
        if isinstance(item, ast.CacheSection):
            continue
        key = (
            item.kind
            if isinstance(item, ast.Keep)
            else item.name
            if isinstance(item, ast.Setting)
            else type(item).__name__.lower()
        )
        if key in fields:
            selection.reporter.error(
                item.loc,
                f"{_rule_name(key)} is given twice in this block",
                f"the first is on line {fields[key][1].line}",
            )
            continue
        # A rule that failed (already reported) is kept as None: policies using it are skipped.
        fields[key] = (_evaluate(item, selection), item.loc)
    return fields


def _rule_name(key: str) -> str:
    return f"keep {key}" if key in ("sink", "recent") else key


def _selects(fields: dict[str, Field], selection: Selection) -> bool | None:
    """Whether a selection is in force; None after reporting a rule it cannot go with
    (selection keeps the whole cache: no budget but full, no evict)."""
    if fields.get("select", (None,))[0] is None:
        return False
    loc = fields["select"][1]
    budget = _value(fields, "budget", None)
    if budget is not None and budget.kind != "full":
        selection.reporter.error(
            loc,
            "select keeps the whole cache and reads a budget of it per step: it cannot go with a cache budget",
            "remove the budget here (or write budget = full); the select's own budget is what each step reads",
        )
        return None
    if _value(fields, "evict", None) is not None:
        selection.reporter.error(
            loc, "select keeps the whole cache: it cannot go with an evict rule", "remove the evict rule or the select"
        )
        return None
    return True


def _evaluate(item: object, selection: Selection) -> object | None:
    if isinstance(item, ast.Budget):
        return _budget(item, selection)
    if isinstance(item, ast.Keep):
        return _positive(item.size, f"keep {item.kind}", selection, minimum=0)
    if isinstance(item, ast.Evict):
        return _evict(item, selection)
    if isinstance(item, ast.Setting):
        return _setting(item, selection)
    if isinstance(item, ast.Select):
        return _select(item, selection)
    return None


def _select(item: ast.Select, selection: Selection) -> RSelect | None:
    """`select quest(4096, page = 16, bits = 8)`, `select mean(4096, page = 16)`, `select
    tokens(2048)`: the tokens each step reads (besides the keep rules), the page size, and the
    bits of quest's page summaries."""
    known = SELECT_SCORES.get(item.score)
    if known is None:
        hint = suggest(item.score, SELECT_SCORES) or f"the selection scores are {one_of(SELECT_SCORES)}"
        selection.reporter.error(item.loc, f"unknown selection score '{item.score}'", hint)
        return None
    example = f"select {item.score}(4096{', page = 16' if 'page' in known else ''})"
    budgets = [o for o in item.options if o.name is None]
    if len(budgets) != 1:
        where = budgets[1].loc if len(budgets) > 1 else item.loc
        selection.reporter.error(
            where, f"select {item.score} takes one budget: the tokens each step reads", f"as in {example}"
        )
        return None
    values: dict[str, int] = {}
    for option in item.options:
        name = option.name or "budget"
        if name != "budget" and (name not in known or name in values):
            _bad_option(option, item.score, tuple(k for k in known if k != "budget"), selection)
            return None
        value = _positive(option.value, f"{item.score}'s {name}", selection)
        if value is None:
            return None
        values[name] = value
    page = values.get("page", 16)
    if page not in PAGE_SIZES:
        selection.reporter.error(
            item.loc, f"a page of {page} tokens is not supported", f"the page sizes are {one_of(PAGE_SIZES)}"
        )
        return None
    bits = values.get("bits", 16)
    if bits not in SUMMARY_BITS:
        selection.reporter.error(
            item.loc, f"quest's summaries of {bits} bits are not supported", f"bits is {one_of(SUMMARY_BITS)}"
        )
        return None
    return RSelect(score=item.score, budget=values["budget"], page=page, bits=bits)  # type: ignore[arg-type]


def _positive(expr: ast.ArgValue, what: str, selection: Selection, minimum: int = 1) -> int | None:
    """An integer option that must be at least `minimum`; a bare word is read as a param."""
    if isinstance(expr, ast.Word):
        value = selection.ints.value(expr.name, expr.loc)
    elif isinstance(expr, (ast.BoolLit, ast.TupleLit)):
        selection.reporter.error(expr.loc, f"{what} must be an integer")
        return None
    else:
        value = selection.ints.eval(expr)
    if value is not None and value < minimum:
        selection.reporter.error(expr.loc, f"{what} must be at least {minimum}, got {value}")
        return None
    if value is not None and position_problem(value, what):
        selection.reporter.error(
            expr.loc,
            str(position_problem(value, what)),
            "cache sizes lie within 2**30 tokens (docs/language.md, Limits)",
        )
        return None
    return value


def _budget(budget: ast.Budget, selection: Selection) -> RBudget | None:
    if budget.kind == "full":
        return RBudget(kind="full")
    if budget.kind == "tokens":
        tokens = _positive(budget.values[0], "the budget", selection)
        return None if tokens is None else RBudget(kind="tokens", tokens=tokens)
    if budget.kind == "list":
        return _budget_list(budget, selection)
    if budget.kind == "linear":
        return _budget_linear(budget, selection)
    return _budget_adaptive(budget, selection)


def _budget_list(budget: ast.Budget, selection: Selection) -> RBudget | None:
    values = [_positive(v, "a budget", selection) for v in budget.values]
    if any(v is None for v in values):
        return None
    layers = selection.shape.layers
    if layers is None:
        selection.reporter.error(budget.loc, "a list budget needs the model's layer count", give_model("layers"))
        return None
    if len(values) != layers:
        selection.reporter.error(
            budget.loc,
            f"the budget lists {len(values)} values, but the model has {layers} layers",
            "give one budget per layer",
        )
        return None
    return RBudget(kind="list", per_layer=tuple(values))  # type: ignore[arg-type]


def _budget_linear(budget: ast.Budget, selection: Selection) -> RBudget | None:
    """`linear(first, last)`, positional or by keyword."""
    given: dict[str, ast.ArgValue] = dict(zip(("first", "last"), budget.values, strict=False))
    for option in budget.options:
        if option.name not in ("first", "last") or option.name in given:
            _bad_option(option, "linear", ("first", "last"), selection)
            return None
        given[option.name] = option.value  # type: ignore[index, assignment]
    if len(budget.values) > 2 or set(given) != {"first", "last"}:
        selection.reporter.error(
            budget.loc,
            "linear takes a first and a last budget",
            "as in linear(2048, 256): layer 0 gets 2048, the last layer 256",
        )
        return None
    first, last = (_positive(given[k], f"linear's {k}", selection) for k in ("first", "last"))
    return None if first is None or last is None else RBudget(kind="linear", first=first, last=last)


def _budget_adaptive(budget: ast.Budget, selection: Selection) -> RBudget | None:
    """`adaptive(M, by = cake)`: M tokens per layer on average, shared out by the allocator."""
    if len(budget.values) != 1:
        selection.reporter.error(
            budget.loc, "adaptive takes one mean budget per layer", "as in adaptive(512, by = cake)"
        )
        return None
    by = "cake"
    for option in budget.options:
        if option.name != "by":
            _bad_option(option, "adaptive", ("by",), selection)
            return None
        by = _word(option, ALLOCATORS, selection) or ""
    tokens = _positive(budget.values[0], "the budget", selection)
    return None if tokens is None or not by else RBudget(kind="adaptive", tokens=tokens, by=by)


def _evict(evict: ast.Evict, selection: Selection) -> REvict | None:
    schema = SCORES.get(evict.score)
    if schema is None:
        hint = suggest(evict.score, SCORES) or f"the scores are {one_of(SCORES)}"
        selection.reporter.error(evict.loc, f"unknown eviction score '{evict.score}'", hint)
        return None
    options = {name: default for name, (default, _) in schema.items()}
    ok = True
    for option in evict.options:
        value = _evict_option(evict.score, schema, option, selection)
        ok = ok and value is not None
        options[option.name or ""] = value
    timing = evict.timing or DEFAULT_TIMING[evict.score]
    return REvict(score=evict.score, options=options, timing=timing) if ok else None  # type: ignore[arg-type]


def _evict_option(score: str, schema: dict, option: ast.Arg, selection: Selection) -> object | None:
    if option.name is None:
        selection.reporter.error(
            option.loc, f"{score}'s options are named", "as in snapkv(window = 32, pool = max, kernel = 7)"
        )
        return None
    if option.name not in schema:
        _bad_option(option, score, tuple(schema), selection)
        return None
    words = schema[option.name][1]
    if words is not None:
        return _word(option, words, selection)
    return _positive(option.value, f"{score}'s {option.name}", selection)


def _bad_option(option: ast.Arg, owner: str, known: tuple[str, ...], selection: Selection) -> None:
    if not known:
        selection.reporter.error(option.loc, f"{owner} takes no options")
        return
    hint = suggest(option.name or "", known) or f"{owner}'s options are {one_of(known)}"
    selection.reporter.error(option.loc, f"{owner} has no option '{option.name}'", hint)


def _word(option: ast.Arg, words: tuple[str, ...], selection: Selection) -> str | None:
    value = option.value
    if isinstance(value, ast.Word) and value.name in words:
        return value.name
    shown = f"'{value.name}'" if isinstance(value, ast.Word) else "this value"
    hint = (suggest(value.name, words) if isinstance(value, ast.Word) else None) or f"{option.name} is {one_of(words)}"
    selection.reporter.error(value.loc, f"{option.name} cannot be {shown}", hint)
    return None


def _setting(setting: ast.Setting, selection: Selection) -> str | None:
    allowed = SETTINGS[setting.name]
    if setting.value in allowed:
        return setting.value
    hint = suggest(setting.value, allowed) or f"{setting.name} is {one_of(allowed)}"
    selection.reporter.error(setting.loc, f"{setting.name} cannot be '{setting.value}'", hint)
    return None


# ---------------------------------------------------------------- the policy in force


def _policy(fields: dict[str, Field], origin: ast.Loc, selection: Selection) -> CachePolicy | None:
    """Defaults filled in and the rules checked against each other.

    A rule that failed to evaluate (already reported) is None: the checks that do not
    depend on it still run, and no policy is made.
    """
    failed = {key for key, (value, _) in fields.items() if value is None}
    selects = _selects(fields, selection)
    if selects is None:
        return None
    if selects:
        fields = {**fields, "budget": (RBudget(kind="full"), fields["select"][1])}
    sink = _value(fields, "sink", 0) or 0
    recent = _value(fields, "recent", 0) or 0
    keep = sink + recent
    budget = _value(fields, "budget", None)
    if budget is None and "budget" not in failed:
        budget = RBudget(kind="tokens", tokens=keep) if keep else RBudget(kind="full")
    evicts = _value(fields, "evict", None) is not None or "evict" in failed
    where = fields.get("budget", fields.get("recent", fields.get("sink", (None, origin))))[1]
    if budget is None or failed & {"sink", "recent"}:
        return None
    if keep > INT64_MAX:
        selection.reporter.error(where, f"sink {sink} + recent {recent} does not fit in 64 bits")
        return None
    if not _budget_fits(budget, sink, recent, evicts, where, selection) or failed:
        return None
    evict = _value(fields, "evict", None) if budget.kind != "full" else None
    return CachePolicy(
        budget=budget,
        sink=sink,
        recent=recent,
        evict=evict,
        select=_value(fields, "select", None),
        aggregate=_value(fields, "aggregate", "mean"),
        positions=_value(fields, "positions", "original"),
        loc=origin,
    )


def _value(fields: dict[str, Field], key: str, default: Any) -> Any:
    return fields[key][0] if key in fields else default


def _budget_fits(budget: RBudget, sink: int, recent: int, evicts: bool, where: ast.Loc, selection: Selection) -> bool:
    """The budget holds the keep rules, and without eviction holds nothing else."""
    if budget.kind == "full":
        return True
    values = {"tokens": [budget.tokens], "adaptive": [budget.tokens], "linear": [budget.first, budget.last]}.get(
        budget.kind, list(budget.per_layer)
    )
    keep = sink + recent
    smallest = min(v for v in values if v is not None)
    if smallest < keep:
        selection.reporter.error(
            where,
            f"the budget of {smallest} tokens is smaller than its keep rules: sink {sink} + recent {recent} = {keep}",
            "raise the budget or keep fewer tokens",
        )
        return False
    if not evicts and (budget.kind != "tokens" or smallest > keep):
        kept = f"sink {sink} + recent {recent} = {keep} tokens" if keep else "no keep rules"
        what = f"a budget of {smallest} tokens" if budget.kind == "tokens" else f"a {budget.kind} budget"
        selection.reporter.error(
            where,
            f"{what} needs an evict rule: without one, a cache keeps exactly its keep rules ({kept})",
            "add an evict rule, as in evict snapkv at prefill, or make the budget sink + recent",
        )
        return False
    return True
