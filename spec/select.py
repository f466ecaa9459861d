"""Selectors (`heads 0..4, 8`, `kv_heads @retrieval`, `layers 2..30`) as sets of pairs.

`Selection.select` turns a selector into the (layer, head) pairs it covers inside the
section that encloses it. Pattern sections count query heads; cache sections count KV
heads. A `kv_heads` selector in a pattern covers every query head of its GQA group; a
`heads` selector in a cache must cover whole groups. Head sets hold KV heads, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ast
from .errors import Reporter, suggest
from .intexpr import IntScope, give_model
from .shape import Pair, Shape, Unit, span

HeadSets = dict[str, dict[int, tuple[int, ...]]]

_NEED = {
    "layers": "the model's layer count: " + give_model("layers"),
    "heads": "the model's head count: " + give_model("heads"),
}


@dataclass
class Selection:
    """What selectors are resolved against: the model, the head sets, the file's params."""

    shape: Shape
    head_sets: HeadSets | None
    """None when no head-set file was given; {} when its sets could not be checked."""
    ints: IntScope
    reporter: Reporter
    head_sets_failed: bool = False
    """The head-set file had problems (already reported): stay quiet about its sets."""

    def select(self, selector: ast.Selector, unit: Unit, domain: frozenset[Pair]) -> frozenset[Pair] | None:
        """The pairs of `domain` that `selector` covers, or None after reporting a problem."""
        if selector.kind == "layers":
            return self._layers(selector, domain)
        if selector.kind == "heads":
            return self._heads(selector, unit, domain)
        return self._kv_heads(selector, unit, domain)

    # ---------------------------------------------------------------- the three kinds

    def _layers(self, selector: ast.Selector, domain: frozenset[Pair]) -> frozenset[Pair] | None:
        if self._refuse_head_sets(selector, "layers"):
            return None
        layers = self._indices(selector, "layer", self.shape.layers, _NEED["layers"])
        return None if layers is None else frozenset(p for p in domain if p[0] in layers)

    def _heads(self, selector: ast.Selector, unit: Unit, domain: frozenset[Pair]) -> frozenset[Pair] | None:
        if self._refuse_head_sets(selector, "heads"):
            return None
        heads = self._indices(selector, "head", self.shape.heads, _NEED["heads"])
        if heads is None:
            return None
        if unit == "heads":
            return frozenset(p for p in domain if p[1] in heads)
        kv_heads = self._whole_groups(selector, heads)
        return None if kv_heads is None else frozenset(p for p in domain if p[1] in kv_heads)

    def _kv_heads(self, selector: ast.Selector, unit: Unit, domain: frozenset[Pair]) -> frozenset[Pair] | None:
        if self.shape.heads is None and self.shape.kv_heads is None:
            self.reporter.error(selector.loc, "a kv_heads section needs " + _NEED["heads"])
            return None
        ranges = [i for i in selector.items if isinstance(i, ast.IndexRange)]
        fixed = self._indices(selector.model_copy(update={"items": ranges}), "KV head", self.shape.kv_heads, "")
        sets = [self._head_set(i) for i in selector.items if isinstance(i, ast.HeadSetRef)]
        if fixed is None or any(s is None for s in sets):
            return None

        def per_layer(layer: int | None) -> set[int]:
            return fixed | {kv for s in sets for kv in s.get(layer, ())}  # type: ignore[union-attr, arg-type]

        if unit == "kv_heads":
            return frozenset(p for p in domain if p[1] in per_layer(p[0]))
        return frozenset(p for p in domain if p[1] // self.shape.group in per_layer(p[0]))

    # ---------------------------------------------------------------- helpers

    def _indices(self, selector: ast.Selector, noun: str, count: int | None, need: str) -> set[int] | None:
        """The indices named by a selector's ranges, each checked against `count`."""
        if count is None and selector.items:
            self.reporter.error(selector.loc, f"a {selector.kind} section needs {need}")
            return None
        indices: set[int] = set()
        ok = True
        for item in selector.items:
            values = self._range(item, noun, count or 0)  # type: ignore[arg-type]
            ok = ok and values is not None
            indices.update(values or ())
        return indices if ok else None

    def _range(self, item: ast.IndexRange, noun: str, count: int) -> range | None:
        start = self.ints.eval(item.start)
        if start is None:
            return None
        stop = start + 1 if item.stop is None else self.ints.eval(item.stop)
        if stop is None:
            return None
        if start >= stop:
            self.reporter.error(
                item.loc,
                f"the range {start}..{stop} is empty",
                "a..b covers a, a+1, ..., b-1, so b must be larger than a",
            )
            return None
        if start < 0 or stop > count:
            what = f"{noun} {start} is" if item.stop is None else f"{noun}s {span(start, stop)} are"
            self.reporter.error(item.loc, f"{what} outside the model's {count} {noun}s ({span(0, count)})")
            return None
        return range(start, stop)

    def _whole_groups(self, selector: ast.Selector, heads: set[int]) -> set[int] | None:
        """KV heads whose GQA groups `heads` covers; a partly covered group is an error."""
        kv_heads = set()
        for kv in range(self.shape.kv_heads or 0):
            group = set(self.shape.query_heads(kv))
            if group <= heads:
                kv_heads.add(kv)
            elif group & heads:
                self.reporter.error(
                    selector.loc,
                    f"a cache keeps whole KV heads, but these heads cover only part of KV head {kv} (query heads {span(min(group), max(group) + 1)})",
                    "select KV heads with kv_heads, or whole GQA groups of query heads",
                )
                return None
        return kv_heads

    def _head_set(self, ref: ast.HeadSetRef) -> dict[int, tuple[int, ...]] | None:
        if self.head_sets_failed:
            return None
        if self.head_sets is None:
            self.reporter.error(
                ref.loc,
                f"unknown head set '@{ref.name}': no head-set file was given",
                'name one with headsets "file.json" or --headsets FILE',
            )
            return None
        if self.shape.layers is None:
            self.reporter.error(ref.loc, "head sets need " + _NEED["layers"])
            return None
        if ref.name not in self.head_sets:
            hint = suggest(ref.name, self.head_sets) or (
                "the file's sets are " + ", ".join(sorted(self.head_sets)) if self.head_sets else None
            )
            self.reporter.error(ref.loc, f"unknown head set '@{ref.name}'", hint)
            return None
        return self.head_sets[ref.name]

    def _refuse_head_sets(self, selector: ast.Selector, kind: str) -> bool:
        refs = [i for i in selector.items if isinstance(i, ast.HeadSetRef)]
        if refs:
            self.reporter.error(
                refs[0].loc, f"head sets hold KV heads and cannot select {kind}", f"write kv_heads @{refs[0].name}"
            )
        return bool(refs)
