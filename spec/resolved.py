"""A checked `.attn` file with every name resolved: what the compiler lowers.

`spec.resolve` produces a `Spec` from the syntax tree: parameters are integers, imports and
`let` names are inlined, primitive arguments are normalised to keyword form with defaults,
per-head and per-layer sections are resolved into explicit (layer, head) assignments, and
head sets are expanded. Locations survive so that later stages can still point at the text.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

from .ast import Loc

ArgScalar = Union[int, bool, str]
ArgValue = Union[int, bool, str, tuple[Union[int, bool], ...]]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class RPrim(Frozen):
    """A primitive with every argument named and evaluated.

    Normal forms (DESIGN.md's table; names of the keyword arguments):
      full, causal                      no arguments
      window(size) or window(left, right)
      sink(size)
      dilated(size, dilation)
      strided(stride)
      stride(stride, offset)
      chunk(size)
      global(size)
      band(lo, hi)
      power(block)
      neighborhood(kernel, dilation, causal, stride)   tuples, one value per grid axis
    `window(W)` is stored as `{"size": W}`; `window(left=L, right=R)` as `{"left": L, "right": R}`.
    """

    name: str
    args: dict[str, ArgValue]
    loc: Loc


class ROp(Frozen):
    op: Literal["|", "&", "-"]
    left: "RExpr"
    right: "RExpr"
    loc: Loc


RExpr = Union[RPrim, ROp]


class ModelShape(Frozen):
    """The model a pattern is compiled for; a field is None where neither file nor CLI gave it."""

    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None


class Grid(Frozen):
    """The token grid of a vision or video pattern; `prefix` text tokens come first."""

    dims: tuple[int, ...]
    prefix: int = 0


class Assignment(Frozen):
    """One pattern expression and the (layer, query head) pairs it applies to.

    `layers` and `heads` are None when the pattern is the same everywhere (no sections);
    otherwise explicit sorted tuples. Together, a Spec's assignments cover every
    (layer, head) of the model exactly once.
    """

    expr: RExpr
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    loc: Loc


class RBudget(Frozen):
    """A cache budget in tokens per KV head.

    kind `tokens`: `tokens` is the budget; `full`: no budget; `linear`: per layer from
    `first` to `last` (PyramidKV); `list`: one value per layer in `per_layer`;
    `adaptive`: `tokens` is the mean per layer and `by` names the allocator (CAKE).
    """

    kind: Literal["tokens", "full", "linear", "list", "adaptive"]
    tokens: int | None = None
    first: int | None = None
    last: int | None = None
    per_layer: tuple[int, ...] = ()
    by: str | None = None
    options: dict[str, ArgScalar] = {}

    def at_layer(self, layer: int, layers: int) -> int | None:
        """Tokens per KV head at `layer` of a model with `layers` layers; None for `full` and
        `adaptive` (the allocator decides at run time). A `list` needs one value per layer."""
        if self.kind == "tokens":
            return self.tokens
        if self.kind == "linear":
            assert self.first is not None and self.last is not None
            return (
                self.first if layers == 1 else int(round(self.first + (self.last - self.first) * layer / (layers - 1)))
            )
        if self.kind == "list":
            if len(self.per_layer) != layers:
                raise ValueError(
                    f"budget list has {len(self.per_layer)} values but the model has {layers} layers: "
                    "give one budget per layer"
                )
            return self.per_layer[layer]
        return None


class REvict(Frozen):
    """An eviction score: snapkv, h2o, tova or key_norm, with its options and timing."""

    score: Literal["snapkv", "h2o", "tova", "key_norm"]
    options: dict[str, ArgScalar]
    timing: Literal["prefill", "decode"]


class RSelect(Frozen):
    """Decode-time selection: each step reads the `budget` best tokens' worth of pages
    (`page` tokens each) by `score` (quest: Quest's bound from per-page channel min/max;
    mean: the page's mean key; tokens: exact top-k tokens, TokenSelect), plus the keep rules.
    bits: quest's summaries in the cache's dtype (16) or in float8 rounded outward (8)."""

    score: Literal["quest", "mean", "tokens"]
    budget: int
    page: int = 16
    bits: int = 16


class CachePolicy(Frozen):
    """The cache settings that apply to a set of (layer, KV head) pairs."""

    budget: RBudget
    sink: int = 0
    recent: int = 0
    evict: REvict | None = None
    select: RSelect | None = None
    aggregate: Literal["mean", "max", "sum"] = "mean"
    positions: Literal["original", "rerotate"] = "original"
    layers: tuple[int, ...] | None = None
    kv_heads: tuple[int, ...] | None = None
    loc: Loc


class Spec(Frozen):
    """A resolved `.attn` file."""

    source: str
    name: str
    params: dict[str, int]
    model: ModelShape
    grid: Grid | None = None
    assignments: tuple[Assignment, ...]
    cache: tuple[CachePolicy, ...] = ()
    head_sets: dict[str, dict[int, tuple[int, ...]]] = {}


ROp.model_rebuild()
Assignment.model_rebuild()
