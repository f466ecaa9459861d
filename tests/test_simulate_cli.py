"""`attnc simulate`: smoke tests of the command on the published patterns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnc.cli import main

ROOT = Path(__file__).resolve().parents[1]
STREAMING = str(ROOT / "patterns" / "streaming_llm.attn")


def simulate(*argv: str) -> int:
    return main(["simulate", *argv])


def test_table(capsys):
    assert simulate(STREAMING, "--seq", "32k") == 0
    out = capsys.readouterr().out
    for text in ("attnc ms", "SDPA ms", "speedup", "where attnc's time goes", "full tiles", "idle SMs", "KV cache"):
        assert text in out


def test_json_sweep(capsys, tmp_path):
    from tests.test_simulate_model import anchors_profile

    profile = tmp_path / "h100.json"
    profile.write_text(anchors_profile().to_json())
    assert simulate(STREAMING, "--sweep", "4k..16k", "--json", "--profile", str(profile)) == 0
    doc = json.loads(capsys.readouterr().out)
    results = doc["results"]
    assert [r["shape"]["n"] for r in results] == [4096, 8192, 16384]
    assert all(r["flex_is_estimate"] and r["speedup"] > 1 for r in results)
    assert doc["profile"] == "h100"


def test_decode_and_overrides(capsys):
    assert (
        simulate(
            STREAMING,
            "--decode",
            "--seq",
            "128k",
            "--batch",
            "8",
            "--heads",
            "32",
            "--kv-heads",
            "8",
            "--json",
            "-D",
            "W=4092",
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["mode"] == "decode" and r["speedup"] > 10
    assert r["cache_bytes"] == 8 * 8 * (4 + 4092) * 2 * 128 * 2


def test_plot(tmp_path, capsys):
    png = tmp_path / "speedup.png"
    assert simulate(STREAMING, "--sweep", "4k,8k", "--plot", str(png)) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_per_head_file_with_its_model(capsys):
    assert simulate(str(ROOT / "patterns" / "duo_attention.attn"), "--seq", "8k", "--json") == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["shape"]["heads"] == 9 and r["layers"] == 30


def test_errors_are_reported(tmp_path, capsys):
    assert simulate(STREAMING, "--profile", str(tmp_path / "none.json")) == 2
    assert "no device profile" in capsys.readouterr().err
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern p = window()\n")
    assert simulate(str(bad)) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        simulate(STREAMING, "--sweep", "16k..4k")
