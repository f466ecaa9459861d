"""The pattern library: every file in patterns/ checks clean, cites its paper, and means
what its header says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attnc.compiler.cache_plan import lossless_rules
from attnc.compiler.lower import lower
from attnc.spec.resolve import resolve_text
from attnc.spec.describe import describe
from attnc.spec.resolve import load
from attnc.spec.resolved import ROp, RPrim, Spec

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
FILES = sorted(PATTERNS.glob("*.attn"))
METHODS = {
    "dense_causal", "mistral_sliding_window", "streaming_llm", "longnet_dilated", "sparse_transformer_strided",
    "sparse_transformer_fixed", "longformer", "llama4_chunked", "power_attention", "s2_attention", "duo_attention",
    "razor_attention", "lserve", "snapkv", "h2o", "pyramidkv", "cake", "tova",
    "moba", "nsa_selection", "quest", "quest_prefill", "pooled_pages", "xattention", "minference_vslash", "biformer",
}  # fmt: skip


def test_library_has_a_file_per_method() -> None:
    assert len(FILES) >= 17
    assert METHODS <= {f.stem for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_pattern_file_checks_clean(path: Path) -> None:
    spec = load(path)
    assert spec.name == path.stem, "the pattern is named after its file"
    assert describe(spec).startswith(f"{spec.name}: ")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_pattern_file_header_cites_its_paper(path: Path) -> None:
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = " ".join(header)
    assert len(header) >= 4, "a header comment explains the method and its parameters"
    assert re.search(r"\b(19|20)\d\d\b", text), "the header gives the year"
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", text) or "no paper" in text


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_sectioned_files_cover_smollm2_exactly_once(path: Path) -> None:
    spec = load(path)
    if spec.assignments[0].heads is None:
        return
    assert (spec.model.layers, spec.model.heads, spec.model.kv_heads, spec.model.head_dim) == (30, 9, 3, 64)
    cells = [(layer, head) for a in spec.assignments for layer in a.layers or () for head in a.heads or ()]
    assert sorted(cells) == [(layer, head) for layer in range(30) for head in range(9)]


def test_head_set_file_matches_smollm2() -> None:
    sets = json.loads((PATTERNS / "heads" / "smollm2.json").read_text())
    assert set(sets) == {"retrieval", "streaming"}
    for layer in range(30):
        retrieval, streaming = set(sets["retrieval"][str(layer)]), set(sets["streaming"][str(layer)])
        assert retrieval | streaming == {0, 1, 2} and not retrieval & streaming


def by_name(name: str) -> Spec:
    return load(PATTERNS / f"{name}.attn")


def test_streaming_llm() -> None:
    spec = by_name("streaming_llm")
    expr = spec.assignments[0].expr
    assert isinstance(expr, ROp) and expr.op == "&"
    assert isinstance(expr.right, ROp) and [expr.right.left.args, expr.right.right.args] == [
        {"size": 4},
        {"size": 1020},
    ]  # type: ignore[union-attr]
    (policy,) = spec.cache
    assert (policy.sink, policy.recent, policy.budget.tokens, policy.evict, policy.positions) == (
        4,
        1020,
        1024,
        None,
        "rerotate",
    )
    assert describe(spec, lossless_rules(lower(spec))).endswith(
        "cache keeps sink 4 + recent 1020 per KV head, keys re-rotated to their cache slots, lossless."
    )


def test_keep_rules_are_judged_by_liveness() -> None:
    """A keep-only cache is lossless exactly when the pattern's live keys fit in it."""
    text = "pattern p = causal & (sink(4) | window({w}))\ncache {{\n  keep sink(4)\n  keep recent(1020)\n}}\n"
    fits, wider = resolve_text(text.format(w=1020)), resolve_text(text.format(w=2048))
    assert describe(fits, lossless_rules(lower(fits))).endswith(", lossless.")
    assert describe(wider, lossless_rules(lower(wider))).endswith("lossy (the pattern reaches keys the cache drops).")
    assert not describe(wider).endswith("lossless.")  # not judged without the compiler


def test_mistral_window() -> None:
    expr = by_name("mistral_sliding_window").assignments[0].expr
    assert isinstance(expr, ROp) and isinstance(expr.right, RPrim) and expr.right.args == {"size": 4096}


def test_llama4_global_layers() -> None:
    spec = by_name("llama4_chunked")
    global_layers = [a.layers for a in spec.assignments if isinstance(a.expr, RPrim)]
    assert global_layers == [(3, 7, 11, 15, 19, 23, 27)]


def test_s2_attention_shards() -> None:
    spec = by_name("s2_attention")
    for a in spec.assignments:
        stride = a.expr.left.right  # type: ignore[union-attr]
        assert all(h % 4 == stride.args["offset"] for h in a.heads or ())


def test_lserve_streams_half_of_the_kv_heads() -> None:
    spec = by_name("lserve")
    streaming = [p for p in spec.cache if p.budget.kind == "tokens"]
    assert sum(len(p.layers or ()) * len(p.kv_heads or ()) for p in streaming) == 45


def test_duo_attention_uses_the_head_sets() -> None:
    spec = by_name("duo_attention")
    sets = json.loads((PATTERNS / "heads" / "smollm2.json").read_text())
    full = {
        (layer, kv)
        for p in spec.cache
        if p.budget.kind == "full"
        for layer in p.layers or ()
        for kv in p.kv_heads or ()
    }
    assert full == {(int(layer), kv) for layer, kvs in sets["retrieval"].items() for kv in kvs}


def test_kv_cache_methods() -> None:
    assert by_name("snapkv").cache[0].evict.options == {"window": 32, "pool": "max", "kernel": 7}  # type: ignore[union-attr]
    assert by_name("h2o").cache[0].evict.timing == "decode"  # type: ignore[union-attr]
    assert by_name("tova").cache[0].evict.score == "tova"  # type: ignore[union-attr]
    pyramid = by_name("pyramidkv").cache[0].budget
    assert (pyramid.kind, pyramid.first, pyramid.last) == ("linear", 1792, 256)
    cake = by_name("cake").cache[0].budget
    assert (cake.kind, cake.tokens, cake.by) == ("adaptive", 1024, "cake")
