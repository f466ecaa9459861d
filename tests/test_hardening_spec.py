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

    assert (
        describe_members(frozenset({(0, 0), (0, 1), (0, 3), (1, 0), (1, 1), (1, 3)}), 3, 4)
        == "layers 0..2, heads 0..2, 3"
    )
    layout = cache_layout(lower(resolve_text("pattern p = causal & (sink(4) | window(16))")).groups[0].pattern)
    assert "sink: keys 0..4" in " ".join(r.describe() for r in layout.regions)


def test_errors_use_the_notation() -> None:
    text = error_text("model { heads = 8 }\npattern p { heads 0..9: causal }")
    assert "heads 0..9 are outside the model's 8 heads (0..8)" in text


# ---------------------------------------------------------------- input text


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(AttnError) as exc:
        load(path, **kwargs)
    return exc.value.render()


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    assert load(write(tmp_path / "p.attn", b"\xef\xbb\xbfpattern p = causal\n")).name == "p"


def test_non_utf8_byte_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "p.attn", b"pattern p = causal\n# caf\xe9\n")
    assert load_error(path).startswith(f"{path}:2:6: error: byte 0xe9 is not valid UTF-8\n    # caf")


def test_import_symlink_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "loop.attn").symlink_to(tmp_path / "loop.attn")
    path = write(tmp_path / "p.attn", 'import "loop.attn"\npattern p = causal\n')
    assert f"{path}:1:1: error:" in load_error(path)


def test_deep_headset_json_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "h.json", "[" * 100_000 + "]" * 100_000)
    path = write(
        tmp_path / "p.attn", 'model { heads = 2 }\nheadsets "h.json"\npattern p { kv_heads @r: causal rest: full }\n'
    )
    assert "JSON nested too deeply" in load_error(path)


def test_duplicate_headset_keys_are_an_error(tmp_path: Path) -> None:
    write(tmp_path / "h.json", '{"r": [0],\n "r": [1]}')
    path = write(
        tmp_path / "p.attn", 'model { heads = 2 }\nheadsets "h.json"\npattern p { kv_heads @r: causal rest: full }\n'
    )
    assert f'{tmp_path / "h.json"}:2:2: error: key "r" appears twice in one object' in load_error(path)


def test_flat_union_is_shallow() -> None:
    """100 terms joined by `|` are one level of nesting, not 100 (the tree is balanced)."""
    spec = resolve_text("pattern p = " + " | ".join(f"window({i + 1})" for i in range(1000)))
    depth = lambda e: 1 + max(depth(e.left), depth(e.right)) if hasattr(e, "left") else 0  # noqa: E731
    assert depth(spec.assignments[0].expr) == 10
    assert "more than 4096 terms" in error_text("pattern p = " + " | ".join(["causal"] * 5000))
    assert "nested more than 100 levels" in error_text("pattern p = causal" + " - window(1)" * 101)


def test_list_budget_needs_the_layer_count() -> None:
    text = error_text("pattern p = causal\ncache { budget = [4, 8] keep recent(2) evict snapkv }", "b.attn")
    assert text.startswith("b.attn:2:9: error: a list budget needs the model's layer count")


# ---------------------------------------------------------------- sizes have maxima


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "model { heads = 2**62 }\npattern p { heads 0: causal rest: full }",
            "1:17",
            "the model's heads is 4611686018427387904, more than the limit of 1,024",
        ),
        (
            "model { layers = 10**6, heads = 10**6 }\npattern p = causal",
            "1:18",
            "the model's layers is 1000000, more than the limit of 1,024",
        ),
        (
            "model { layers = 1024, heads = 1024 }\npattern p = causal",
            "1:32",
            "1,048,576 (layer, head) pairs, more than the limit of 65,536",
        ),
        ("model { head_dim = 4096 }\npattern p = causal", "1:20", "the model's head_dim is 4096"),
        ("pattern p = window(10**18)", "1:20", "window's size is 1000000000000000000, larger than the limit of 2**30"),
        ("pattern p = band(-2**31, 0)", "1:18", "band's lo is -2147483648, larger than the limit"),
        ("pattern p = dilated(2**16, 2**16)", "1:28", "the span (size - 1) * dilation + 1 is 4294901761"),
        ("grid(2**16, 2**16)\npattern p = causal", "1:1", "the grid's token count"),
        (
            "pattern p = causal & window(8)\ncache { budget = 2**40 keep recent(8) evict snapkv }",
            "2:18",
            "the budget is 1099511627776",
        ),
    ],
)
def test_sizes_above_their_limit_are_located_errors(text: str, where: str, message: str) -> None:
    rendered = error_text(text, "big.attn")
    assert rendered.startswith(f"big.attn:{where}: error: ") and message in rendered and "^" in rendered


def test_largest_sizes_pass() -> None:
    spec = resolve_text(
        "model { layers = 64, heads = 1024, head_dim = 1024 }\n"
        "pattern p = causal & (window(2**30) | sink(2**30) | chunk(2**30) | band(-2**30, 2**30) | stride(2**30, 2**30 - 1))"
    )
    assert spec.model.heads == 1024


def test_source_file_size_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "big.attn", "pattern p = causal\n" + "#" * 300_000 + "\n")
    assert "is larger than 256 KiB" in load_error(path)


# ---------------------------------------------------------------- the import root


def test_imports_stay_below_the_main_file(tmp_path: Path) -> None:
    write(tmp_path / "outside.attn", "let x = causal\n")
    write(tmp_path / "proj" / "common.attn", "let y = causal\n")
    write(tmp_path / "proj" / "lib" / "a.attn", 'import "../common.attn"\nlet z = y\n')
    main = write(tmp_path / "proj" / "main.attn", 'import "lib/a.attn"\npattern p = z\n')
    assert load(main).name == "p"
    bad = write(tmp_path / "proj" / "bad.attn", 'import "../outside.attn"\npattern p = x\n')
    assert f'{bad}:1:1: error: cannot import "../outside.attn": it is outside' in load_error(bad)
    (tmp_path / "proj" / "link.attn").symlink_to(tmp_path / "outside.attn")
    linked = write(tmp_path / "proj" / "linked.attn", 'import "link.attn"\npattern p = x\n')
    assert "it is outside" in load_error(linked)
