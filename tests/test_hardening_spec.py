"""Front-end hardening: one range notation, input text, sizes and their limits, imports."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnc.spec.describe import describe
from attnc.spec.errors import AttnError
from attnc.spec.resolve import load, resolve_text
from attnc.spec.shape import ranges, span


def error_text(text: str, filename: str = "<string>", **kwargs) -> str:
    with pytest.raises(AttnError) as exc:
        resolve_text(text, filename, **kwargs)
    return exc.value.render()


# ---------------------------------------------------------------- one range notation


@given(st.sets(st.integers(0, 60), min_size=1))
def test_ranges_are_half_open_and_read_back(indices: set[int]) -> None:
    """Every printed range a..b holds a, ..., b-1, so parsing the text gives the set back."""
    back: set[int] = set()
    for part in ranges(indices).split(", "):
        lo, _, hi = part.partition("..")
        back |= set(range(int(lo), int(hi) if hi else int(lo) + 1))
    assert back == indices


def test_span() -> None:
    assert span(0, 4) == "0..4" and span(3, 4) == "3"


def test_check_describes_global_with_the_notation() -> None:
    text = describe(resolve_text("pattern p = causal & (window(8) | global(5))"))
    assert "the first 5 positions (0..5)" in text


def test_analysis_prints_half_open_ranges() -> None:
    from attnc.compiler.lower import lower
    from attnc.compiler.liveness import cache_layout
    from attnc.compiler.passes import describe_members

    assert describe_members(frozenset({(0, 0), (0, 1), (0, 3), (1, 0), (1, 1), (1, 3)}), 3, 4) == "layers 0..2, heads 0..2, 3"
    layout = cache_layout(lower(resolve_text("pattern p = causal & (sink(4) | window(16))")).groups[0].pattern)
    assert "sink: keys 0..4" in " ".join(r.describe() for r in layout.regions)


def test_errors_use_the_notation() -> None:
    text = error_text("model { heads = 8 }\npattern p { heads 0..9: causal }")
    assert "heads 0..9 are outside the model's 8 heads (0..8)" in text
