"""bench/calibrate.py --seed never overwrites a shipped profile unless told to."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def calibrate():
    name = "attnc_bench_calibrate_hardening"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "calibrate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_seed_refuses_to_overwrite_the_shipped_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = calibrate()
    shipped = tmp_path / "h100.json"
    shipped.write_text("calibrated")
    monkeypatch.setattr(cal.sim, "PROFILE_DIR", tmp_path)
    assert cal.main(["--seed"]) == 2
    assert shipped.read_text() == "calibrated" and "--out" in capsys.readouterr().err
    out = tmp_path / "seeded.json"
    assert cal.main(["--seed", "--out", str(out)]) == 0
    assert shipped.read_text() == "calibrated" and cal.sim.load_profile(out).name == "h100"
