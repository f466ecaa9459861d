"""Command-line entry points: `python -m attnc.cli`, `attnc --version`, `attnc compile` of many files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnc.cli import main

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = ROOT / "patterns"


def test_python_m_cli_knows_every_command() -> None:
    """`python -m attnc.cli` runs main() after every subcommand is registered."""
    out = subprocess.run(
        [sys.executable, "-m", "attnc.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("check", "analyze", "simulate", "compile", "calibrate", "eval"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("attnc ") and len(out.split()) == 2


def test_compile_many_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern p = window(0)\n")
    files = [PATTERNS / "streaming_llm.attn", bad, PATTERNS / "dense_causal.attn"]
    assert main(["compile", *map(str, files), "-o", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert {Path(line).name for line in out.split()} == {"streaming_llm.py", "dense_causal.py"}
    assert f"{bad}:1:" in err
    assert main(["compile", str(files[0]), str(files[2]), "-o", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "--seq", str(2**31)],
        ["analyze", "--layers", str(10**20)],
        ["simulate", "--seq", str(2**31)],
        ["simulate", "--decode", "--seq", str(2**40)],
        ["simulate", "--sweep", "1k..4096m"],
        ["simulate", "--batch", str(10**22)],
        ["simulate", "--heads", str(10**20)],
        ["simulate", "--head-dim", str(10**20)],
        ["simulate", "--seq", "1m", "--batch", "64", "--heads", "128"],
    ],
)
def test_huge_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, str(PATTERNS / "streaming_llm.attn")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnc {argv[0]}: error: ") and "Traceback" not in err


# ---------------------------------------------------------------- hints and warnings


def test_grid_prefix_inside_the_parentheses_gets_the_right_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "g.attn"
    bad.write_text("grid(32, 32, prefix = 1)\npattern p = neighborhood(kernel = 3)\n")
    assert main(["check", str(bad)]) == 2
    assert "hint: the prefix follows the grid's parentheses, as in grid(32, 32) prefix = 1" in capsys.readouterr().err


def test_global_on_a_grid_warns_and_suggests_the_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cls.attn"
    path.write_text("grid(8, 8)\npattern p = neighborhood(kernel = (3, 3)) | global(1)\n")
    for argv in (["check", str(path)], ["compile", str(path), "-o", str(tmp_path)]):
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert f"{path}: warning: " in err and "generic kernel" in err and "prefix = 1" in err
    path.write_text("grid(8, 8) prefix = 1\npattern p = neighborhood(kernel = (3, 3))\n")
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_simulate_sweep_off_the_grid_length_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.attn"
    path.write_text("grid(8, 8)\npattern p = neighborhood(kernel = (3, 3))\n")
    assert main(["simulate", "--sweep", "64,128", str(path)]) == 0
    err = capsys.readouterr().err
    assert "at N = 128" in err and "at N = 64:" not in err


def test_non_causal_patterns_have_no_cache_in_analyze(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "enc.attn"
    path.write_text("pattern p = window(left = 2, right = 5)\n")
    assert main(["analyze", "--seq", "256", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no decode cache" in out and "cache layout" not in out
    assert main(["simulate", "--seq", "256", str(path)]) == 0
    assert "no decode cache" in capsys.readouterr().out
