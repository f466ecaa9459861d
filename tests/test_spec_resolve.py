"""The resolver: primitives in normal form, params and defines, the model shape, sections,
head sets, imports, lets and cache policies, as `resolved.Spec` documents them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnc.spec.errors import AttnError
from attnc.spec.resolve import load, resolve_text
from attnc.spec.resolved import Assignment, RExpr, ROp, RPrim, Spec

MODEL = "model { layers = 4, heads = 8, kv_heads = 2 }\n"


def spec(text: str, **kwargs) -> Spec:  # type: ignore[no-untyped-def]
    return resolve_text(text, "t.attn", **kwargs)


def expr(text: str, prelude: str = "") -> RExpr:
    (assignment,) = spec(f"{prelude}\npattern p = {text}").assignments
    return assignment.expr


def tree(e: RExpr) -> object:
    """A resolved expression as nested tuples (no locations)."""
    if isinstance(e, ROp):
        return (e.op, tree(e.left), tree(e.right))
    return (e.name, e.args)


def errors(text: str, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(AttnError) as info:
        spec(text, **kwargs)
    return [d.message for d in info.value.diagnostics]


def cover(assignments: tuple[Assignment, ...], layers: int, heads: int) -> dict[tuple[int, int], object]:
    """(layer, head) -> the expression tree that applies there; checks exactly-once cover."""
    seen: dict[tuple[int, int], object] = {}
    for a in assignments:
        for layer in a.layers if a.layers is not None else range(layers):
            for head in a.heads if a.heads is not None else range(heads):
                assert (layer, head) not in seen, f"{layer, head} covered twice"
                seen[(layer, head)] = tree(a.expr)
    assert set(seen) == {(layer, head) for layer in range(layers) for head in range(heads)}
    return seen


# ---------------------------------------------------------------- primitives


@pytest.mark.parametrize(
    "source, name, args",
    [
        ("full", "full", {}),
        ("causal", "causal", {}),
        ("window(1024)", "window", {"size": 1024}),
        ("window(size = 1024)", "window", {"size": 1024}),
        ("window(left = 3, right = 2)", "window", {"left": 3, "right": 2}),
        ("window(3, 2)", "window", {"left": 3, "right": 2}),
        ("window(3, right = 0)", "window", {"left": 3, "right": 0}),
        ("sink(4)", "sink", {"size": 4}),
        ("dilated(512, 2)", "dilated", {"size": 512, "dilation": 2}),
        ("dilated(dilation = 2, size = 512)", "dilated", {"size": 512, "dilation": 2}),
        ("strided(128)", "strided", {"stride": 128}),
        ("stride(8, 7)", "stride", {"stride": 8, "offset": 7}),
        ("stride(8, offset = 0)", "stride", {"stride": 8, "offset": 0}),
        ("chunk(8192)", "chunk", {"size": 8192}),
        ("global(16)", "global", {"size": 16}),
        ("band(-2, 5)", "band", {"lo": -2, "hi": 5}),
        ("band(3, 3)", "band", {"lo": 3, "hi": 3}),
        ("power(64)", "power", {"block": 64}),
    ],
)
def test_primitive_normal_form(source: str, name: str, args: dict) -> None:
    e = expr(source)
    assert isinstance(e, RPrim) and (e.name, e.args) == (name, args)
    assert e.loc.line == 2 and e.loc.col == 13


@pytest.mark.parametrize(
    "source, args",
    [
        (
            "neighborhood(kernel = (3, 5, 5))",
            {"kernel": (3, 5, 5), "dilation": (1, 1, 1), "causal": (False, False, False), "stride": (1, 1, 1)},
        ),
        (
            "neighborhood(kernel = 3)",
            {"kernel": (3, 3, 3), "dilation": (1, 1, 1), "causal": (False, False, False), "stride": (1, 1, 1)},
        ),
        (
            "neighborhood((3, 5, 5), 2, (true, false, false))",
            {"kernel": (3, 5, 5), "dilation": (2, 2, 2), "causal": (True, False, False), "stride": (1, 1, 1)},
        ),
        (
            "neighborhood(kernel = (3, 5, 5), stride = (1, 4, 5))",
            {"kernel": (3, 5, 5), "dilation": (1, 1, 1), "causal": (False, False, False), "stride": (1, 4, 5)},
        ),
        (
            "neighborhood(kernel = 7, dilation = (1, 2, 2), causal = true)",
            {"kernel": (7, 7, 7), "dilation": (1, 2, 2), "causal": (True, True, True), "stride": (1, 1, 1)},
        ),
    ],
)
def test_neighborhood_normalised_per_grid_axis(source: str, args: dict) -> None:
    e = expr(source, "grid(8, 16, 16) prefix = 4")
    assert isinstance(e, RPrim) and e.name == "neighborhood" and e.args == args


def test_neighborhood_kernel_may_fill_an_axis() -> None:
    e = expr("neighborhood(kernel = (8, 3), dilation = (1, 5))", "grid(8, 16)")
    assert isinstance(e, RPrim) and e.args["kernel"] == (8, 3)


def test_grid_is_resolved() -> None:
    s = spec("grid(8, 16, 16) prefix = 4\npattern p = causal")
    assert s.grid is not None and s.grid.dims == (8, 16, 16) and s.grid.prefix == 4
    assert spec("grid(64)\npattern p = causal").grid.prefix == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("causal | full", ("|", ("causal", {}), ("full", {}))),
        ("causal & full", ("&", ("causal", {}), ("full", {}))),
        ("causal - full", ("-", ("causal", {}), ("full", {}))),
        (
            "sink(1) | window(2) & chunk(3) - power(4)",
            (
                "|",
                ("sink", {"size": 1}),
                ("&", ("window", {"size": 2}), ("-", ("chunk", {"size": 3}), ("power", {"block": 4}))),
            ),
        ),
    ],
)
def test_operators(source: str, expected: tuple) -> None:
    assert tree(expr(source)) == expected


# ---------------------------------------------------------------- params and defines


def test_params_evaluate_in_any_order() -> None:
    s = spec("param W = 1024 - S\nparam S = 4\npattern p = causal & (sink(S) | window(W))")
    assert s.params == {"W": 1020, "S": 4}
    assert tree(s.assignments[0].expr)[2] == ("|", ("sink", {"size": 4}), ("window", {"size": 1020}))  # type: ignore[index]


def test_defines_override_params_and_what_depends_on_them() -> None:
    s = spec("param S = 4\nparam W = 1024 - S\npattern p = window(W)", defines={"S": 24})
    assert s.params == {"S": 24, "W": 1000}
    assert tree(s.assignments[0].expr) == ("window", {"size": 1000})


def test_define_of_an_unknown_param_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(AttnError) as info:
        spec("param WINDOW = 4\npattern p = window(WINDOW)", defines={"WINDOWS": 8})
    (d,) = info.value.diagnostics
    assert d.message == "-D WINDOWS: no param 'WINDOWS' in this file or its imports"
    assert d.hint == "did you mean 'WINDOW'?"
    assert d.loc.file == "<command line>"


def test_model_fields_in_integer_expressions() -> None:
    s = spec("model { heads = 8, kv_heads = 2 }\nparam G = heads // kv_heads\npattern p = window(G * 100)")
    assert s.params == {"G": 4} and tree(s.assignments[0].expr) == ("window", {"size": 400})


# ---------------------------------------------------------------- model shape


def test_pattern_without_sections_needs_no_model() -> None:
    s = spec("pattern p = causal")
    assert s.model.model_dump() == {"layers": None, "heads": None, "kv_heads": None, "head_dim": None}
    (a,) = s.assignments
    assert a.layers is None and a.heads is None


def test_model_from_file_and_command_line() -> None:
    s = spec("model { layers = 30, heads = 9, kv_heads = 3, head_dim = 64 }\npattern p = causal")
    assert (s.model.layers, s.model.heads, s.model.kv_heads, s.model.head_dim) == (30, 9, 3, 64)
    s = spec("model { layers = 30, heads = 9, kv_heads = 3 }\npattern p = causal", model={"layers": 2, "head_dim": 128})
    assert (s.model.layers, s.model.heads, s.model.kv_heads, s.model.head_dim) == (2, 9, 3, 128)
    s = spec("pattern p = causal", model={"heads": 4})
    assert s.model.heads == 4 and s.model.kv_heads is None  # kv_heads defaults to heads, but was not given


def test_unknown_model_field_on_the_command_line() -> None:
    assert errors("pattern p = causal", model={"head": 4}) == [
        "unknown model field 'head' (--model, or model= in Python)"
    ]


# ---------------------------------------------------------------- sections


def test_head_sections_with_lists_ranges_and_rest() -> None:
    s = spec(MODEL + "pattern p {\n heads 0..2, 5: causal\n rest: full\n}")
    first, rest = s.assignments
    assert (first.layers, first.heads) == ((0, 1, 2, 3), (0, 1, 5))
    assert (rest.layers, rest.heads) == ((0, 1, 2, 3), (2, 3, 4, 6, 7))
    assert (first.loc.line, rest.loc.line) == (3, 4)


def test_kv_head_sections_expand_to_their_query_heads() -> None:
    s = spec(MODEL + "pattern p { kv_heads 1: causal rest: full }")
    kv, rest = s.assignments
    assert kv.heads == (4, 5, 6, 7) and rest.heads == (0, 1, 2, 3)


def test_kv_heads_default_to_heads() -> None:
    s = spec("model { layers = 2, heads = 4 }\npattern p { kv_heads 1, 3: causal rest: full }")
    assert [a.heads for a in s.assignments] == [(1, 3), (0, 2)]


def test_nested_layers_and_heads() -> None:
    s = spec(
        MODEL
        + """pattern p {
          layers 0..2: causal
          layers 2..4 {
            heads 0..4: full
            rest: window(8)
          }
        }"""
    )
    got = [(a.layers, a.heads, tree(a.expr)[0]) for a in s.assignments]  # type: ignore[index]
    assert got == [
        ((0, 1), tuple(range(8)), "causal"),
        ((2, 3), (0, 1, 2, 3), "full"),
        ((2, 3), (4, 5, 6, 7), "window"),
    ]
    cover(s.assignments, 4, 8)


def test_heads_nested_in_a_head_section() -> None:
    s = spec(MODEL + "pattern p { kv_heads 0 { heads 0..2: causal rest: full } rest: window(4) }")
    assert [a.heads for a in s.assignments] == [(0, 1), (2, 3), (4, 5, 6, 7)]


def test_head_sections_without_layer_count_apply_to_every_layer() -> None:
    s = spec("model { heads = 4 }\npattern p { heads 0: causal rest: full }")
    assert [(a.layers, a.heads) for a in s.assignments] == [(None, (0,)), (None, (1, 2, 3))]


def test_sections_may_use_params_and_model_fields() -> None:
    s = spec(MODEL + "param H = heads // 2\npattern p { heads 0..H: causal heads H..heads: full }")
    assert [a.heads for a in s.assignments] == [(0, 1, 2, 3), (4, 5, 6, 7)]


def test_a_section_of_all_heads() -> None:
    s = spec(MODEL + "pattern p { rest: causal }")
    (a,) = s.assignments
    assert a.layers == (0, 1, 2, 3) and a.heads == tuple(range(8))


# ---------------------------------------------------------------- head sets


def write_headsets(tmp_path: Path, sets: dict, body: str, model: str = MODEL) -> Path:
    (tmp_path / "heads.json").write_text(json.dumps(sets))
    path = tmp_path / "p.attn"
    path.write_text(f'headsets "heads.json"\n{model}{body}')
    return path


def test_uniform_head_set(tmp_path: Path) -> None:
    path = write_headsets(tmp_path, {"retrieval": [1]}, "pattern p { kv_heads @retrieval: causal rest: full }")
    s = load(path)
    retrieval, rest = s.assignments
    assert (retrieval.layers, retrieval.heads) == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert (rest.layers, rest.heads) == ((0, 1, 2, 3), (0, 1, 2, 3))
    assert s.head_sets == {"retrieval": {0: (1,), 1: (1,), 2: (1,), 3: (1,)}}


def test_per_layer_head_set_gives_one_assignment_per_distinct_layer(tmp_path: Path) -> None:
    sets = {"retrieval": {"0": [0], "1": [1], "2": [0, 1]}, "streaming": {"0": [1], "1": [0], "3": [0, 1]}}
    path = write_headsets(tmp_path, sets, "pattern p { kv_heads @retrieval: causal kv_heads @streaming: window(64) }")
    s = load(path)
    assert [(a.layers, a.heads, tree(a.expr)[0]) for a in s.assignments] == [  # type: ignore[index]
        ((0,), (0, 1, 2, 3), "causal"),
        ((1,), (4, 5, 6, 7), "causal"),
        ((2,), tuple(range(8)), "causal"),
        ((0,), (4, 5, 6, 7), "window"),
        ((1,), (0, 1, 2, 3), "window"),
        ((3,), tuple(range(8)), "window"),
    ]
    cover(s.assignments, 4, 8)
    assert s.head_sets["retrieval"] == {0: (0,), 1: (1,), 2: (0, 1), 3: ()}


def test_command_line_head_sets_override_the_file(tmp_path: Path) -> None:
    path = write_headsets(tmp_path, {"retrieval": [1]}, "pattern p { kv_heads @retrieval: causal rest: full }")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"retrieval": [0]}))
    s = load(path, headsets_path=str(other))
    assert s.assignments[0].heads == (0, 1, 2, 3)


def test_head_set_errors(tmp_path: Path) -> None:
    path = write_headsets(tmp_path, {"retrieval": [0, 2]}, "pattern p { kv_heads @retrieval: causal rest: full }")
    with pytest.raises(AttnError) as info:
        load(path)
    (d,) = info.value.diagnostics
    assert d.message == "head set 'retrieval' names KV head 2, but the model has 2 KV heads (0..2)"
    assert d.loc.file.endswith("heads.json") and (d.loc.line, d.loc.col) == (1, 2)
    path = write_headsets(tmp_path, {"retrieval": [0]}, "pattern p { kv_heads @retreival: causal rest: full }")
    with pytest.raises(AttnError) as info:
        load(path)
    assert [(d.message, d.hint) for d in info.value.diagnostics] == [
        ("unknown head set '@retreival'", "did you mean 'retrieval'?")
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "a head-set file must hold a JSON object"),
        ("{", "not valid JSON: Expecting property name enclosed in double quotes"),
        ('{"class": [0]}', "head set name \"class\": 'class' is a Python keyword and cannot be a name"),
        ('{"r": [-1]}', "head set 'r' must list KV head indices (integers >= 0)"),
        ('{"r": {"zero": [0]}}', "head set 'r': layer key \"zero\" is not a layer index"),
        ('{"r": 3}', "head set 'r' must be a list of KV heads or an object of layers"),
        ('{"r": {"9": [0]}}', "head set 'r' names layer 9, but the model has 4 layers (0..4)"),
    ],
)
def test_malformed_head_set_files(tmp_path: Path, content: str, message: str) -> None:
    path = write_headsets(tmp_path, {}, "pattern p = causal")
    (tmp_path / "heads.json").write_text(content)
    with pytest.raises(AttnError) as info:
        load(path)
    assert [d.message for d in info.value.diagnostics] == [message]


# ---------------------------------------------------------------- imports and lets


def test_lets_are_inlined() -> None:
    s = spec("let local = causal & window(W)\nlet both = local | sink(4)\nparam W = 8\npattern p = both")
    assert tree(s.assignments[0].expr) == ("|", ("&", ("causal", {}), ("window", {"size": 8})), ("sink", {"size": 4}))


def test_imports_bring_lets_and_the_pattern(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "common.attn").write_text(
        "param W = 64\nlet local = causal & window(W)\npattern base = local | sink(4)\n"
    )
    (tmp_path / "lib" / "more.attn").write_text('import "common.attn"\nlet wide = local | chunk(W2)\nparam W2 = 128\n')
    main = tmp_path / "main.attn"
    main.write_text('import "lib/common.attn"\nimport "lib/more.attn"\npattern p = base - wide\n')
    s = load(main)
    assert tree(s.assignments[0].expr) == (
        "-",
        ("|", ("&", ("causal", {}), ("window", {"size": 64})), ("sink", {"size": 4})),
        ("|", ("&", ("causal", {}), ("window", {"size": 64})), ("chunk", {"size": 128})),
    )
    assert s.assignments[0].expr.left.left.left.loc.file == str(tmp_path / "lib" / "common.attn")  # type: ignore[union-attr]
    assert s.params == {"W": 64, "W2": 128}
    s = load(main, defines={"W": 32})
    assert s.assignments[0].expr.left.left.right.args == {"size": 32}  # type: ignore[union-attr]


def test_import_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.attn").write_text('import "b.attn"\nlet x = causal\npattern a = x\n')
    (tmp_path / "b.attn").write_text('import "a.attn"\nlet y = causal\n')
    with pytest.raises(AttnError) as info:
        load(tmp_path / "a.attn")
    (d,) = info.value.diagnostics
    assert d.message.startswith("import cycle: ") and d.message.endswith(
        "a.attn -> " + str(tmp_path / "b.attn") + " -> " + str(tmp_path / "a.attn")
    )
    assert d.loc.file == str(tmp_path / "b.attn") and (d.loc.line, d.loc.col) == (1, 1)


def test_errors_in_imported_files_point_into_them(tmp_path: Path) -> None:
    (tmp_path / "lib.attn").write_text("let bad = window(0)\n")
    (tmp_path / "main.attn").write_text('import "lib.attn"\npattern p = bad\n')
    with pytest.raises(AttnError) as info:
        load(tmp_path / "main.attn")
    (d,) = info.value.diagnostics
    assert d.loc.file == str(tmp_path / "lib.attn") and (d.loc.line, d.loc.col) == (1, 18)
    assert d.source_line == "let bad = window(0)"


def test_sectioned_pattern_cannot_be_imported_as_an_expression(tmp_path: Path) -> None:
    (tmp_path / "lib.attn").write_text("model { heads = 2 }\npattern s { heads 0: causal rest: full }\n")
    (tmp_path / "main.attn").write_text('import "lib.attn"\npattern p = s\n')
    with pytest.raises(AttnError) as info:
        load(tmp_path / "main.attn")
    assert [d.message for d in info.value.diagnostics] == [
        f"pattern 's' of {tmp_path / 'lib.attn'} has sections and cannot be used in an expression"
    ]


# ---------------------------------------------------------------- caches


def cache(body: str, prelude: str = "") -> tuple:
    return spec(f"{prelude}\npattern p = causal\ncache {{ {body} }}").cache


def test_keep_rules_alone_give_a_budget_of_sink_plus_recent() -> None:
    (policy,) = cache("keep sink(4) keep recent(1020) positions = rerotate")
    assert policy.budget.kind == "tokens" and policy.budget.tokens == 1024
    assert (policy.sink, policy.recent, policy.evict, policy.positions) == (4, 1020, None, "rerotate")
    assert policy.layers is None and policy.kv_heads is None


def test_cache_defaults() -> None:
    (policy,) = cache("budget = full")
    assert policy.budget.kind == "full" and policy.aggregate == "mean" and policy.positions == "original"
    (policy,) = cache("budget = 1024 evict snapkv")
    assert policy.evict is not None and policy.evict.options == {"window": 32, "pool": "max", "kernel": 7}


@pytest.mark.parametrize(
    "score, timing", [("snapkv", "prefill"), ("key_norm", "prefill"), ("h2o", "decode"), ("tova", "decode")]
)
def test_default_eviction_timing(score: str, timing: str) -> None:
    (policy,) = cache(f"budget = 64 evict {score}")
    assert policy.evict.score == score and policy.evict.timing == timing  # type: ignore[union-attr]
    (policy,) = cache(f"budget = 64 evict {score} at {'decode' if timing == 'prefill' else 'prefill'}")
    assert policy.evict.timing != timing  # type: ignore[union-attr]


def test_evict_options_may_use_params() -> None:
    (policy,) = cache(
        "budget = B evict snapkv(window = OBS, pool = avg, kernel = 2 * 2 + 1) aggregate = max",
        "param B = 512\nparam OBS = 16",
    )
    assert policy.budget.tokens == 512 and policy.aggregate == "max"
    assert policy.evict.options == {"window": 16, "pool": "avg", "kernel": 5}  # type: ignore[union-attr]


def test_budget_schedules() -> None:
    (policy,) = cache("budget = linear(2048, 256) evict snapkv", MODEL)
    assert (policy.budget.kind, policy.budget.first, policy.budget.last) == ("linear", 2048, 256)
    (policy,) = cache("budget = linear(first = 64, last = 32) keep recent(8) evict snapkv", MODEL)
    assert (policy.budget.first, policy.budget.last, policy.recent) == (64, 32, 8)
    (policy,) = cache("budget = [4, 3, 2, 1] evict h2o", MODEL)
    assert policy.budget.kind == "list" and policy.budget.per_layer == (4, 3, 2, 1)
    (policy,) = cache("budget = adaptive(512, by = cake) evict snapkv", MODEL)
    assert (policy.budget.kind, policy.budget.tokens, policy.budget.by) == ("adaptive", 512, "cake")
    (policy,) = cache("budget = adaptive(512) evict snapkv")
    assert policy.budget.by == "cake"


def test_full_budget_drops_an_inherited_evict() -> None:
    policies = cache("budget = 256 evict h2o kv_heads 1 { budget = full }", MODEL)
    assert {(p.kv_heads, p.budget.kind, p.evict is None) for p in policies} == {
        ((0,), "tokens", False),
        ((1,), "full", True),
    }


def test_cache_sections_cascade_field_by_field() -> None:
    policies = cache(
        """budget = 1024 keep sink(4) evict snapkv
           layers 0..2 { budget = 2048 keep sink(8) }
           kv_heads 1 { budget = full }""",
        MODEL,
    )
    cells = {}
    for p in policies:
        for layer in p.layers:  # type: ignore[union-attr]
            for kv in p.kv_heads:  # type: ignore[union-attr]
                assert (layer, kv) not in cells
                cells[(layer, kv)] = (
                    p.budget.kind,
                    p.budget.tokens,
                    p.sink,
                    p.evict.score if p.evict else None,
                    p.loc.line,
                )
    assert cells == {
        (0, 0): ("tokens", 2048, 8, "snapkv", 5),
        (1, 0): ("tokens", 2048, 8, "snapkv", 5),
        (2, 0): ("tokens", 1024, 4, "snapkv", 4),
        (3, 0): ("tokens", 1024, 4, "snapkv", 4),
        (0, 1): ("full", None, 8, None, 6),  # the later section wins on budget; sink comes from the earlier one
        (1, 1): ("full", None, 8, None, 6),
        (2, 1): ("full", None, 4, None, 6),
        (3, 1): ("full", None, 4, None, 6),
    }


def test_cache_heads_selector_covers_whole_groups() -> None:
    policies = cache("budget = full heads 4..8 { keep sink(4) keep recent(4) budget = 8 }", MODEL)
    assert sorted((p.kv_heads, p.budget.kind) for p in policies) == [((0,), "full"), ((1,), "tokens")]


def test_cache_nested_sections() -> None:
    policies = cache("budget = full layers 0..2 { kv_heads 1 { keep recent(16) budget = 16 } }", MODEL)
    small = [p for p in policies if p.budget.kind == "tokens"]
    assert [(p.layers, p.kv_heads, p.budget.tokens) for p in small] == [((0, 1), (1,), 16)]


def test_keep_rules_under_a_full_budget_are_an_error() -> None:
    assert errors(
        "pattern p = causal\ncache { budget = full layers 0..2 { kv_heads 1 { keep recent(16) } } }",
        model={"layers": 4, "heads": 2},
    ) == ["keep recent has no effect: the budget is full wherever it applies"]
    # Inherited by a full-budget section but in force elsewhere: fine.
    assert len(cache("keep sink(4) keep recent(4) kv_heads 1 { budget = full }", MODEL)) == 2


def test_cache_with_head_sets(tmp_path: Path) -> None:
    path = write_headsets(
        tmp_path,
        {"retrieval": {"0": [0], "1": [1]}},
        "pattern p = causal\ncache { keep sink(4) keep recent(60) kv_heads @retrieval { budget = full } }",
        "model { layers = 2, heads = 4, kv_heads = 2 }\n",
    )
    policies = load(path).cache
    full = sorted((p.layers, p.kv_heads) for p in policies if p.budget.kind == "full")
    assert full == [((0,), (0,)), ((1,), (1,))]


# ---------------------------------------------------------------- the Spec


def test_spec_round_trips_through_json() -> None:
    s = spec(
        "grid(4, 8)\nparam W = 8\npattern p = neighborhood(kernel = 3) | causal & window(W)\ncache { keep recent(W) }"
    )
    assert Spec.model_validate_json(s.model_dump_json()) == s
    assert s.source == "t.attn" and s.name == "p"


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.attn"
    path.write_text("pattern x = causal\n")
    assert load(path).name == "x" and load(str(path)).source == str(path)
    with pytest.raises(AttnError) as info:
        load(tmp_path / "missing.attn")
    assert info.value.diagnostics[0].message == f"file '{tmp_path / 'missing.attn'}' does not exist"
