"""The habits of the code base, checked: stages import only earlier stages, and the core
stays under its line budget (README.md states the number)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("spec", "compiler", "codegen", "runtime", "attnc")  # data flows this way
CORE_LINE_BUDGET = 22893  # lines of Python in the stages above, subpackages included (templates not counted)


def _stage_files() -> list[tuple[str, Path]]:
    return [(stage, path) for stage in STAGES for path in sorted((ROOT / stage).rglob("*.py"))]


def _imported_stages(stage: str, path: Path) -> list[tuple[int, str]]:
    """(line, stage) of every import of an attnc stage in a file, at any depth (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from ..codegen import x, from . import y
                sub = list(path.relative_to(ROOT / stage).parts[:-1]) if path.is_relative_to(ROOT / stage) else []
                base = ["attnc"] + ([] if stage == "attnc" else [stage]) + sub
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + ([f"{module}.{a.name}" for a in node.names] if not node.module else [])
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] != "attnc":
                continue
            target = parts[1] if len(parts) > 1 and parts[1] in STAGES[:-1] else "attnc"
            found.append((node.lineno, target))
    return found


@pytest.mark.parametrize("stage,path", _stage_files(), ids=lambda x: str(x).rsplit("/", 2)[-1])
def test_no_stage_imports_a_later_one(stage, path):
    rank = STAGES.index(stage)
    late = [(line, target) for line, target in _imported_stages(stage, path) if STAGES.index(target) > rank]
    assert not late, f"{path.relative_to(ROOT)} imports later stages: {late}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from ..codegen import writer\n    import attnc.runtime.hf\n")
    assert _imported_stages("compiler", f) == [(2, "codegen"), (3, "runtime")]


def test_core_line_budget():
    lines = sum(len(path.read_text().splitlines()) for _, path in _stage_files())
    assert lines <= CORE_LINE_BUDGET, f"the core has {lines} lines, over its budget of {CORE_LINE_BUDGET}"
