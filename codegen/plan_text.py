"""The kernel plan (compiler/plan.py, data) as the texts the prefill template writes.

A term's key intervals are `Bounds` of affine `Key`s; here they become int32 scalar tensor
expressions over the query block's `q0`, `q_last`, the length `N` and a zero scalar
`zero`: `max(0, *lo)`, `min(N - 1, *hi)` and the conjunction of `on`. The views wrap the
plan records and add these texts (and the group's mask text) under the names the templates
read; everything else passes through.
"""

from __future__ import annotations

from typing import Any

from ..compiler.atoms import Bounds, Cond, Key, offset_text
from ..compiler.plan import GroupPlan, SelectPlan, SpanTerm, TermPlan
from . import masks


def key_text(key: Key) -> str:
    """`(var // step) * step + add` as text; a constant as its digits."""
    if key.var is None:
        return str(key.add)
    base = key.var if key.step == 1 else f"{key.var} // {key.step} * {key.step}"
    return offset_text(base, key.add)


def cond_text(cond: Cond) -> str:
    return f"({key_text(cond.left)} {cond.op} {key_text(cond.right)})"


def max_text(keys: tuple[Key, ...]) -> str:
    """max(0, *keys) as an int32 scalar tensor expression."""
    consts = [k.add for k in keys if k.var is None] + [0]
    texts = [key_text(k) for k in keys if k.var is not None]
    c = max(consts)
    if not texts:
        return f"zero + {c}" if c >= 0 else f"zero - {-c}"
    out = texts[0]
    for t in texts[1:]:
        out = f"tl.maximum({out}, {t})"
    return f"tl.maximum({out}, {c})"


def min_text(keys: tuple[Key, ...], ceil: str = "N - 1") -> str:
    """min(ceil, *keys) as an int32 scalar tensor expression."""
    consts = [k.add for k in keys if k.var is None]
    texts = [key_text(k) for k in keys if k.var is not None]
    if not texts:
        return f"zero + {ceil}" if not consts else f"tl.minimum(zero + {min(consts)}, {ceil})"
    out = texts[0]
    for t in texts[1:]:
        out = f"tl.minimum({out}, {t})"
    if consts:
        out = f"tl.minimum({out}, {min(consts)})"
    return f"tl.minimum({out}, {ceil})"


def on_text(conds: tuple[Cond, ...]) -> str:
    return " & ".join(dict.fromkeys(cond_text(c) for c in conds))


class _View:
    """A plan record with extra attributes; the rest of its fields pass through."""

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._record, name)


class TermText(_View):
    """A TermPlan (or a SpanTerm of the backward's plans) with its intervals as texts: lo, hi,
    on, full_lo, full_hi, full_on."""

    def __init__(self, term: TermPlan | SpanTerm) -> None:
        super().__init__(term)
        hull, full = term.hull, term.full_bounds
        self.lo, self.hi, self.on = max_text(hull.lo), min_text(hull.hi), on_text(hull.on)
        self.full_lo = max_text(full.lo) if full else ""
        self.full_hi = min_text(full.hi) if full else ""
        self.full_on = on_text(full.on) if full else ""


def _meets(lo: str, hi: str, on: str) -> str:
    """Key blocks [jk0, jk_last] that meet the interval [lo, hi] while `on` holds."""
    return f"((jk0 <= {hi}) & (jk_last >= {lo}) & ({hi} >= {lo}){' & ' + on if on else ''})"


def _within(lo: str, hi: str, on: str) -> str:
    """Key blocks [jk0, jk_last] inside [lo, hi] while `on` holds."""
    return f"((jk0 >= {lo}) & (jk_last <= {hi}){' & ' + on if on else ''})"


def _python(text: str) -> str:
    """A block rule's Triton text with Python's max and min, for plain integers."""
    return text.replace("tl.maximum(", "max(").replace("tl.minimum(", "min(")


def _blocks(side, yes: tuple[Bounds, ...], no: tuple[Bounds, ...], other) -> str:
    """Key blocks that `side` some interval of `yes` and `other` none of `no`, as text."""
    some = [side(max_text(b.lo), min_text(b.hi), on_text(b.on)) for b in yes] or ["(jk0 < 0)"]
    none = [other(max_text(b.lo), min_text(b.hi), on_text(b.on)) for b in no]
    return "(" + " | ".join(some) + ")" + (" & ~(" + " | ".join(none) + ")" if none else "")


class SelectText(_View):
    """A SelectPlan with its block rules as texts over the key blocks' first and last keys
    `jk0`, `jk_last` (vectors) and the query block's `q0`, `q_last`, `N`, `zero` (scalars):
    `candidates` (meets a context hull, not covered) for Triton, `candidates_py` with Python's
    max and min for the reference, which evaluates it per query block with plain integers;
    `clean` (within a context term's full interval, meeting no static hull), with `jk_last`
    the block's unclipped last key, so that a clean block lies before N."""

    def __init__(self, plan: SelectPlan) -> None:
        super().__init__(plan)
        self.candidates = _blocks(_meets, plan.reach, plan.covered, _within)
        self.candidates_py = _python(self.candidates)
        self.clean = _blocks(_within, plan.whole, plan.apart, _meets)
        self.clean_py = _python(self.clean)
        self.context_mask = masks.render_pattern(plan.context).text()
        self.spec = (plan.atom.score, plan.atom.top, plan.atom.mass, plan.atom.block, plan.atom.stride, plan.atom.last)


class GroupText(_View):
    """A GroupPlan with its terms as TermTexts and its predicate as MaskText (`masks`)."""

    @staticmethod
    def _title(index: int | str) -> str:
        """What a plan is, for docstrings: a group's, its residue plan's or its split plan's."""
        if isinstance(index, int):
            return f"Group {index}"
        role = {"r": "per residue class, on subsequences", "s": "less its residue term (first of two launches)"}
        return f"Group {index[:-1]} {role[index[-1]]}"

    def __init__(self, group: GroupPlan) -> None:
        super().__init__(group)
        self.terms = tuple(TermText(t) for t in group.terms)
        self.masks = masks.render_pattern(group.pattern)
        self.residue_plan = None if group.residue_plan is None else GroupText(group.residue_plan)
        self.split_plan = None if group.split_plan is None else GroupText(group.split_plan)
        self.title = self._title(group.index)
        self.select = None if group.select is None else SelectText(group.select)
        # the backward's span plans (compiler.plan.plan_columns / plan_rows), as TermTexts
        self.bwd_columns = () if group.columns is None else tuple(TermText(t) for t in group.columns.terms)
        self.bwd_rows = () if group.rows is None else tuple(TermText(t) for t in group.rows.terms)
