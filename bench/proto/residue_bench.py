"""Split launches against the diagonal loop: `causal & (window(W) | strided(m))` on the GPU.

    python bench/proto/residue_bench.py --generate out/residue      # here: the modules per case
    python3 bench/proto/residue_bench.py out/residue                # on the GPU (torch + triton)
    TRITON_INTERPRET=1 python bench/proto/residue_bench.py --smoke  # both steps on the CPU, tiny

The new plan (compiler/plan.py's split_pattern) runs the window's launch, then the strided
pairs that the window lacks per residue class q mod m (dense tiles of one class's rows and
keys, read through strided pointers), merged into the first launch's output by log-sum-exp.
The old plan visits the strided term as a diagonal loop (one useful diagonal per 64 x 64
tile). `rest` is the first launch alone (the window's pattern): new - rest is the residue
launch. The GPU step checks new against old and against a dense reference on the last rows
and times all three (stripe_bench.py's `run`; median of triton.testing.do_bench; B=1, H=32,
D=128, bf16), prints a table and writes $OUT/residue_bench.json (default ./out/residue_bench).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stripe_bench import main

CASES = {  # name: (.attn pattern, N, N of --smoke: some strided pairs beyond the window)
    "window256_strided256": ("causal & (window(256) | strided(256))", 32768, 549),
    "window128_strided128_16k": ("causal & (window(128) | strided(128))", 16384, 293),
    "window512_strided384": ("causal & (window(512) | strided(384))", 32768, 1189),  # m does not divide N
    "window1024_strided64": ("causal & (window(1024) | strided(64))", 32768, 1100),
    "window256_strided256_4k": ("causal & (window(256) | strided(256))", 4096, 300),  # classes of 16 rows
}


def generate(out: Path, smoke: bool = False) -> None:
    """The new, old and rest modules of every case (needs attnc's front end: run it here)."""
    import dataclasses
    from unittest import mock

    from attnc.codegen.writer import write_module
    from attnc.compiler import plan
    from attnc.compiler.ir import HeadGroup
    from attnc.compiler.lower import lower
    from attnc.spec.resolve import resolve_text

    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (expr, n, smoke_n) in CASES.items():
        program = lower(resolve_text(f"pattern {name}_new = {expr}\n", f"{name}.attn"))
        split = plan.split_pattern(program.groups[0].pattern)
        assert split is not None, f"{expr}: no split"
        write_module(program, out)
        with mock.patch.object(plan, "split_pattern", lambda pattern: None):
            write_module(dataclasses.replace(program, name=f"{name}_old"), out)
        groups = (HeadGroup(split[1], program.groups[0].members),)
        write_module(dataclasses.replace(program, name=f"{name}_rest", groups=groups), out)
        rows[name] = {"pattern": expr, "n": smoke_n if smoke else n, "extra": ["rest"]}
    (out / "cases.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {len(rows)} cases to {out}; on the GPU: python3 bench/proto/residue_bench.py {out}")


if __name__ == "__main__":
    sys.exit(main(generate=generate, name="residue_bench", doc=__doc__))
