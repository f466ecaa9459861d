"""`attnc analyze FILE`: density, tiles, cost formulas, receptive field and KV liveness of a pattern.

The analyses are `compiler.report.analyze`; this module is the command line around them:
rich text by default, `--json` for machines, `--plot out.png` for pictures. attnc/cli.py
registers it as a subcommand (HELP, configure, run).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HELP = "analyse a pattern: density, tiles, cost formulas in N, receptive field, KV liveness"


def block_shape(text: str) -> tuple[int, int]:
    """`128x64`, or `128` for square tiles."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise argparse.ArgumentTypeError(f"--block takes BMxBN such as 128x64 (or 128 for square tiles), got {text!r}")
    bm = int(m.group(1))
    return bm, int(m.group(2) or bm)


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `attnc analyze` (cli.Subcommand's `configure`)."""
    from .cli import add_spec_options
    from .cmd_simulate import seq_len

    p.description = (
        "Analyse a pattern before compiling it: allowed pairs, FLOPs, bytes and KV-cache size as "
        "closed forms in N with their asymptotic class, the exact block map, how far back the "
        "last token sees layer by layer, the smallest lossless KV cache, and warnings "
        "(docs/analyses.md)."
    )
    p.add_argument("file", type=Path, help="the .attn file")
    p.add_argument(
        "--seq",
        type=seq_len,
        default=None,
        help="sequence length N (prefill) and decode position (KV cache), as in 131072 or 128k; "
        "default 32k, or the token count of the file's grid",
    )
    p.add_argument(
        "--layers", type=int, default=None, help="layers for the receptive field (default: the file's model, else 32)"
    )
    p.add_argument(
        "--block",
        type=block_shape,
        default=(128, 128),
        metavar="BMxBN",
        help="tile shape of the block map (default 128x128)",
    )
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="element type for bytes")
    p.add_argument("--json", action="store_true", help="machine-readable output (the same content)")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PNG",
        help="write a PNG: mask at a small N, block map, receptive field by layer, cache size",
    )
    p.add_argument(
        "--ranks",
        type=int,
        default=None,
        metavar="R",
        help="also plan context parallelism over R ranks: sharding, the key ranges each rank "
        "receives from which rank, bytes sent and received next to a ring pass (docs/distributed.md)",
    )
    add_spec_options(p)


def run(args: argparse.Namespace) -> int:
    from .cli import run_reporting_errors

    return run_reporting_errors("analyze", _run, args)


def _context(program, n: int, ranks: int, dtype: str) -> list[tuple]:
    """(group, context plan, rows, text) per head group; bytes for the (layer, KV head) pairs that use it."""
    from .compiler.distributed import context_rows, key_bytes, program_contexts, render_context

    if ranks < 1 or ranks > n:
        raise ValueError(f"--ranks must be between 1 and N = {n}, got {ranks}")
    m = program.model
    per_kv = max(1, m.heads // max(1, m.kv_heads))
    out = []
    for g, (group, plan) in enumerate(zip(program.groups, program_contexts(program, n, ranks))):
        pairs = len({(layer, h // per_kv) for layer, h in group.members})
        size, d = 4 if dtype == "fp32" else 2, m.head_dim or 128
        per_key = key_bytes(pairs, d, size)
        slots = plan.selection["slots"] if plan.selection else 0
        per_block, per_query = slots * pairs * d * 4, len(group.members) * d * size  # summaries are float32
        what = f" ({pairs} (layer, KV head) pairs, head_dim {d}, {dtype}, keys and values)"
        rows = context_rows(plan, per_key, per_block, per_query)
        out.append((g, plan, rows, render_context(plan, per_key, what, per_block, per_query)))
    return out


def _run(args: argparse.Namespace) -> None:
    from .cli import long_lived, spec_options

    with long_lived():
        from .compiler.lower import lower
        from .compiler.passes import default_length
        from .compiler.report import analyze, plot, render
        from .spec.resolve import load

    program = lower(load(args.file, **spec_options(args)))
    n = args.seq or default_length(program)
    analysis = analyze(program, n, layers=args.layers, block=args.block, dtype=args.dtype, file=str(args.file))
    context = _context(program, n, args.ranks, args.dtype) if args.ranks is not None else []
    if args.json:
        d = analysis.to_dict()
        if context:
            d["context_parallel"] = [
                {"group": g, **plan.to_dict(), "ranks_table": rows} for g, plan, rows, _ in context
            ]
        print(json.dumps(d, indent=1, default=str))
    else:
        render(analysis)
        for g, _, _, text in context:
            print(f"group {g + 1}: {text}")
    if args.plot:
        plot(analysis, str(args.plot))
        if not args.json:
            print(f"wrote {args.plot}")
