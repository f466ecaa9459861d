"""Named head sets (`@retrieval`) from a head-assignment JSON file.

A calibration (DuoAttention's, RazorAttention's) decides which KV heads are retrieval
heads; it writes them to a JSON object, one entry per set name, in one of two forms:

    {"retrieval": [0, 2]}                              the same KV heads in every layer
    {"retrieval": {"0": [0], "1": [1, 2]}}             per layer; a missing layer is empty

Indices are KV heads (for a model without GQA, KV heads are the query heads). `load`
checks the file's structure; `expand` checks it against the model and gives every set as
{layer: sorted KV heads} over all the model's layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .ast import Loc
from .errors import Reporter
from .files import read_text
from .names import name_problem
from .shape import Shape, span

FORMAT_HINT = 'a head-set file maps names to KV heads: {"retrieval": [0, 2]} or {"retrieval": {"0": [0], "1": [1, 2]}}'
MAX_BYTES = 16 * 2**20


@dataclass(frozen=True)
class HeadSet:
    """One set as written: `uniform` KV heads for every layer, or `per_layer` ones."""

    name: str
    loc: Loc
    uniform: tuple[int, ...] | None = None
    per_layer: dict[int, tuple[int, ...]] | None = None


def load(path: Path, shown_as: str, reporter: Reporter, used_at: Loc) -> dict[str, HeadSet] | None:
    """Read and check the structure of a head-set file; None after reporting a problem."""
    text = _read(path, reporter, used_at)
    if text is None:
        return None
    reporter.add_source(shown_as, text)
    data = _parse(text, shown_as, reporter)
    if data is None:
        return None
    if not isinstance(data, dict):
        reporter.error(Loc(file=shown_as, line=1, col=1), "a head-set file must hold a JSON object", FORMAT_HINT)
        return None
    sets = {}
    for name, value in data.items():
        head_set = _head_set(str(name), value, _key_loc(text, shown_as, str(name)), reporter)
        if head_set is not None:
            sets[head_set.name] = head_set
    return sets


def expand(sets: dict[str, HeadSet], shape: Shape, reporter: Reporter) -> dict[str, dict[int, tuple[int, ...]]]:
    """Every set as {layer: KV heads} over the model's layers, checked against its shape."""
    if shape.layers is None or shape.kv_heads is None:
        return {}
    return {
        head_set.name: _per_layer(head_set, shape.layers)
        for head_set in sets.values()
        if _in_model(head_set, shape.layers, shape.kv_heads, reporter)
    }


def _read(path: Path, reporter: Reporter, used_at: Loc) -> str | None:
    return read_text(path, reporter, used_at, "head-set file", str(path), MAX_BYTES)


class _Duplicate(ValueError):
    """A JSON object gives one key twice (json.loads would keep the last silently)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise _Duplicate(key)
    return dict(pairs)


def _parse(text: str, shown_as: str, reporter: Reporter) -> object | None:
    """The JSON value of a head-set file; None after reporting bad JSON, a repeated key or
    nesting too deep for the parser."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        first = _key_loc(text, shown_as, exc.key)
        second = _key_loc(text, shown_as, exc.key, after=first)
        reporter.error(
            second, f"key {json.dumps(exc.key)} appears twice in one object", "give each set (and each layer) once"
        )
    except RecursionError:
        reporter.error(Loc(file=shown_as, line=1, col=1), "JSON nested too deeply", FORMAT_HINT)
    except ValueError as exc:
        line, col = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
        reporter.error(
            Loc(file=shown_as, line=line, col=col), f"not valid JSON: {getattr(exc, 'msg', exc)}", FORMAT_HINT
        )
    return None


def _key_loc(text: str, file: str, name: str, after: Loc | None = None) -> Loc:
    """Where `"name"` first appears in the file (after `after`), for messages about that set."""
    start = 0 if after is None else _offset(text, after) + 1
    offset = text.find(json.dumps(name), start)
    if offset < 0:
        return Loc(file=file, line=1, col=1)
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Loc(file=file, line=line, col=col)


def _offset(text: str, loc: Loc) -> int:
    """The character offset of a line and column of `text`."""
    lines = text.split("\n")
    return sum(len(line) + 1 for line in lines[: loc.line - 1]) + loc.col - 1


def _head_set(name: str, value: object, loc: Loc, reporter: Reporter) -> HeadSet | None:
    problem = name_problem(name)
    if problem:
        reporter.error(loc, f"head set name {json.dumps(name)}: {problem[0]}", problem[1])
        return None
    if isinstance(value, list):
        heads = _indices(value, loc, reporter, f"head set '{name}'")
        return None if heads is None else HeadSet(name, loc, uniform=heads)
    if isinstance(value, dict):
        return _per_layer_set(name, value, loc, reporter)
    reporter.error(loc, f"head set '{name}' must be a list of KV heads or an object of layers", FORMAT_HINT)
    return None


def _per_layer_set(name: str, value: dict, loc: Loc, reporter: Reporter) -> HeadSet | None:
    layers: dict[int, tuple[int, ...]] = {}
    for key, heads in value.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) < 10):
            reporter.error(loc, f"head set '{name}': layer key {json.dumps(key)} is not a layer index", FORMAT_HINT)
            return None
        if not isinstance(heads, list):
            reporter.error(loc, f"head set '{name}': layer {key} must map to a list of KV heads", FORMAT_HINT)
            return None
        indices = _indices(heads, loc, reporter, f"head set '{name}', layer {key}")
        if indices is None:
            return None
        layers[int(key)] = indices
    return HeadSet(name, loc, per_layer=layers)


def _indices(values: list, loc: Loc, reporter: Reporter, what: str) -> tuple[int, ...] | None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in values):
        reporter.error(loc, f"{what} must list KV head indices (integers >= 0)", FORMAT_HINT)
        return None
    return tuple(sorted(set(values)))


def _per_layer(head_set: HeadSet, layers: int) -> dict[int, tuple[int, ...]]:
    if head_set.uniform is not None:
        return {layer: head_set.uniform for layer in range(layers)}
    given = head_set.per_layer or {}
    return {layer: given.get(layer, ()) for layer in range(layers)}


def _in_model(head_set: HeadSet, layers: int, kv_heads: int, reporter: Reporter) -> bool:
    """Whether every layer and KV head the set names exists in the model."""
    bad_layers = sorted(layer for layer, heads in (head_set.per_layer or {}).items() if layer >= layers and heads)
    if bad_layers:
        reporter.error(
            head_set.loc,
            f"head set '{head_set.name}' names layer {bad_layers[0]}, but the model has {layers} layers ({span(0, layers)})",
        )
        return False
    named = head_set.uniform or tuple(h for heads in (head_set.per_layer or {}).values() for h in heads)
    bad_heads = sorted(h for h in set(named) if h >= kv_heads)
    if bad_heads:
        reporter.error(
            head_set.loc,
            f"head set '{head_set.name}' names KV head {bad_heads[0]}, but the model has {kv_heads} KV heads ({span(0, kv_heads)})",
            "head sets list KV heads, not query heads",
        )
        return False
    return True
