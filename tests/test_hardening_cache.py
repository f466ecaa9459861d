"""The generated-module cache: no bytecode trusted, stale temporaries cleaned, the umask
honoured, and pattern names that would hide a Python module refused."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

import attnc
from attnc.codegen.writer import STALE_TMP_SECONDS, write_atomic
from attnc.spec.errors import AttnError

ROOT = Path(__file__).resolve().parent.parent


def test_load_ignores_a_forged_pyc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .pyc that Python's import system would take for the cached module's is never run."""
    monkeypatch.setenv("ATTNC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "p.attn"
    source.write_text("pattern forged = causal\n")
    module = attnc.load(source)
    path = Path(module.__file__)
    pyc = Path(importlib.util.cache_from_source(str(path)))
    assert not pyc.exists(), "load must not write bytecode"
    pyc.parent.mkdir(exist_ok=True)
    forged = compile("raise RuntimeError('forged bytecode ran')", str(path), "exec")
    import marshal

    stat = path.stat()
    header = (
        importlib.util.MAGIC_NUMBER
        + (0).to_bytes(4, "little")
        + int(stat.st_mtime).to_bytes(4, "little")
        + (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    )
    pyc.write_bytes(header + marshal.dumps(forged))
    import sys

    del sys.modules[module.__name__]
    assert attnc.load(source).PATTERN["name"] == "forged"


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".m.py.abc123.tmp", tmp_path / ".m.py.def456.tmp"
    for tmp in (stale, fresh):
        tmp.write_text("half a module")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    write_atomic(tmp_path / "other.py", "x = 1\n")
    assert not stale.exists() and fresh.exists()


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.py", "x = 1\n")
        os.umask(0o077)
        write_atomic(tmp_path / "b.py", "x = 1\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.py").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.py").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["json", "os", "torch", "triton"])
def test_pattern_names_that_hide_modules_are_refused(name: str, tmp_path: Path) -> None:
    source = tmp_path / "p.attn"
    source.write_text(f"pattern {name} = causal\n")
    with pytest.raises(AttnError) as exc:
        attnc.check(source)
    assert f"would hide Python's module '{name}'" in str(exc.value) and f"{source}:1:1:" in str(exc.value)


def test_load_model_overrides_the_model_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "p.attn"
    source.write_text(
        "model { layers = 2, heads = 4, kv_heads = 2 }\npattern sized = causal & window(8)\ncache { keep recent(7) }\n"
    )
    assert attnc.load(source).PATTERN["model"] == {"layers": 2, "heads": 4, "kv_heads": 2, "head_dim": None}
    module = attnc.load(source, model=dict(layers=6, kv_heads=1, head_dim=32))
    assert module.PATTERN["model"] == {"layers": 6, "heads": 4, "kv_heads": 1, "head_dim": 32}


def test_a_missing_size_says_how_to_give_it(tmp_path: Path) -> None:
    source = tmp_path / "p.attn"
    source.write_text("pattern p = causal\ncache { budget = [4, 8] keep recent(2) evict snapkv }\n")
    with pytest.raises(AttnError) as exc:
        attnc.load(source)
    assert 'model={"layers": N} in attnc.check or attnc.load' in str(exc.value)
    assert attnc.check(source, model={"layers": 2}).cache
