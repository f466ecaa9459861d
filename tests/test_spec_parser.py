"""The parser: every construct of the language becomes the syntax tree it should, with
locations, and operators group with Python's precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from attnc.spec import ast
from attnc.spec.errors import AttnError, Reporter
from attnc.spec.intexpr import IntScope
from attnc.spec.parser import parse, reserved_words

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"


def stmt(text: str) -> ast.Statement:
    """The single statement of `text`."""
    (statement,) = parse(text, "t.attn").statements
    return statement


def expr_of(text: str) -> ast.SetExpr:
    """The expression of `pattern p = text`."""
    decl = stmt(f"pattern p = {text}")
    assert isinstance(decl, ast.PatternDecl)
    return decl.body  # type: ignore[return-value]


def shape(node: object) -> object:
    """A syntax tree as nested tuples, without locations, for compact comparisons."""
    if isinstance(node, ast.SetOp):
        return (node.op, shape(node.left), shape(node.right))
    if isinstance(node, ast.BinOp):
        return (node.op, shape(node.left), shape(node.right))
    if isinstance(node, ast.Neg):
        return ("neg", shape(node.operand))
    if isinstance(node, ast.Prim):
        return (node.name, *[shape(a) for a in node.args])
    if isinstance(node, ast.Arg):
        return (node.name, shape(node.value)) if node.name else shape(node.value)
    if isinstance(node, ast.TupleLit):
        return tuple(shape(i) for i in node.items)
    if isinstance(node, (ast.Num, ast.BoolLit)):
        return node.value
    if isinstance(node, (ast.ParamRef, ast.PatternRef, ast.Word)):
        return node.name
    raise TypeError(node)


def int_value(text: str) -> int | None:
    decl = stmt(f"param X = {text}")
    assert isinstance(decl, ast.Param)
    return IntScope(Reporter()).eval(decl.value)


# ---------------------------------------------------------------- primitives and operators


@pytest.mark.parametrize(
    "source, expected",
    [
        ("full", ("full",)),
        ("causal", ("causal",)),
        ("window(1024)", ("window", 1024)),
        ("window(left = 3, right = 2)", ("window", ("left", 3), ("right", 2))),
        ("sink(4)", ("sink", 4)),
        ("dilated(512, 2)", ("dilated", 512, 2)),
        ("strided(128)", ("strided", 128)),
        ("stride(8, 7)", ("stride", 8, 7)),
        ("chunk(C)", ("chunk", "C")),
        ("global(16)", ("global", 16)),
        ("band(-2, 5)", ("band", ("neg", 2), 5)),
        ("power(64)", ("power", 64)),
        ("window(W - 4)", ("window", ("-", "W", 4))),
        (
            "neighborhood(kernel = (3, 7, 7), dilation = 2, causal = (true, false, false))",
            ("neighborhood", ("kernel", (3, 7, 7)), ("dilation", 2), ("causal", (True, False, False))),
        ),
        ("neighborhood(kernel = (3,))", ("neighborhood", ("kernel", (3,)))),
    ],
)
def test_primitive_parses(source: str, expected: tuple) -> None:
    assert shape(expr_of(source)) == expected


def test_bare_name_is_a_reference_unless_it_is_a_primitive() -> None:
    assert isinstance(expr_of("local"), ast.PatternRef)
    assert isinstance(expr_of("causal"), ast.Prim)
    assert isinstance(expr_of("windw(4)"), ast.Prim)  # unknown primitives are resolve's business


@pytest.mark.parametrize(
    "source, expected",
    [
        ("a | b", ("|", "a", "b")),
        ("a & b", ("&", "a", "b")),
        ("a - b", ("-", "a", "b")),
        ("a | b & c", ("|", "a", ("&", "b", "c"))),
        ("a & b | c", ("|", ("&", "a", "b"), "c")),
        ("a & b - c", ("&", "a", ("-", "b", "c"))),
        ("a - b & c", ("&", ("-", "a", "b"), "c")),
        ("a | b & c - d", ("|", "a", ("&", "b", ("-", "c", "d")))),
        ("a - b - c", ("-", ("-", "a", "b"), "c")),
        ("a | b | c", ("|", ("|", "a", "b"), "c")),
        ("(a | b) & c", ("&", ("|", "a", "b"), "c")),
        ("a - (b - c)", ("-", "a", ("-", "b", "c"))),
        ("causal & (sink(4) | window(1020))", ("&", ("causal",), ("|", ("sink", 4), ("window", 1020)))),
    ],
)
def test_set_operator_precedence(source: str, expected: tuple) -> None:
    assert shape(expr_of(source)) == expected


@pytest.mark.parametrize(
    "source, value",
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("-7 % 3", 2),
        ("7 % -3", -2),
        ("2 ** 3 ** 2", 512),
        ("-2 ** 2", -4),
        ("(-2) ** 2", 4),
        ("2 * -3", -6),
        ("+5 - -5", 10),
        ("1_024", 1024),
        ("2 ** 10 // 4 % 100", 56),
    ],
)
def test_integer_arithmetic_follows_python(source: str, value: int) -> None:
    assert int_value(source) == value == eval(source.replace("1_024", "1024"))


def test_power_is_right_associative_and_binds_tighter_than_unary_minus() -> None:
    decl = stmt("param X = -2 ** 3 ** 2")
    assert shape(decl.value) == ("neg", ("**", 2, ("**", 3, 2)))  # type: ignore[union-attr]


# ---------------------------------------------------------------- statements


def test_statements() -> None:
    file = parse(
        """
        import "common.attn"
        headsets "heads/smollm2.json"
        param W = 1024 - S
        model { layers = 30, heads = 9, kv_heads = 3, head_dim = 64 }
        grid(16, 48, 80) prefix = 8
        let local = causal & window(W)
        pattern p = local
        """,
        "t.attn",
    )
    imp, hs, param, model, grid, let, pattern = file.statements
    assert isinstance(imp, ast.Import) and imp.path == "common.attn"
    assert isinstance(hs, ast.HeadSets) and hs.path == "heads/smollm2.json"
    assert isinstance(param, ast.Param) and param.name == "W" and shape(param.value) == ("-", 1024, "S")
    assert isinstance(model, ast.ModelDecl)
    assert [(k, shape(v)) for k, v in model.fields] == [("layers", 30), ("heads", 9), ("kv_heads", 3), ("head_dim", 64)]
    assert isinstance(grid, ast.GridDecl) and [shape(d) for d in grid.dims] == [16, 48, 80] and shape(grid.prefix) == 8
    assert isinstance(let, ast.Let) and let.name == "local"
    assert isinstance(pattern, ast.PatternDecl) and shape(pattern.body) == "local"


@pytest.mark.parametrize("source, dims", [("grid(64)", 1), ("grid(8, 8)", 2), ("grid(4, 8, 8,)", 3)])
def test_grid_dimensions(source: str, dims: int) -> None:
    decl = stmt(source)
    assert isinstance(decl, ast.GridDecl) and len(decl.dims) == dims and decl.prefix is None


def test_model_fields_may_be_separated_by_newlines() -> None:
    decl = stmt("model {\n  layers = 30\n  heads = 9\n}")
    assert isinstance(decl, ast.ModelDecl) and [k for k, _ in decl.fields] == ["layers", "heads"]


def test_model_fields_are_usable_in_integer_expressions() -> None:
    decl = stmt("param H = heads // kv_heads + layers * head_dim")
    assert shape(decl.value) == ("+", ("//", "heads", "kv_heads"), ("*", "layers", "head_dim"))  # type: ignore[union-attr]


def test_sections() -> None:
    decl = stmt(
        """pattern p {
          heads 0..8, 20: causal
          kv_heads @retrieval, 2: full
          layers 2..30 {
            heads 0..4: causal
            rest: causal & window(512)
          }
          rest: causal
        }"""
    )
    assert isinstance(decl, ast.PatternDecl) and isinstance(decl.body, list)
    first, second, third, fourth = decl.body
    assert first.selector.kind == "heads"
    assert [(shape(i.start), shape(i.stop) if i.stop else None) for i in first.selector.items] == [(0, 8), (20, None)]
    assert second.selector.kind == "kv_heads"
    assert isinstance(second.selector.items[0], ast.HeadSetRef) and second.selector.items[0].name == "retrieval"
    assert third.selector.kind == "layers" and isinstance(third.body, list) and len(third.body) == 2
    assert third.body[1].selector.kind == "rest" and third.body[1].selector.items == []
    assert fourth.selector.kind == "rest" and shape(fourth.body) == ("causal",)


def test_cache_block() -> None:
    decl = stmt(
        """cache {
          budget = 1024
          keep sink(4)
          keep recent(64)
          evict snapkv(window = 32, pool = max, kernel = 7) at prefill
          aggregate = mean
          positions = rerotate
          layers 0..4 { budget = 2048 }
          kv_heads @retrieval { budget = full }
        }"""
    )
    assert isinstance(decl, ast.CacheDecl)
    budget, sink, recent, evict, aggregate, positions, layers, retrieval = decl.items
    assert isinstance(budget, ast.Budget) and budget.kind == "tokens" and shape(budget.values[0]) == 1024
    assert isinstance(sink, ast.Keep) and sink.kind == "sink" and shape(sink.size) == 4
    assert isinstance(recent, ast.Keep) and recent.kind == "recent"
    assert isinstance(evict, ast.Evict) and evict.score == "snapkv" and evict.timing == "prefill"
    assert [shape(o) for o in evict.options] == [("window", 32), ("pool", "max"), ("kernel", 7)]
    assert isinstance(evict.options[1].value, ast.Word)
    assert isinstance(aggregate, ast.Setting) and (aggregate.name, aggregate.value) == ("aggregate", "mean")
    assert isinstance(positions, ast.Setting) and positions.value == "rerotate"
    assert isinstance(layers, ast.CacheSection) and layers.selector.kind == "layers"
    assert isinstance(retrieval, ast.CacheSection) and isinstance(retrieval.items[0], ast.Budget)
    assert retrieval.items[0].kind == "full"


@pytest.mark.parametrize(
    "source, kind, values, options",
    [
        ("budget = full", "full", [], []),
        ("budget = 2 * W", "tokens", [("*", 2, "W")], []),
        ("budget = linear(2048, 256)", "linear", [2048, 256], []),
        ("budget = [1, 2, 3,]", "list", [1, 2, 3], []),
        ("budget = adaptive(512, by = cake)", "adaptive", [512], [("by", "cake")]),
    ],
)
def test_budgets(source: str, kind: str, values: list, options: list) -> None:
    decl = stmt(f"cache {{ {source} }}")
    budget = decl.items[0]  # type: ignore[union-attr]
    assert isinstance(budget, ast.Budget) and budget.kind == kind
    assert [shape(v) for v in budget.values] == values and [shape(o) for o in budget.options] == options


def test_evict_without_options_or_timing() -> None:
    evict = stmt("cache { evict h2o }").items[0]  # type: ignore[union-attr]
    assert isinstance(evict, ast.Evict) and evict.options == [] and evict.timing is None


def test_comments_and_whitespace_are_insignificant() -> None:
    a = parse("pattern p = causal & window(4) # trailing\n", "t.attn")
    b = parse("# head\npattern\n  p\n =\tcausal\n&\nwindow(\n4\n)", "t.attn")
    assert shape(a.statements[0].body) == shape(b.statements[0].body)  # type: ignore[union-attr]


def test_empty_file_parses() -> None:
    assert parse("# nothing here\n", "t.attn").statements == []


# ---------------------------------------------------------------- locations


def nodes(node: object):  # type: ignore[no-untyped-def]
    """Every syntax node under `node`, itself included."""
    if isinstance(node, ast.Node):
        yield node
        for name in type(node).model_fields:
            yield from nodes(getattr(node, name))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from nodes(item)


def test_locations_are_one_based_line_and_column() -> None:
    decl = stmt("\n\n  pattern p = causal & window(W)")
    assert (decl.loc.line, decl.loc.col) == (3, 3)
    window = decl.body.right  # type: ignore[union-attr]
    assert (window.loc.line, window.loc.col) == (3, 24)
    assert (window.args[0].loc.line, window.args[0].loc.col) == (3, 31)


@pytest.mark.parametrize("path", sorted(PATTERNS.glob("*.attn")), ids=lambda p: p.name)
def test_every_node_has_a_location_in_its_file(path: Path) -> None:
    file = parse(path.read_text(), str(path))
    all_nodes = list(nodes(file))
    assert len(all_nodes) > 3
    for node in all_nodes:
        assert isinstance(node.loc, ast.Loc) and node.loc.file == str(path) and node.loc.line >= 1 and node.loc.col >= 1


def test_syntax_tree_is_immutable() -> None:
    decl = stmt("pattern p = causal")
    with pytest.raises(ValidationError):
        decl.name = "q"  # type: ignore[misc]
    assert isinstance(decl, BaseModel)


def test_keywords_are_reserved() -> None:
    assert {"pattern", "heads", "kv_heads", "layers", "rest", "cache", "budget", "true"} <= reserved_words()
    assert "causal" not in reserved_words() and "full" not in reserved_words()
    with pytest.raises(AttnError):
        parse("let layers = causal", "t.attn")


def test_keyword_is_never_matched_inside_a_longer_word() -> None:
    # `patterns` is one name, not `pattern` + `s`.
    with pytest.raises(AttnError) as info:
        parse("patterns p = causal", "t.attn")
    assert "found 'patterns'" in info.value.diagnostics[0].message
