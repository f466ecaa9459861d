"""What the analyses can say about a selection (docs/selection.md): the static part stays
exact, the selected part has bounds.

A selecting head attends its static pairs, which every analysis counts exactly, plus, per
query, the pairs of at most `top` chosen key blocks of `block` keys that its context allows:
at most top * block more pairs per row (for a mass budget, at most every pair the context
reaches). Which keys are chosen depends on q and k, so what a head reaches across layers
and which keys its cache must keep are bounded only by its reach: static | context, every
pair the head may ever attend (`HeadGroup.reach`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .count import count_pairs
from .ir import HeadGroup, Pattern

UNKNOWABLE = (
    "chosen at run time: the keys a selecting head reads, and so its receptive field and the keys its "
    "cache must keep, are known only up to its reach (static part or context); a selecting head keeps "
    "its whole reach in the cache unless a cache block says otherwise"
)


@dataclass(frozen=True)
class SelectionBounds:
    """Pairs of a selecting group at length n: exact for the static part, bounded for the rest."""

    selection: str
    static_pairs: int  # exact
    reach_pairs: int  # exact: every pair the group may attend
    best_pairs: int  # nothing chosen adds a pair (the static part)
    worst_pairs: int  # every row gains top * block pairs, within its reach
    best_formula: str | None
    worst_formula: str | None
    extra_per_row: int | None  # top * block, None for a mass budget

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "unknowable": UNKNOWABLE}


def _formula(p: Pattern) -> str | None:
    from .cost import NoFormula, pairs_formula  # sympy: only the analyses print formulas

    try:
        return str(pairs_formula(p).tail)
    except NoFormula:
        return None


def selection_bounds(group: HeadGroup, n: int) -> SelectionBounds | None:
    """The bounds of a group's pairs at length n, or None for a static group.

    Best case: the chosen blocks add nothing beyond the static part (a lower bound the kernel
    reaches when every candidate is empty). Worst case: each of the n rows gains
    top * block pairs, capped by the pairs the group can reach at all."""
    sel = group.selection
    if sel is None:
        return None
    static = count_pairs(group.pattern, n)
    reachable = count_pairs(group.reach, n)
    extra = sel.atom.budget_keys
    worst = reachable if extra is None else min(reachable, static + n * extra)
    from .formula import N

    best_f, reach_f = _formula(group.pattern), _formula(group.reach)
    worst_f = reach_f if extra is None or best_f is None else f"min({best_f} + {extra}*{N}, {reach_f})"
    return SelectionBounds(str(sel), static, reachable, static, worst, best_f, worst_f, extra)


def candidate_matrix(plan: Any, n: int, rows: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """[query blocks, key blocks] booleans: the key blocks each query block may choose from, by
    the rule the selection kernel runs (plan.SelectPlan: meets a context term's hull, not
    covered), on numpy. `rows`: the query blocks' (first, last) rows, default the blocks of
    n queries; a decode step is one block of its own rows (runtime/hf.py)."""
    b = plan.atom.block
    nb = -(-n // b)
    if rows is None:
        q0 = np.arange(nb, dtype=np.int64) * b
        rows = (q0, np.minimum(q0 + b, n) - 1)
    q0, q_last = (np.asarray(r, dtype=np.int64) for r in rows)
    env = {"q0": q0[:, None], "q_last": q_last[:, None]}
    jk0 = np.arange(nb, dtype=np.int64)[None, :] * b
    jk_last = np.minimum(jk0 + b, n) - 1
    cand = np.zeros((q0.shape[0], nb), dtype=bool)
    for hull in plan.reach:
        lo, hi, on = hull.at(env, n)
        cand |= (jk0 <= hi) & (jk_last >= lo) & (hi >= lo) & on
    for full in plan.covered:
        lo, hi, on = full.at(env, n)
        cand &= ~((jk0 >= lo) & (jk_last <= hi) & on)
    return cand


def candidate_counts(plan: Any, n: int) -> np.ndarray:
    """Per query block of the selection, how many key blocks it may choose from: the rule the
    selection kernel runs (plan.SelectPlan: meets a context term's hull, not covered), on numpy.

    Per query block each hull and each covered interval is a run of key blocks [a, e), so the
    count is a sweep over their ends (O(query blocks x intervals^2), no query x key matrix)."""
    b = plan.atom.block
    nb = -(-n // b)
    q0 = np.arange(nb, dtype=np.int64) * b
    env = {"q0": q0[:, None], "q_last": np.minimum(q0 + b, n)[:, None] - 1}
    runs = []  # (first block, end block, is a hull)
    for hull in plan.reach:
        lo, hi, on = _rows(hull.at(env, n), nb)
        ok = on & (hi >= lo)  # key blocks that meet [lo, hi]
        runs.append((np.where(ok, lo // b, 0), np.where(ok, hi // b + 1, 0), True))
    for full in plan.covered:
        lo, hi, on = _rows(full.at(env, n), nb)
        first = -(-lo // b)  # key blocks inside [lo, hi]; the last block ends at n - 1
        end = np.where(hi >= n - 1, nb, (hi + 1) // b)
        runs.append((first, np.where(on, np.maximum(end, first), first), False))
    if not runs:
        return np.zeros(nb, dtype=np.int64)
    ends = np.sort(np.stack([x for a, e, _ in runs for x in (a, e)], axis=1), axis=1)
    start, length = ends[:, :-1], np.diff(ends, axis=1)
    inside = {True: np.zeros(start.shape, dtype=bool), False: np.zeros(start.shape, dtype=bool)}
    for a, e, is_hull in runs:
        inside[is_hull] |= (a[:, None] <= start) & (start < e[:, None])
    return (length * (inside[True] & ~inside[False])).sum(1)


def _rows(bounds: tuple[Any, Any, Any], rows: int) -> list[np.ndarray]:
    """(lo, hi, on) of Bounds.at as one value per query block."""
    return [np.broadcast_to(np.asarray(x), (rows, 1)).ravel() for x in bounds]


def chosen_counts(plan: Any, n: int) -> np.ndarray:
    """Blocks chosen per query block at the budget: min(top, candidates); for a mass budget every
    candidate (the worst case: the share is known only at run time)."""
    cands = candidate_counts(plan, n)
    return np.minimum(cands, plan.atom.top) if plan.atom.top else cands


SELECT_FLOPS = 50e12  # FLOP/s of the scoring arithmetic (CUDA cores, float32): an estimate


def selection_seconds(
    plan: Any, n: int, batch: int, heads: int, kv_heads: int, head_dim: int, dtype_bytes: int, tbps: float
) -> float:
    """Predicted time of one selection (pooling, scores, top-k or mass) for a KV head group:
    q and k read once, block summaries and scores written and read back, the scoring arithmetic
    at SELECT_FLOPS (an estimate, not a calibration)."""
    atom = plan.atom
    nb = -(-n // atom.block)
    moved = batch * (heads + kv_heads) * n * head_dim * dtype_bytes + batch * kv_heads * nb * (nb + 3 * head_dim) * 4
    flops = 2.0 * batch * kv_heads * nb * nb * head_dim
    if atom.score == "antidiagonal":  # stride products per (query block, key block), every query head
        flops = 2.0 * batch * heads * (n / atom.stride) * n * head_dim / 2
        moved += batch * kv_heads * nb * n * head_dim * dtype_bytes  # keys re-read per query block
    if atom.score == "vslash":
        flops += 2.0 * batch * heads * min(atom.last, n) * n * head_dim
    return moved / (tbps * 1e12) + flops / SELECT_FLOPS
