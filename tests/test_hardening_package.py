"""The wheel's package data: pyproject.toml declares every file of the pattern library and of
the docs, and the shipped library is reachable by name."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from attnc.cli import main

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parent.parent


def shipped_files() -> set[Path]:
    """Files of the source tree that the package-data declaration puts into the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = config["package-dir"]
    out = set()
    for package, globs in config["package-data"].items():
        parts = package.split(".")
        base = next(".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in dirs)
        folder = ROOT / dirs[base] / Path(*parts[len(base.split(".")) :])
        assert package in config["packages"], f"{package} has data but is not a package"
        out |= {p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, g) for g in globs)}
    return out


@pytest.mark.parametrize(
    "folder, pattern",
    [
        ("patterns", "**/*"),
        ("docs", "*.md"),
        ("docs/img", "*.png"),
        ("compiler/profiles", "*.json"),
        ("codegen/templates", "*.j2"),
    ],
)
def test_package_data_covers_the_library_and_docs(folder: str, pattern: str) -> None:
    files = {p for p in (ROOT / folder).glob(pattern) if p.is_file()}
    assert files and files <= shipped_files()


def test_library_by_name(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check", "streaming_llm", "duo_attention"]) == 0
    assert "streaming_llm: ok" in capsys.readouterr().out
    assert main(["patterns"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{p.stem} " in listing for p in (ROOT / "patterns").glob("*.attn"))
    (tmp_path / "streaming_llm").mkdir()  # an existing path wins over the library
    assert main(["check", "streaming_llm"]) == 2
    capsys.readouterr()


def test_docs_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["docs"]) == 0
    assert "language" in capsys.readouterr().out
    assert main(["docs", "language"]) == 0
    assert capsys.readouterr().out.startswith("# The `.attn` language")
    assert main(["docs", "langage"]) == 2
    assert "did you mean 'language'" in capsys.readouterr().err
