"""`attnc analyze`: the analysis record, its JSON and text, the pictures, validation warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attnc.compiler.count import count_pairs
from attnc.compiler.ir import Status
from attnc.compiler.lower import lower
from attnc.compiler.passes import describe_members, validate
from attnc.compiler.report import analyze, coarse_status, plot, render
from attnc.spec.ast import Loc
from attnc.spec.resolved import Assignment, CachePolicy, ModelShape, RBudget, Spec
from tests.strategies import op, prim

LOC = Loc(file="<test>", line=1, col=1)
C = prim("causal")
STREAMING = op("&", C, op("|", prim("sink", size=4), prim("window", size=1020)))
ROOT = Path(__file__).resolve().parents[1]


def spec(*assignments, model=ModelShape(layers=2, heads=4, kv_heads=2, head_dim=64), cache=()) -> Spec:
    """A resolved spec built by hand: (expr, layers, heads) triples, None meaning all."""
    rows = tuple(Assignment(expr=e, layers=l, heads=h, loc=LOC) for e, l, h in assignments)
    return Spec(source="", name="test", params={}, model=model, assignments=rows, cache=tuple(cache))


def policy(tokens=None, sink=0, recent=0) -> CachePolicy:
    budget = RBudget(kind="full") if tokens is None else RBudget(kind="tokens", tokens=tokens)
    return CachePolicy(budget=budget, sink=sink, recent=recent, loc=LOC)


def test_streaming_analysis_record_json_and_text():
    a = analyze(lower(spec((STREAMING, None, None))), 4096, layers=6)
    g = a.groups[0]
    assert g.cost.pairs.value == count_pairs(g.cost.pattern, 4096)
    assert g.kv.tokens == 1023 and g.kv.layout.exact
    assert a.totals["kv_tokens"] == 2 * 2 * 1023  # 2 layers x 2 KV heads
    assert a.totals["flops"] == 4 * 64 * g.cost.pairs.value * 8
    assert a.receptive.rows[2].span == 3 * 1019 and a.receptive.rows[-1].covered == 4096
    d = json.loads(json.dumps(a.to_dict(), default=str))
    assert d["groups"][0]["asymptotic"] == "O(N)" and d["groups"][0]["kv_cache"]["tokens"] == 1023
    assert d["receptive_field"]["full_at"] == -(-(4095 - 4) // 1019)
    from rich.console import Console

    console = Console(record=True, width=140)
    render(a, console)
    text = console.export_text()
    for needle in (
        "sink: keys 0..4",
        "ring of the last 1019 keys",
        "512*(2*N - 1023)",
        "layers to full coverage",
        "O(N)",
    ):
        assert needle in text, needle


def test_per_head_groups_share_kv_heads_by_union():
    duo = spec((C, None, (0, 1)), (STREAMING, None, (2, 3)))  # KV head 0: dense, KV head 1: streaming
    a = analyze(lower(duo), 8192, layers=2)
    assert len(a.groups) == 2
    assert a.totals["kv_tokens"] == 2 * (8192 + 1023)
    mixed = spec((C, None, (0,)), (STREAMING, None, (1, 2, 3)))  # KV head 0 serves both patterns
    b = analyze(lower(mixed), 8192, layers=2)
    assert b.totals["kv_tokens"] == 2 * (8192 + 1023)


def test_plot_writes_a_png(tmp_path):
    a = analyze(
        lower(spec((STREAMING, None, None), (op("&", C, prim("stride", stride=8, offset=7)), None, (3,)))),
        2048,
        layers=4,
    )
    out = tmp_path / "a.png"
    plot(a, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def codes(s: Spec, n: int = 1024) -> set[str]:
    a = analyze(lower(s), n, with_receptive=False)
    return {d.code for d in a.diagnostics}


def test_warns_about_empty_patterns_and_rows():
    empty = op("-", op("&", C, prim("window", size=4)), op("&", C, prim("window", size=8)))
    assert "empty-pattern" in codes(spec((empty, None, None)))
    p = lower(spec((op("&", C, prim("band", lo=1, hi=4)), None, None)))
    diags = validate(p, 512)
    rows = [d for d in diags if d.code == "empty-rows"]
    assert rows and "(0)" in rows[0].message


def test_warns_about_non_causal_patterns_used_for_decoding():
    bidir = prim("window", left=4, right=4)
    assert "non-causal-decode" in codes(spec((bidir, None, None), cache=[policy()]))
    assert "non-causal" in codes(spec((bidir, None, None)))


def test_compares_cache_budgets_with_the_lossless_cache():
    s = spec((STREAMING, None, None), cache=[policy(1024, sink=4, recent=1020)])
    assert not codes(s, 8192) & {"lossy-budget", "budget-exceeds-live", "sink-not-read"}
    assert "budget-exceeds-live" in codes(spec((STREAMING, None, None), cache=[policy(4096, sink=4)]), 8192)
    assert "lossy-budget" in codes(spec((STREAMING, None, None), cache=[policy(512, sink=4)]), 8192)
    window = op("&", C, prim("window", size=1024))
    assert "sink-not-read" in codes(spec((window, None, None), cache=[policy(1024, sink=4, recent=1020)]), 8192)


def test_describe_members():
    assert describe_members(frozenset({(l, h) for l in range(2) for h in range(4)}), 2, 4) == "all heads"
    assert (
        describe_members(frozenset({(l, h) for l in range(2) for h in (0, 1, 3)}), 2, 4) == "all layers, heads 0..2, 3"
    )
    assert describe_members(frozenset({(0, 0), (1, 1)}), 2, 4) == "layers 0: heads 0; layers 1: heads 1"


def test_coarse_block_map():
    status = np.array([[2, 2, 0, 0], [2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]], dtype=np.int8)
    coarse, f = coarse_status(status, 2)
    assert f == 2 and coarse.tolist() == [[Status.SOME, Status.NONE], [Status.NONE, Status.SOME]]


def test_cli_json_on_a_pattern_file(capsys):
    from attnc.cli import main

    path = ROOT / "patterns" / "streaming_llm.attn"
    assert main(["analyze", str(path), "--seq", "8k", "--json", "--block", "64x128", "--layers", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n"] == 8192 and d["block"] == [64, 128]
    assert [r["kind"] for r in d["groups"][0]["kv_cache"]["layout"]["regions"]] == ["sink", "ring"]


def test_cli_reports_bad_arguments(capsys):
    from attnc.cli import main

    with pytest.raises(SystemExit):
        main(["analyze", "x.attn", "--block", "0x4"])
    assert main(["analyze", str(ROOT / "no_such_file.attn")]) != 0
