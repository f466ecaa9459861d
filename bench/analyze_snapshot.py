"""Write `attnc analyze` output (text and --json) of every pattern file, for diffing two versions.

    python bench/analyze_snapshot.py OUTDIR [FILES ...] [--seq 4096 ...]

One file per pattern and variant under OUTDIR, the file named relative to the checkout (so that
two checkouts compare), with the timing lines ("analysed in ... s", JSON "seconds") blanked
out, since they differ from run to run. Compare two snapshots with
`diff -r BEFORE AFTER`: an optimisation must leave every byte of the analyses unchanged.
Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def analyze(path: Path, extra: list[str]) -> str:
    """stdout and stderr of one `attnc analyze` run, with the run-dependent timings removed."""
    cmd = [sys.executable, "-m", "attnc.cli", "analyze", os.path.relpath(path, ROOT), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ) | {"COLUMNS": "160"})
    out = r.stdout
    if "--json" in extra and r.returncode == 0:
        d = json.loads(out)
        d["seconds"] = {}
        out = json.dumps(d, indent=1, sort_keys=True)
    out = re.sub(r"analysed in \d+\.\d+ s", "analysed in X s", out)
    return f"exit {r.returncode}\n{out}\n--- stderr\n{r.stderr}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--seq", action="append", default=[], help="also analyse at this length (repeatable)")
    args = ap.parse_args(argv)
    files = args.files or sorted((ROOT / "patterns").glob("*.attn"))
    args.out.mkdir(parents=True, exist_ok=True)
    variants = {"text": [], "json": ["--json"]} | {f"json_{s}": ["--json", "--seq", s] for s in args.seq}
    for f in files:
        for name, extra in variants.items():
            (args.out / f"{f.stem}.{name}.txt").write_text(analyze(f, extra))
        print(f.stem, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
