"""Text to syntax tree: `parse(text, filename) -> ast.File`, every node with its `Loc`.

lark parses with the LALR grammar in `grammar.lark`; `_Builder` turns lark's tree into the
pydantic models of `spec.ast`. Syntax errors become an `AttnError` phrased in the language's
terms (see `spec.syntax`). The few checks that the syntax tree's types need (a `keep` of
`sink` or `recent`, a budget schedule `linear` or `adaptive`, the fields of `model`) are
made here and reported together; everything else is checked by `spec.resolve`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedInput, VisitError
from lark.tree import Meta

from . import ast
from .errors import AttnError, Reporter, one_of, suggest
from .primitives import PRIMITIVES
from .syntax import syntax_diagnostic

MODEL_FIELDS = ("layers", "heads", "kv_heads", "head_dim")
KEEP_KINDS = ("sink", "recent")
TIMINGS = ("prefill", "decode")
BUDGET_SCHEDULES = ("linear", "adaptive")
MAX_DEPTH = 100
"""Deepest nesting of expressions or sections: deeper files are surely generated junk, and
the later stages recurse over the tree. A chain of one associative operator (`a | b | c`)
is stored as a balanced tree, so n terms nest only about log2(n) levels."""
MAX_TERMS = 4096
"""Most terms in one chain of `|` or of `&` (a longer one is surely generated junk)."""
INT64_MAX = 2**63 - 1


@lru_cache(maxsize=1)
def grammar() -> Lark:
    """The LALR parser, built once per process (lark keeps the built tables in a file of the
    temporary directory, keyed by the grammar, so later processes load them instead)."""
    text = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(text, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=False, cache=True)


@lru_cache(maxsize=1)
def literals() -> dict[str, str]:
    """Terminal name -> its text, for every keyword and punctuation terminal."""
    return {t.name: t.pattern.value for t in grammar().terminals if t.pattern.type == "str"}


@lru_cache(maxsize=1)
def reserved_words() -> frozenset[str]:
    """The grammar's keywords, which can never be used as names."""
    return frozenset(v for v in literals().values() if v.isidentifier())


def parse(text: str, filename: str = "<string>") -> ast.File:
    """Parse one `.attn` file; raise `AttnError` on the first syntax error. A leading
    UTF-8 byte-order mark is ignored."""
    text = text.removeprefix("\ufeff")
    reporter = Reporter()
    reporter.add_source(filename, text)
    try:
        tree = grammar().parse(text)
    except UnexpectedInput as exc:
        reporter.extend([syntax_diagnostic(exc, text, filename, literals())])
        reporter.raise_if_any()
        raise  # unreachable: raise_if_any raised
    builder = _Builder(filename, reporter)
    try:
        result = builder.transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, AttnError):
            raise exc.orig_exc from None
        raise
    reporter.raise_if_any()
    return result


@v_args(meta=True)
class _Builder(Transformer_NonRecursive):
    """lark tree -> `spec.ast` models. One method per grammar rule (or alias)."""

    def __init__(self, filename: str, reporter: Reporter):
        super().__init__()
        self.filename = filename
        self.reporter = reporter
        self.depth: dict[int, int] = {}
        self.chains: dict[int, tuple[ast.SetOp, list[Any], int]] = {}
        """Unbalanced `|` and `&` chains not yet consumed: id -> (node, terms, deepest term)."""
        self.alive: list[Any] = []
        """Nodes whose ids key `depth` or `chains`, kept alive so that no new node reuses an id."""

    # ---------------------------------------------------------------- helpers

    def loc(self, meta: Meta) -> ast.Loc:
        if getattr(meta, "empty", True) or meta.line is None or meta.column is None:
            return ast.Loc(file=self.filename, line=1, col=1)
        return ast.Loc(
            file=self.filename, line=meta.line, col=meta.column, end_line=meta.end_line, end_col=meta.end_column
        )

    def tok_loc(self, tok: Token) -> ast.Loc:
        return ast.Loc(
            file=self.filename, line=tok.line or 1, col=tok.column or 1, end_line=tok.end_line, end_col=tok.end_column
        )

    def nested(self, node: Any, *children: Any) -> Any:
        """Record how deep `node` nests; stop at MAX_DEPTH before later stages recurse too far."""
        depth = 1 + max((self.depth.get(id(c), 0) for c in children), default=0)
        self.depth[id(node)] = depth
        if depth > MAX_DEPTH:
            self.reporter.error(node.loc, f"expression or sections nested more than {MAX_DEPTH} levels deep")
            self.reporter.raise_if_any()
        return node

    # ---------------------------------------------------------------- statements

    def start(self, meta: Meta, statements: list[ast.Statement]) -> ast.File:
        return ast.File(loc=ast.Loc(file=self.filename, line=1, col=1), path=self.filename, statements=statements)

    def import_stmt(self, meta: Meta, c: list[Token]) -> ast.Import:
        return ast.Import(loc=self.loc(meta), path=c[0][1:-1])

    def headsets_stmt(self, meta: Meta, c: list[Token]) -> ast.HeadSets:
        return ast.HeadSets(loc=self.loc(meta), path=c[0][1:-1])

    def param_stmt(self, meta: Meta, c: list[Any]) -> ast.Param:
        return ast.Param(loc=self.loc(meta), name=str(c[0]), value=c[1])

    def model_stmt(self, meta: Meta, fields: list[tuple[Token, ast.IntExpr]]) -> ast.ModelDecl:
        seen: set[str] = set()
        for key, _ in fields:
            if key not in MODEL_FIELDS:
                hint = suggest(key, MODEL_FIELDS) or f"the model's fields are {one_of(MODEL_FIELDS)}"
                self.reporter.error(self.tok_loc(key), f"unknown model field '{key}'", hint)
            elif key in seen:
                self.reporter.error(self.tok_loc(key), f"model field '{key}' is given twice")
            seen.add(str(key))
        return ast.ModelDecl(loc=self.loc(meta), fields=[(str(k), v) for k, v in fields])

    def model_field(self, meta: Meta, c: list[Any]) -> tuple[Token, ast.IntExpr]:
        return c[0], c[1]

    def model_key(self, meta: Meta, c: list[Token]) -> Token:
        return c[0]

    def grid_stmt(self, meta: Meta, c: list[Any]) -> ast.GridDecl:
        prefix = c[-1][1] if c and isinstance(c[-1], tuple) else None
        dims = [x for x in c if not isinstance(x, tuple)]
        return ast.GridDecl(loc=self.loc(meta), dims=dims, prefix=prefix)

    def grid_prefix(self, meta: Meta, c: list[Any]) -> tuple[str, ast.IntExpr]:
        return ("prefix", c[0])

    def let_stmt(self, meta: Meta, c: list[Any]) -> ast.Let:
        return ast.Let(loc=self.loc(meta), name=str(c[0]), expr=self.balanced(c[1]))

    def pattern_expr(self, meta: Meta, c: list[Any]) -> ast.PatternDecl:
        return ast.PatternDecl(loc=self.loc(meta), name=str(c[0]), body=self.balanced(c[1]))

    def pattern_sections(self, meta: Meta, c: list[Any]) -> ast.PatternDecl:
        return ast.PatternDecl(loc=self.loc(meta), name=str(c[0]), body=c[1:])

    def psection_expr(self, meta: Meta, c: list[Any]) -> ast.PatternSection:
        return ast.PatternSection(loc=self.loc(meta), selector=c[0], body=self.balanced(c[1]))

    def psection_nested(self, meta: Meta, c: list[Any]) -> ast.PatternSection:
        node = ast.PatternSection(loc=self.loc(meta), selector=c[0], body=c[1:])
        return self.nested(node, *c[1:])

    # ---------------------------------------------------------------- selectors

    def selector(self, meta: Meta, c: list[Any]) -> ast.Selector:
        return ast.Selector(loc=self.loc(meta), kind=cast(Any, str(c[0])), items=c[1:])

    def rest_selector(self, meta: Meta, c: list[Any]) -> ast.Selector:
        return ast.Selector(loc=self.loc(meta), kind="rest", items=[])

    def selector_kind(self, meta: Meta, c: list[Token]) -> str:
        return str(c[0])

    def range_item(self, meta: Meta, c: list[Any]) -> ast.IndexRange:
        return ast.IndexRange(loc=self.loc(meta), start=c[0], stop=c[1])

    def index_item(self, meta: Meta, c: list[Any]) -> ast.IndexRange:
        return ast.IndexRange(loc=self.loc(meta), start=c[0])

    def headset_item(self, meta: Meta, c: list[Token]) -> ast.HeadSetRef:
        return ast.HeadSetRef(loc=self.loc(meta), name=str(c[0]))

    # ---------------------------------------------------------------- pattern expressions

    def _setop(self, op: str, meta: Meta, c: list[Any]) -> ast.SetOp:
        """`-` nests as written; `|` and `&` extend a chain that `balanced` turns into a tree."""
        if op == "-":
            left, right = self.balanced(c[0]), self.balanced(c[1])
            return self.nested(ast.SetOp(loc=self.loc(meta), op="-", left=left, right=right), left, right)
        node = ast.SetOp(loc=self.loc(meta), op=cast(Any, op), left=c[0], right=c[1])
        (left, left_deepest), (right, right_deepest) = self._terms(op, c[0]), self._terms(op, c[1])
        terms, deepest = left + right if len(left) < len(right) else left, max(left_deepest, right_deepest)
        if terms is left:
            left.extend(right)  # the left chain is consumed: grow it in place (linear time)
        if len(terms) > MAX_TERMS:
            self.reporter.error(
                node.loc,
                f"more than {MAX_TERMS} terms joined by '{op}'",
                "write a shorter expression, or name parts of it with let",
            )
            self.reporter.raise_if_any()
        self.chains[id(node)] = (node, terms, deepest)
        self.alive.append(node)
        self.depth[id(node)] = deepest + (len(terms) - 1).bit_length()
        if self.depth[id(node)] > MAX_DEPTH:
            self.reporter.error(node.loc, f"expression or sections nested more than {MAX_DEPTH} levels deep")
            self.reporter.raise_if_any()
        return node

    def _terms(self, op: str, expr: Any) -> tuple[list[Any], int]:
        """The terms of `expr` as part of an `op` chain and their deepest nesting: its own
        chain's, else `expr` itself (balanced)."""
        chain = self.chains.get(id(expr))
        if chain is not None and chain[0] is expr and expr.op == op:
            del self.chains[id(expr)]
            return chain[1], chain[2]
        term = self.balanced(expr)
        return [term], self.depth.get(id(term), 0)

    def balanced(self, expr: Any) -> Any:
        """`expr` with its `|` or `&` chain (if it is one) as a balanced tree of the same terms
        in the same order; the root keeps the chain's location."""
        chain = self.chains.pop(id(expr), None)
        if chain is None or chain[0] is not expr:
            return expr
        return self._tree(expr.op, chain[1], expr.loc)

    def _tree(self, op: str, terms: list[Any], loc: ast.Loc | None = None) -> Any:
        if len(terms) == 1:
            return terms[0]
        mid = (len(terms) + 1) // 2
        left, right = self._tree(op, terms[:mid]), self._tree(op, terms[mid:])
        loc = loc or left.loc.model_copy(update={"end_line": right.loc.end_line, "end_col": right.loc.end_col})
        node = ast.SetOp(loc=loc, op=cast(Any, op), left=left, right=right)
        self.alive.append(node)
        self.depth[id(node)] = 1 + max(self.depth.get(id(left), 0), self.depth.get(id(right), 0))
        return node

    def union(self, meta: Meta, c: list[Any]) -> ast.SetOp:
        return self._setop("|", meta, c)

    def intersection(self, meta: Meta, c: list[Any]) -> ast.SetOp:
        return self._setop("&", meta, c)

    def difference(self, meta: Meta, c: list[Any]) -> ast.SetOp:
        return self._setop("-", meta, c)

    def call(self, meta: Meta, c: list[Any]) -> ast.Prim | ast.PatternRef:
        """`name(args)` is a primitive; a bare name is one when it is a primitive's name."""
        name, args = str(c[0]), c[1:]
        if args or name in PRIMITIVES:
            return self.nested(ast.Prim(loc=self.loc(meta), name=name, args=args), *args)
        return ast.PatternRef(loc=self.loc(meta), name=name)

    def select_word(self, meta: Meta, c: list[Any]) -> str:
        """`select(...)` in a pattern: the selection primitive, though `select` is a keyword."""
        return "select"

    def kwarg(self, meta: Meta, c: list[Any]) -> ast.Arg:
        return self.nested(ast.Arg(loc=self.loc(meta), name=str(c[0]), value=c[1]), c[1])

    def posarg(self, meta: Meta, c: list[Any]) -> ast.Arg:
        return self.nested(ast.Arg(loc=self.loc(meta), name=None, value=c[0]), c[0])

    def tuple_lit(self, meta: Meta, c: list[Any]) -> ast.TupleLit:
        return self.nested(ast.TupleLit(loc=self.loc(meta), items=c), *c)

    def true(self, meta: Meta, c: list[Any]) -> ast.BoolLit:
        return ast.BoolLit(loc=self.loc(meta), value=True)

    def false(self, meta: Meta, c: list[Any]) -> ast.BoolLit:
        return ast.BoolLit(loc=self.loc(meta), value=False)

    # ---------------------------------------------------------------- integer expressions

    def _binop(self, op: str, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self.nested(ast.BinOp(loc=self.loc(meta), op=cast(Any, op), left=c[0], right=c[1]), c[0], c[1])

    def add(self, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self._binop("+", meta, c)

    def sub(self, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self._binop("-", meta, c)

    def mul(self, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self._binop("*", meta, c)

    def floordiv(self, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self._binop("//", meta, c)

    def mod(self, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self._binop("%", meta, c)

    def pow(self, meta: Meta, c: list[Any]) -> ast.BinOp:
        return self._binop("**", meta, c)

    def neg(self, meta: Meta, c: list[Any]) -> ast.Neg:
        return self.nested(ast.Neg(loc=self.loc(meta), operand=c[0]), c[0])

    def pos(self, meta: Meta, c: list[Any]) -> ast.IntExpr:
        return c[0]

    def num(self, meta: Meta, c: list[Token]) -> ast.Num:
        digits = str(c[0]).replace("_", "")
        if len(digits) > 19 or int(digits) > INT64_MAX:
            self.reporter.error(
                self.loc(meta), f"integer {c[0]} does not fit in 64 bits", f"the largest integer is {INT64_MAX}"
            )
            return ast.Num(loc=self.loc(meta), value=0)
        return ast.Num(loc=self.loc(meta), value=int(digits))

    def ref(self, meta: Meta, c: list[Token]) -> ast.ParamRef:
        return ast.ParamRef(loc=self.loc(meta), name=str(c[0]))

    def model_ref(self, meta: Meta, c: list[Token]) -> ast.ParamRef:
        return ast.ParamRef(loc=self.loc(meta), name=str(c[0]))

    # ---------------------------------------------------------------- cache block

    def cache_stmt(self, meta: Meta, items: list[Any]) -> ast.CacheDecl:
        return ast.CacheDecl(loc=self.loc(meta), items=items)

    def cache_section(self, meta: Meta, c: list[Any]) -> ast.CacheSection:
        return self.nested(ast.CacheSection(loc=self.loc(meta), selector=c[0], items=c[1:]), *c[1:])

    def budget_item(self, meta: Meta, c: list[ast.Budget]) -> ast.Budget:
        return c[0].model_copy(update={"loc": self.loc(meta)})

    def budget_tokens(self, meta: Meta, c: list[Any]) -> ast.Budget:
        value = c[0]
        if isinstance(value, ast.ParamRef) and value.name == "full":
            return ast.Budget(loc=self.loc(meta), kind="full")
        return ast.Budget(loc=self.loc(meta), kind="tokens", values=[value])

    def budget_list(self, meta: Meta, c: list[Any]) -> ast.Budget:
        return ast.Budget(loc=self.loc(meta), kind="list", values=c)

    def budget_call(self, meta: Meta, c: list[Any]) -> ast.Budget:
        name, args = c[0], c[1:]
        kind = str(name)
        if kind not in BUDGET_SCHEDULES:
            hint = suggest(kind, (*BUDGET_SCHEDULES, "full")) or (
                "a budget is a number of tokens, full, linear(first, last), [a, b, ...] or adaptive(M, by = cake)"
            )
            self.reporter.error(self.tok_loc(name), f"unknown budget schedule '{name}'", hint)
            kind = "linear"
        values = [a.value for a in args if a.name is None]
        options = [_word_arg(a) for a in args if a.name is not None]
        return ast.Budget(loc=self.loc(meta), kind=cast(Any, kind), values=values, options=options)

    def keep_item(self, meta: Meta, c: list[Any]) -> ast.Keep:
        kind = str(c[0])
        if kind not in KEEP_KINDS:
            hint = suggest(kind, KEEP_KINDS) or "keep takes sink(S) or recent(R)"
            self.reporter.error(self.tok_loc(c[0]), f"unknown keep rule '{kind}'", hint)
            kind = "sink"
        return ast.Keep(loc=self.loc(meta), kind=cast(Any, kind), size=c[1])

    def evict_item(self, meta: Meta, c: list[Any]) -> ast.Evict:
        timing = c[-1][1] if isinstance(c[-1], tuple) else None
        options = [_word_arg(a) for a in c[1:] if isinstance(a, ast.Arg)]
        return ast.Evict(loc=self.loc(meta), score=str(c[0]), options=options, timing=timing)

    def evict_timing(self, meta: Meta, c: list[Token]) -> tuple[str, str | None]:
        if c[0] not in TIMINGS:
            hint = suggest(c[0], TIMINGS) or f"the timing is {one_of(TIMINGS)}"
            self.reporter.error(self.tok_loc(c[0]), f"unknown eviction timing '{c[0]}'", hint)
            return ("timing", None)
        return ("timing", str(c[0]))

    def select_item(self, meta: Meta, c: list[Any]) -> ast.Select:
        options = [_word_arg(a) for a in c[1:] if isinstance(a, ast.Arg)]
        return ast.Select(loc=self.loc(meta), score=str(c[0]), options=options)

    def setting_item(self, meta: Meta, c: list[Token]) -> ast.Setting:
        return ast.Setting(loc=self.loc(meta), name=str(c[0]), value=str(c[1]))

    def setting_name(self, meta: Meta, c: list[Token]) -> str:
        return str(c[0])


def _word_arg(arg: ast.Arg) -> ast.Arg:
    """An option such as `pool = max`: a bare name is a word here (resolve may still read
    it as a param where the option wants an integer)."""
    if isinstance(arg.value, ast.ParamRef):
        return arg.model_copy(update={"value": ast.Word(loc=arg.value.loc, name=arg.value.name)})
    return arg
