"""The model shape as the resolver uses it, and sets of (layer, head) pairs.

Sections of patterns and caches select sets of pairs: (layer, query head) for patterns,
(layer, KV head) for caches. When the model's layer count is unknown and nothing depends
on the layer, the layer of every pair is None ("all layers"). `blocks` groups a set of
pairs into rectangles (layers x heads) for `resolved.Assignment` and `CachePolicy`, and
`describe_pairs` names a set in error messages ("heads 4..9 in layers 0..30").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Pair = tuple["int | None", int]
Unit = Literal["heads", "kv_heads"]


@dataclass(frozen=True)
class Shape:
    """Layers, query heads and KV heads (kv_heads defaults to heads); None where unknown."""

    layers: int | None
    heads: int | None
    kv_heads: int | None

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size). Only valid when both counts are known."""
        return (self.heads or 1) // (self.kv_heads or 1)

    def layer_list(self) -> list[int | None]:
        return list(range(self.layers)) if self.layers is not None else [None]

    def count(self, unit: Unit) -> int | None:
        return self.heads if unit == "heads" else self.kv_heads

    def universe(self, unit: Unit) -> frozenset[Pair]:
        n = self.count(unit) or 0
        return frozenset((layer, h) for layer in self.layer_list() for h in range(n))

    def query_heads(self, kv_head: int) -> range:
        """The query heads that share one KV head (Hugging Face's repeat_kv layout)."""
        return range(kv_head * self.group, (kv_head + 1) * self.group)


def span(start: int, stop: int) -> str:
    """`a..b`, the half-open range a, a+1, ..., b-1 (`a` alone when it holds one value).

    The one notation of ranges in attnc: selectors in `.attn` files are written this way,
    and every message, summary and report prints ranges through this function, so that a
    printed range can be pasted back into a file."""
    return str(start) if stop == start + 1 else f"{start}..{stop}"


def ranges(indices: Iterable[int]) -> str:
    """`0..4, 6, 8..10`: sorted indices as half-open ranges (see `span`)."""
    values = sorted(set(indices))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(span(values[i], values[j] + 1))
        i = j + 1
    return ", ".join(parts)


def by_layer(pairs: Iterable[Pair]) -> dict[int | None, frozenset[int]]:
    rows: dict[int | None, set[int]] = defaultdict(set)
    for layer, head in pairs:
        rows[layer].add(head)
    return {layer: frozenset(heads) for layer, heads in rows.items()}


def blocks(pairs: Iterable[Pair]) -> list[tuple[tuple[int, ...] | None, tuple[int, ...]]]:
    """Group pairs into (layers, heads) rectangles: layers with the same heads go together.

    Layers are None when they are unknown (every pair's layer is None). Rectangles come
    in the order of their first layer.
    """
    groups: dict[frozenset[int], list[int | None]] = defaultdict(list)
    for layer, heads in sorted(by_layer(pairs).items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        groups[heads].append(layer)
    result = []
    for heads, layers in groups.items():
        layer_tuple = None if layers == [None] else tuple(layer for layer in layers if layer is not None)
        result.append((layer_tuple, tuple(sorted(heads))))
    return result


def describe_pairs(pairs: Iterable[Pair], unit: Unit, shape: Shape) -> str:
    """Pairs in words: `heads 4..9 in layers 0..30; head 2 in layer 5`."""
    word = "heads" if unit == "heads" else "KV heads"
    parts = []
    for layers, heads in blocks(pairs):
        noun = word if len(heads) > 1 else word[:-1]
        text = f"{noun} {ranges(heads)}"
        if layers is not None and len(layers) != shape.layers:
            text += f" in layer{'s' if len(layers) > 1 else ''} {ranges(layers)}"
        parts.append(text)
    return "; ".join(parts)
