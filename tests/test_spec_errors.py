"""Errors: every bad input is reported at its exact line and column, in the language's
terms, with a hint where one helps; several errors are reported together; hostile names
never get through; the rendering matches the documented format."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnc.spec.errors import AttnError, Diagnostic
from attnc.spec.parser import parse
from attnc.spec.resolve import resolve_text

M = "model { layers = 4, heads = 8, kv_heads = 2 }\n"

# (source, "line:col" of the first diagnostic, its message, its hint)
BAD_INPUTS = [
    (
        "pattern p = window()",
        "1:20",
        "expected an integer expression, found ')'",
        "window takes one size, as in window(1024), or window(left = L, right = R)",
    ),
    (
        "pattern p = window(0)",
        "1:20",
        "window: size must be at least 1, got size=0",
        "window takes one size, as in window(1024), or window(left = L, right = R)",
    ),
    (
        "pattern p = window(left = -1, right = 3)",
        "1:20",
        "window: left must be at least 0, got left=-1",
        "window takes one size, as in window(1024), or window(left = L, right = R)",
    ),
    (
        "pattern p = sink(-2)",
        "1:18",
        "sink: size must be at least 1, got size=-2",
        "sink takes one size, as in sink(4)",
    ),
    (
        "pattern p = chunk(0)",
        "1:19",
        "chunk: size must be at least 1, got size=0",
        "chunk takes one size, as in chunk(8192)",
    ),
    (
        "pattern p = strided(0)",
        "1:21",
        "strided: stride must be at least 1, got stride=0",
        "strided takes one stride, as in strided(128)",
    ),
    (
        "pattern p = stride(4, 4)",
        "1:23",
        "stride: offset must be in [0, 4), got offset=4",
        "stride takes a stride and an offset in [0, stride), as in stride(8, 0)",
    ),
    (
        "pattern p = dilated(8, 0)",
        "1:24",
        "dilated: dilation must be at least 1, got dilation=0",
        "dilated takes a size and a dilation, as in dilated(512, 2)",
    ),
    (
        "pattern p = band(5, 2)",
        "1:18",
        "band: lo must be at most hi, got lo=5, hi=2",
        "band takes lo and hi (lo <= q - k <= hi), as in band(0, 127)",
    ),
    (
        "pattern p = power(0)",
        "1:19",
        "power: block must be at least 1, got block=0",
        "power takes one block size, as in power(64)",
    ),
    (
        "pattern p = global(0)",
        "1:20",
        "global: size must be at least 1, got size=0",
        "global takes one size, as in global(16)",
    ),
    ("pattern p = windw(4)", "1:13", "unknown primitive 'windw'", "did you mean 'window'?"),
    ("pattern p = casual", "1:13", "unknown name 'casual'", "did you mean 'causal'?"),
    ("param WIN = 4\npattern p = window(WN)", "2:20", "parameter 'WN' is not defined", "did you mean 'WIN'?"),
    (
        "pattern p = window(4, 5, 6)",
        "1:13",
        "window cannot take 3 arguments",
        "window takes one size, as in window(1024), or window(left = L, right = R)",
    ),
    (
        "pattern p = window(left = 3)",
        "1:13",
        "window needs right too",
        "window takes one size, as in window(1024), or window(left = L, right = R)",
    ),
    ("pattern p = window(sise = 4)", "1:20", "window has no argument 'sise'", "did you mean 'size'?"),
    (
        "pattern p = neighborhood(kernel = 3)",
        "1:13",
        "neighborhood needs a token grid",
        "declare one, as in grid(16, 48, 80)",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (3, 9))",
        "2:26",
        "neighborhood: kernel 9 is larger than grid axis 1 of length 8",
        "neighborhood takes a kernel and optionally dilation, causal and stride, one value per grid axis, as in neighborhood(kernel = (3, 7, 7), causal = (true, false, false)); 1 <= stride <= kernel",
    ),
    (
        "grid(8, 8)\npattern p = neighborhood(kernel = (3, 3, 3))",
        "2:35",
        "neighborhood: kernel has 3 values but the grid has 2 axes",
        "neighborhood takes a kernel and optionally dilation, causal and stride, one value per grid axis, as in neighborhood(kernel = (3, 7, 7), causal = (true, false, false)); 1 <= stride <= kernel",
    ),
    ("param A = 1\nparam A = 2\npattern p = causal", "2:1", "param 'A' is defined twice", "the first is on line 1"),
    ("let a = causal\nlet a = full\npattern p = a", "2:1", "let 'a' is defined twice", "the first is on line 1"),
    ("pattern p = causal\npattern q = full", "2:1", "only one pattern per file", "the first is on line 1"),
    ("cache { budget = full }", "1:1", "a cache block needs a pattern in the same file", None),
    (
        "pattern p = causal\ncache { budget = 8 keep sink(4) keep recent(8) evict h2o }",
        "2:9",
        "the budget of 8 tokens is smaller than its keep rules: sink 4 + recent 8 = 12",
        "raise the budget or keep fewer tokens",
    ),
    (
        "pattern p = causal\ncache { budget = 100 keep recent(8) }",
        "2:9",
        "a budget of 100 tokens needs an evict rule: without one, a cache keeps exactly its keep rules (sink 0 + recent 8 = 8 tokens)",
        "add an evict rule, as in evict snapkv at prefill, or make the budget sink + recent",
    ),
    (
        "pattern p = causal\ncache { select qest(64) }",
        "2:9",
        "unknown selection score 'qest'",
        "did you mean 'quest'?",
    ),
    (
        "pattern p = causal\ncache { select quest(64, page = 12) }",
        "2:9",
        "a page of 12 tokens is not supported",
        "the page sizes are '16', '32', '64', '128' or '256'",
    ),
    (
        "pattern p = causal\ncache { select quest(64, bits = 4) }",
        "2:9",
        "quest's summaries of 4 bits are not supported",
        "bits is '8' or '16'",
    ),
    (
        "pattern p = causal\ncache { select mean(64, bits = 8) }",
        "2:25",
        "mean has no option 'bits'",
        "mean's options are 'page'",
    ),
    (
        "pattern p = causal\ncache { select tokens(64, page = 16) }",
        "2:27",
        "tokens takes no options",
        None,
    ),
    (
        "pattern p = causal\ncache { budget = 100 select quest(64) }",
        "2:22",
        "select keeps the whole cache and reads a budget of it per step: it cannot go with a cache budget",
        "remove the budget here (or write budget = full); the select's own budget is what each step reads",
    ),
    (
        "pattern p = causal\ncache { budget = 10 evict snapkv(windw = 3) }",
        "2:34",
        "snapkv has no option 'windw'",
        "did you mean 'window'?",
    ),
    ("pattern p = causal\ncache { budget = 10 evict h2o(window = 3) }", "2:31", "h2o takes no options", None),
    (
        "pattern p = causal\ncache { budget = 10 evict snapk }",
        "2:21",
        "unknown eviction score 'snapk'",
        "did you mean 'snapkv'?",
    ),
    ("pattern p = causal\ncache { aggregate = mena }", "2:9", "aggregate cannot be 'mena'", "did you mean 'mean'?"),
    (
        "pattern p = causal\ncache { positions = rerotated }",
        "2:9",
        "positions cannot be 'rerotated'",
        "did you mean 'rerotate'?",
    ),
    (
        M + "pattern p { heads 0..4: causal }",
        "2:1",
        "no section covers heads 4..8",
        "add a section for them, or a `rest:` section",
    ),
    (
        M + "pattern p {\n  heads 0..5: causal\n  heads 4..8: full\n}",
        "4:3",
        "this section and the one on line 3 both cover head 4",
        "each head of each layer gets exactly one pattern: make the sections disjoint",
    ),
    (M + "pattern p { heads 0..9: causal }", "2:19", "heads 0..9 are outside the model's 8 heads (0..8)", None),
    (M + "pattern p { layers 7: causal rest: full }", "2:20", "layer 7 is outside the model's 4 layers (0..4)", None),
    (
        "model { layers = 4, heads = 8, kv_heads = 3 }\npattern p = causal",
        "1:43",
        "kv_heads (3) must divide heads (8)",
        "each KV head serves an equal group of query heads",
    ),
    (
        "pattern p { heads 0: causal rest: full }",
        "1:1",
        "pattern p has sections, so it needs the model's head count",
        'add heads to the file\'s model { ... }, or give it: --model heads=N on the command line, model={"heads": N} in attnc.check or attnc.load',
    ),
    (
        M + "pattern p { kv_heads @retrieval: causal rest: full }",
        "2:22",
        "unknown head set '@retrieval': no head-set file was given",
        'name one with headsets "file.json" or --headsets FILE',
    ),
    (
        "pattern class = causal",
        "1:1",
        "bad pattern name 'class': 'class' is a Python keyword and cannot be a name",
        "choose another name, such as class_",
    ),
    (
        "pattern __import__ = causal",
        "1:1",
        "bad pattern name '__import__': names starting with '__' are reserved",
        "choose a name without the leading '__'",
    ),
    (
        "param X = 2 ** 64\npattern p = window(X)",
        "1:11",
        "2 ** 64 does not fit in 64 bits",
        "values must lie in [-9223372036854775808, 9223372036854775807]",
    ),
    ("param X = 4 // 0\npattern p = window(X)", "1:11", "division by zero in 4 // 0", None),
    ("param X = Y\nparam Y = X\npattern p = window(X)", "1:1", "'X' is defined in terms of itself: X -> Y -> X", None),
    ('import "nothere.attn"\npattern p = causal', "1:1", "imported file 'nothere.attn' does not exist", None),
    (
        "patern p = causal",
        "1:1",
        "expected a new statement (import, headsets, param, model, grid, let, pattern, cache), found 'patern'",
        "did you mean 'pattern'?",
    ),
    ("pattern p {\n  heads 0..4 causal\n}", "2:14", "expected ':' or '{' after a selector, found 'causal'", None),
    ("pattern p = causal & (sink(4) | window(3)", "1:42", "expected ')', found the end of the file", None),
    (
        "let heads = causal",
        "1:5",
        "expected a name, found the reserved word 'heads'",
        "'heads' is a reserved word of the language; choose another name",
    ),
    ("pattern p = causal;", "1:19", "unexpected character ';'", "statements need no separator: remove the ';'"),
    ("cache { keep sinks(4) }", "1:14", "unknown keep rule 'sinks'", "did you mean 'sink'?"),
    ("model { layer = 30 }", "1:9", "unknown model field 'layer'", "did you mean 'layers'?"),
    (
        "pattern p = causal\ncache { evict snapkv at prefil }",
        "2:25",
        "unknown eviction timing 'prefil'",
        "did you mean 'prefill'?",
    ),
    (
        "pattern p = causal\ncache { budget = lineer(1, 2) }",
        "2:18",
        "unknown budget schedule 'lineer'",
        "did you mean 'linear'?",
    ),
    (
        "param X = 99999999999999999999",
        "1:11",
        "integer 99999999999999999999 does not fit in 64 bits",
        "the largest integer is 9223372036854775807",
    ),
    (
        M + "pattern p = causal\ncache { heads 0..3 { budget = full } keep recent(3) }",
        "3:9",
        "a cache keeps whole KV heads, but these heads cover only part of KV head 0 (query heads 0..4)",
        "select KV heads with kv_heads, or whole GQA groups of query heads",
    ),
    (
        M + "pattern p = causal\ncache { budget = [1, 2] evict h2o }",
        "3:9",
        "the budget lists 2 values, but the model has 4 layers",
        "give one budget per layer",
    ),
    (
        "grid(1, 2, 3, 4)\npattern p = causal",
        "1:1",
        "a grid has 1 to 3 dimensions, got 4",
        "as in grid(16, 48, 80) for frames x height x width",
    ),
    ("pattern p = causal(4)", "1:13", "causal takes no arguments", "causal takes no arguments: write causal"),
]


def first_error(source: str) -> Diagnostic:
    with pytest.raises(AttnError) as info:
        resolve_text(source, "t.attn")
    return info.value.diagnostics[0]


@pytest.mark.parametrize("source, where, message, hint", BAD_INPUTS)
def test_bad_input(source: str, where: str, message: str, hint: str | None) -> None:
    d = first_error(source)
    assert f"{d.loc.line}:{d.loc.col}" == where
    assert d.message == message
    assert d.hint == hint
    assert d.loc.file == "t.attn"


def test_bad_input_table_is_large() -> None:
    assert len(BAD_INPUTS) >= 25


def test_rendering() -> None:
    d = first_error("param W = 4\n  pattern p = window()")
    assert d.render() == (
        "t.attn:2:22: error: expected an integer expression, found ')'\n"
        "      pattern p = window()\n"
        "                         ^\n"
        "  hint: window takes one size, as in window(1024), or window(left = L, right = R)"
    )


def test_rendering_keeps_tabs_under_the_caret() -> None:
    d = first_error("pattern\tp = window(0)")
    assert d.render().splitlines()[1:3] == ["    pattern\tp = window(0)", "    " + " " * 7 + "\t" + " " * 11 + "^"]


def test_error_text_is_every_rendered_diagnostic() -> None:
    with pytest.raises(AttnError) as info:
        resolve_text("pattern p = window(0) | sink(0)", "t.attn")
    assert str(info.value) == "\n".join(d.render() for d in info.value.diagnostics)


def test_several_errors_are_reported_together() -> None:
    source = """param W = 4
param W = 5
let local = causal & windw(W)
pattern p {
  heads 0..4: local
  heads 3..8: sink(0) | chunk(Q)
}
cache { budget = 2 keep sink(4) evict snapkv(pool = mx) }
model { layers = 4, heads = 8, kv_heads = 2 }
"""
    with pytest.raises(AttnError) as info:
        resolve_text(source, "t.attn")
    got = [(d.loc.line, d.loc.col, d.message) for d in info.value.diagnostics]
    assert got == [
        (2, 1, "param 'W' is defined twice"),
        (3, 22, "unknown primitive 'windw'"),
        (6, 3, "this section and the one on line 5 both cover head 3"),
        (6, 20, "sink: size must be at least 1, got size=0"),
        (6, 31, "parameter 'Q' is not defined"),
        (8, 9, "the budget of 2 tokens is smaller than its keep rules: sink 4 + recent 0 = 4"),
        (8, 53, "pool cannot be 'mx'"),
    ]


def test_errors_of_sections_and_primitives_together() -> None:
    source = M + "pattern p { heads 0..9: causal layers 1..1: full rest: window(0) }"
    with pytest.raises(AttnError) as info:
        resolve_text(source, "t.attn")
    assert [d.message for d in info.value.diagnostics] == [
        "heads 0..9 are outside the model's 8 heads (0..8)",
        "the range 1..1 is empty",
        "window: size must be at least 1, got size=0",
    ]


@pytest.mark.parametrize(
    "source",
    [
        'pattern __import__("os").system("x") = causal',
        "pattern class = causal",
        "pattern import = causal",
        "pattern def = causal",
        "pattern lambda = causal",
        "pattern None = causal",
        "pattern True = causal",
        "pattern __class__ = causal",
        "pattern p = causal; import os",
        "pattern p\u2028= causal",
        "pattern 1p = causal",
        "pattern p.x = causal",
        "pattern p = causal\nlet __builtins__ = full",
        "let print = causal\nlet match = print\npattern p = match",
        "param exec = 4\nparam def = exec\npattern p = window(def)",
        'pattern p = causal\n# """ \n"""',
        "pattern " + "x" * 65 + " = causal",
    ],
)
def test_hostile_names_are_rejected(source: str) -> None:
    with pytest.raises(AttnError) as info:
        resolve_text(source, "t.attn")
    assert info.value.diagnostics


def test_safe_names_are_accepted() -> None:
    spec = resolve_text(
        "let _local2 = causal\nparam W_1 = 3\npattern Streaming_LLM_2 = _local2 & window(W_1)", "t.attn"
    )
    assert spec.name == "Streaming_LLM_2"


def test_parse_errors_stop_at_the_first() -> None:
    with pytest.raises(AttnError) as info:
        parse("pattern p = (\npattern q = )", "t.attn")
    assert len(info.value.diagnostics) == 1


def test_attn_error_needs_a_diagnostic() -> None:
    with pytest.raises(ValueError):
        AttnError([])


def test_errors_in_files_on_disk_show_their_path(tmp_path: Path) -> None:
    from attnc.spec.resolve import load

    path = tmp_path / "x.attn"
    path.write_text("pattern p = window(0)\n")
    with pytest.raises(AttnError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:1:20: error: window: size must be at least 1, got size=0\n")
