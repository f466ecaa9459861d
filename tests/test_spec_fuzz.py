"""Robustness: random text and random mutations of every pattern file either resolve or
raise AttnError with a location; never another exception, never a hang."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.spec.describe import describe
from attnc.spec.errors import AttnError
from attnc.spec.resolve import resolve_text
from tests.strategies import examples

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
FILES = sorted(PATTERNS.glob("*.attn"))
TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|[A-Za-z_][A-Za-z0-9_]*|[0-9]+|\.\.|\*\*|//|.', re.S)
VOCABULARY = [
    "(", ")", "{", "}", "[", "]", "|", "&", "-", "+", "*", "**", "//", "%", "..", ",", ":", "=", "@", "#", '"', "\n",
    "0", "1", "-1", "4", "65536", "99999999999999999999", "2 ** 70", "W", "S", "x",
    "import", "headsets", "param", "model", "grid", "prefix", "let", "pattern", "cache", "heads", "kv_heads", "layers",
    "rest", "budget", "keep", "evict", "at", "aggregate", "positions", "true", "false",
    "full", "causal", "window", "sink", "dilated", "strided", "stride", "chunk", "global", "band", "power", "neighborhood",
    "snapkv", "h2o", "tova", "key_norm", "linear", "adaptive", "recent", "prefill", "decode", "mean", "rerotate",
    '"heads/smollm2.json"', '"streaming_llm.attn"', '"lserve.attn"', "@retrieval", "class", "__import__",
]  # fmt: skip
SETTINGS = examples(10)


def check_robust(text: str, filename: str) -> None:
    """Resolving `text` succeeds or raises AttnError whose every diagnostic has a location."""
    try:
        spec = resolve_text(text, filename)
    except AttnError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.loc.file and d.loc.line >= 1 and d.loc.col >= 1, d
            assert d.message
        assert str(exc)
    else:
        assert describe(spec)


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


edits = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "replace", "delete_token", "insert_token", "replace_token"]),
        st.floats(min_value=0, max_value=1, exclude_max=True),
        st.one_of(st.characters(codec="utf-8"), st.sampled_from(VOCABULARY)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(text: str, changes: list[tuple[str, float, str]]) -> str:
    """Apply character- or token-level edits at relative positions."""
    for kind, where, payload in changes:
        if kind.endswith("_token"):
            parts = tokens(text)
            i = int(where * (len(parts) + 1))
            if kind == "delete_token":
                del parts[i : i + 1]
            elif kind == "insert_token":
                parts.insert(i, f" {payload} ")
            else:
                parts[i : i + 1] = [f" {payload} "]
            text = "".join(parts)
        else:
            i = int(where * (len(text) + 1))
            text = {"delete": text[:i] + text[i + len(payload) :], "insert": text[:i] + payload + text[i:]}.get(
                kind, text[:i] + payload + text[i + 1 :]
            )
    return text


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
@SETTINGS
@given(changes=edits)
def test_mutations_of_pattern_files(path: Path, changes: list[tuple[str, float, str]]) -> None:
    check_robust(mutate(path.read_text(), changes), str(path))


@examples(150)
@given(text=st.text(max_size=300))
def test_random_text(text: str) -> None:
    check_robust(text, str(PATTERNS / "random.attn"))


@examples(150)
@given(parts=st.lists(st.sampled_from(VOCABULARY), max_size=40))
def test_random_token_soup(parts: list[str]) -> None:
    check_robust(" ".join(parts), str(PATTERNS / "soup.attn"))


@pytest.mark.parametrize(
    "text",
    [
        "pattern p = " + "(" * 3000 + "causal" + ")" * 3000,
        "param X = " + "-" * 3000 + "1\npattern p = causal",
        "pattern p = " + " | ".join(["causal"] * 500),
        "let a0 = causal\n" + "".join(f"let a{i + 1} = a{i} | a{i}\n" for i in range(60)) + "pattern p = a60",
        "param X = 10 ** 10 ** 10\npattern p = window(X)",
        "pattern p " + "{ rest " * 300 + ": causal" + "}" * 300,
        "pattern p = window(" + "9" * 5000 + ")",
        'import "/dev/null"\npattern p = causal',
        'import "."\npattern p = causal',
        'headsets "/dev/zero"\nmodel { heads = 2, layers = 1 }\npattern p { kv_heads @x: causal rest: full }',
        "pattern p = causal\x00",
    ],
)
def test_pathological_inputs(text: str) -> None:
    check_robust(text, str(PATTERNS / "pathological.attn"))
