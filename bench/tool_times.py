"""Per-file times of the attnc tools: `simulate --seq 131072`, `analyze` and `compile`.

    python bench/tool_times.py [FILES ...] [--seq 131072] [--repeat 2]

Runs each command on each pattern file (default: patterns/*.attn) as a fresh process, the
way a user runs it, and prints wall-clock seconds and CPU seconds (user + system of the
child: less sensitive than the wall clock to other work on a shared machine), the least of
`--repeat` runs. The goal is under 1 s wall per file and command, 0.7 s on an idle 2-core
machine. attnc's sources are byte-compiled first, as `pip install` does (a checkout run with
PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module on every run, some 0.15 s).
Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, exit status) of one run of cmd."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--seq", default="131072", help="simulate's --seq")
    ap.add_argument("--repeat", type=int, default=2, help="runs per command; the least wall and CPU time count")
    args = ap.parse_args(argv)
    files = args.files or sorted((ROOT / "patterns").glob("*.attn"))
    for package in ("attnc", "spec", "compiler", "codegen", "runtime"):
        compileall.compile_dir(ROOT / package, quiet=1)
    attnc = [sys.executable, "-m", "attnc.cli"]
    out = tempfile.mkdtemp(prefix="attnc_tool_times_")
    commands = {
        "simulate": lambda f: attnc + ["simulate", str(f), "--seq", args.seq],
        "analyze": lambda f: attnc + ["analyze", str(f)],
        "compile": lambda f: attnc + ["compile", str(f), "-o", out],
    }
    print(f"{'file':34s}" + "".join(f"{c + ' wall/cpu s':>22s}" for c in commands))
    worst = {c: (0.0, "") for c in commands}
    worst_wall = {c: (0.0, "") for c in commands}
    for f in files:
        cells = []
        for name, make in commands.items():
            runs = [timed(make(f)) for _ in range(max(args.repeat, 1))]
            wall, cpu, rc = min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs)
            cells.append(f"{wall:10.2f} /{cpu:5.2f}{'' if rc in (0, 2) else ' rc' + str(rc):>5s}")
            worst[name] = max(worst[name], (cpu, f.stem))
            worst_wall[name] = max(worst_wall[name], (wall, f.stem))
        print(f"{f.stem:34s}" + "".join(f"{c:>22s}" for c in cells), flush=True)
    print("slowest (wall s): " + ", ".join(f"{c} {t:.2f} ({n})" for c, (t, n) in worst_wall.items()))
    print("slowest (CPU s): " + ", ".join(f"{c} {t:.2f} ({n})" for c, (t, n) in worst.items()))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (timings assume an idle machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
