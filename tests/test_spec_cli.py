"""`attnc check`, run in-process: exit codes, summaries on stdout, errors on stderr."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from attnc.cli import SUBCOMMANDS, Subcommand, build_parser, main, register

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"


def test_check_valid_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(PATTERNS / "streaming_llm.attn"), str(PATTERNS / "duo_attention.attn")]
    assert main(["check", *files]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{files[0]}: ok" in out and f"{files[1]}: ok" in out
    assert "streaming_llm: causal, the first 4 positions or the last 1020 positions" in " ".join(out.split())


def test_check_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.attn"
    bad.write_text("param W = 4\n  pattern p = window()\n")
    assert main(["check", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{bad}:2:22: error: expected an integer expression, found ')'\n"
        "      pattern p = window()\n"
        "                         ^\n"
        "  hint: window takes one size, as in window(1024), or window(left = L, right = R)\n"
    )


def test_check_reports_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern p = window(0) | sink(0)\n")
    assert main(["check", str(bad), str(PATTERNS / "h2o.attn")]) == 2
    out, err = capsys.readouterr()
    assert "h2o.attn: ok" in out
    assert err.count("error:") == 2


def test_defines_and_model_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.attn"
    path.write_text("param W = 4\npattern p { heads 0..2: window(W) rest: causal }\n")
    assert main(["check", str(path), "-D", "W=64", "--model", "layers=2,heads=4"]) == 0
    out, _ = capsys.readouterr()
    assert "the last 64 positions" in out
    assert main(["check", str(path), "-D", "X=64", "--model", "heads=4"]) == 2
    _, err = capsys.readouterr()
    assert "<command line>: error: -D X: no param 'X' in this file or its imports" in err


def test_headsets_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    heads = tmp_path / "h.json"
    heads.write_text('{"retrieval": [0], "streaming": [1, 2]}')
    args = ["check", str(PATTERNS / "duo_attention.attn"), "--headsets", str(heads)]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "heads 0..3: causal" in " ".join(out.split())


@pytest.mark.parametrize(
    "args", [["check"], ["check", "x.attn", "-D", "W"], ["check", "x.attn", "-D", "W=big"], ["frobnicate"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "check" in capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "no/such/file.attn"]) == 2
    assert "<command line>: error: file 'no/such/file.attn' does not exist" in capsys.readouterr().err


def test_subcommands_can_be_registered() -> None:
    ran: list[str] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("word")

    def run(args: argparse.Namespace) -> int:
        ran.append(args.word)
        return 0

    register(Subcommand("echo-test", "test command", configure, run))
    try:
        assert "echo-test" in build_parser().format_help()
        assert main(["echo-test", "hi"]) == 0 and ran == ["hi"]
    finally:
        del SUBCOMMANDS["echo-test"]


def test_package_api() -> None:
    import attnc

    spec = attnc.check(PATTERNS / "streaming_llm.attn", defines={"S": 8})
    assert spec.params == {"S": 8, "W": 1016}
    assert attnc.parse("pattern p = causal", "x.attn").statements[0].loc.file == "x.attn"
    with pytest.raises(attnc.AttnError):
        attnc.parse("pattern p =", "x.attn")
