"""The syntax tree of an `.attn` file, as written, with a source location on every node.

The parser (`spec.parser`) builds these models from text; `spec.resolve` evaluates
parameters, inlines imports and `let` names, and resolves per-head and per-layer sections
against the model shape, producing the `spec.resolved` models that the compiler lowers.
Nothing here is evaluated: `window(W - 4)` stays a `Prim` whose argument is a `BinOp`.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict


class Loc(BaseModel):
    """A position in a source file: 1-based line and column of a node's first character."""

    model_config = ConfigDict(frozen=True)
    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Node(BaseModel):
    """Base of every syntax node: immutable, with its location."""

    model_config = ConfigDict(frozen=True)
    loc: Loc


# ---------------------------------------------------------------- integer expressions


class Num(Node):
    value: int


class ParamRef(Node):
    """A use of a `param` (or `model` field) inside an integer expression."""

    name: str


class BinOp(Node):
    """Integer arithmetic: `//` and `%` floor like Python's."""

    op: Literal["+", "-", "*", "//", "%", "**"]
    left: IntExpr
    right: IntExpr


class Neg(Node):
    operand: IntExpr


IntExpr = Union[Num, ParamRef, BinOp, Neg]


class BoolLit(Node):
    value: bool


class Word(Node):
    """A bare word used as an argument value, such as `max` in `pool = max`."""

    name: str


class TupleLit(Node):
    """`(a, b, c)`: one value per grid axis, as in `kernel = (3, 11, 11)`."""

    items: list[Union[IntExpr, BoolLit]]


ArgValue = Union[Num, ParamRef, BinOp, Neg, BoolLit, Word, TupleLit]


class Arg(Node):
    """One argument of a call: positional when `name` is None."""

    name: str | None
    value: ArgValue


# ---------------------------------------------------------------- pattern expressions


class Prim(Node):
    """A primitive of DESIGN.md's table, such as `window(1024)` or `causal` (no arguments)."""

    name: str
    args: list[Arg]


class PatternRef(Node):
    """A use of a `let` name, or of the pattern of an imported file."""

    name: str


class SetOp(Node):
    """`|` union, `&` intersection, `-` difference."""

    op: Literal["|", "&", "-"]
    left: SetExpr
    right: SetExpr


SetExpr = Union[Prim, PatternRef, SetOp]


# ---------------------------------------------------------------- selectors and sections


class IndexRange(Node):
    """`a..b` is the half-open range a, a+1, ..., b-1; a single index when `stop` is None."""

    start: IntExpr
    stop: IntExpr | None = None


class HeadSetRef(Node):
    """`@retrieval`: a named head set, resolved from a head-assignment file."""

    name: str


class Selector(Node):
    """Which heads or layers a section covers.

    `heads` counts query heads, `kv_heads` counts KV heads (a KV head selects every
    query head of its GQA group), `layers` counts layers. `rest` covers whatever the
    sibling sections leave uncovered.
    """

    kind: Literal["heads", "kv_heads", "layers", "rest"]
    items: list[Union[IndexRange, HeadSetRef]] = []


class PatternSection(Node):
    selector: Selector
    body: Union[SetExpr, list["PatternSection"]]


class Let(Node):
    name: str
    expr: SetExpr


class PatternDecl(Node):
    """`pattern NAME = expr` or `pattern NAME { sections }`."""

    name: str
    body: Union[SetExpr, list[PatternSection]]


# ---------------------------------------------------------------- caches


class Budget(Node):
    """`budget = N`, `budget = full`, or a schedule over layers.

    `kind` is `tokens` (value), `full`, `linear` (values = [first, last], interpolated
    over layers as PyramidKV does), `list` (one value per layer), or `adaptive`
    (values = [mean per layer], allocated at run time by `by`, such as `cake`).
    """

    kind: Literal["tokens", "full", "linear", "list", "adaptive"]
    values: list[IntExpr] = []
    options: list[Arg] = []


class Keep(Node):
    """`keep sink(S)` or `keep recent(R)`: tokens that eviction never removes."""

    kind: Literal["sink", "recent"]
    size: IntExpr


class Evict(Node):
    """`evict snapkv(window = 32, pool = max, kernel = 7) at prefill`."""

    score: str
    options: list[Arg]
    timing: Literal["prefill", "decode"] | None = None


class Setting(Node):
    """`aggregate = mean` (GQA aggregation of scores) or `positions = rerotate`."""

    name: str
    value: str


class Select(Node):
    """`select quest(budget = 4096, page = 16)`: read only the pages (or tokens) that score
    best against each decode step's query; the cache itself keeps everything."""

    score: str
    options: list[Arg]


CacheItem = Union[Budget, Keep, Evict, Setting, Select]


class CacheSection(Node):
    selector: Selector
    items: list[Union[Budget, Keep, Evict, Setting, Select, "CacheSection"]]


class CacheDecl(Node):
    items: list[Union[Budget, Keep, Evict, Setting, Select, CacheSection]]


# ---------------------------------------------------------------- file level


class Param(Node):
    name: str
    value: IntExpr


class ModelDecl(Node):
    """`model { layers = 30, heads = 9, kv_heads = 3, head_dim = 64 }` (any subset)."""

    fields: list[tuple[str, IntExpr]]


class GridDecl(Node):
    """`grid(T, H, W)`, with an optional `prefix = P` of text tokens before the grid."""

    dims: list[IntExpr]
    prefix: IntExpr | None = None


class Import(Node):
    path: str


class HeadSets(Node):
    """`headsets "file.json"`: the file that resolves `@name` head sets."""

    path: str


Statement = Union[Param, ModelDecl, GridDecl, Import, HeadSets, Let, PatternDecl, CacheDecl]


class File(Node):
    path: str
    statements: list[Statement]


for _model in (BinOp, Neg, TupleLit, SetOp, PatternSection, CacheSection, CacheDecl, File):
    _model.model_rebuild()
