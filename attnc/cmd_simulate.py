"""`attnc simulate FILE`: predicted kernel time and speedup before compiling (compiler/simulate.py)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

SWEEP = re.compile(r"^\s*(\w+)\s*\.\.\s*(\w+)\s*$")


def seq_len(text: str) -> int:
    """`32768`, `32k` or `1m` (k = 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"a sequence length is a positive integer such as 32768 or 32k, got {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def sweep(text: str) -> list[int]:
    """`4k..128k`: every power-of-two multiple of the first length up to the last; or a list `4k,6k,8k`."""
    m = SWEEP.match(text)
    if m:
        lo, hi = seq_len(m.group(1)), seq_len(m.group(2))
        if hi < lo:
            raise argparse.ArgumentTypeError(f"a sweep goes up: got {text!r} ({lo} > {hi})")
        out = [lo]
        while out[-1] * 2 <= hi:
            out.append(out[-1] * 2)
        return out
    if "," in text:
        return [seq_len(x) for x in text.split(",")]
    raise argparse.ArgumentTypeError(f"a sweep is LO..HI (as in 4k..128k) or a list (4k,8k,32k), got {text!r}")


HELP = "predict kernel time, speedup over dense attention and KV-cache memory, before compiling"


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `attnc simulate` (cli.Subcommand's `configure`)."""
    from .cli import add_spec_options

    p.description = (
        "Predict the generated kernel's time, its speedup over dense attention (SDPA) and over "
        "FlexAttention (an estimate), the KV-cache memory, and where the time goes, from the "
        "pattern's tiles and a device profile. Nothing is compiled. Times are for all the "
        "model's layers (one per layer with --layer)."
    )
    p.add_argument("file", type=Path, help="the .attn file")
    n = p.add_mutually_exclusive_group()
    n.add_argument(
        "--seq",
        type=seq_len,
        default=None,
        help="sequence (or context) length, as in 32768 or 32k; default 32k, or the token count of the file's grid",
    )
    n.add_argument("--sweep", type=sweep, default=None, help="lengths, as in 4k..128k (doubling) or 4k,8k,32k")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=None, help="query heads (default: the file's model, else 32)")
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads (default: the file's model, else --heads)")
    p.add_argument("--head-dim", type=int, default=None, help="default: the file's model, else 128")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--device", default="h100", help="a shipped device profile (default h100)")
    dev.add_argument("--profile", type=Path, default=None, help="a device profile JSON (bench/calibrate.py writes one)")
    p.add_argument("--decode", action="store_true", help="one decode step at context N instead of prefill")
    p.add_argument(
        "--backward",
        action="store_true",
        help="also a training step: the backward pass (a model: the forward's tile costs scaled by the "
        "backward's matrix products) and forward + backward",
    )
    p.add_argument("--layer", type=int, default=None, help="one layer (default: every layer of the model)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write a plot of speedup against N")
    add_spec_options(p)


def run(args: argparse.Namespace) -> int:
    from .cli import run_reporting_errors

    return run_reporting_errors("simulate", _run, args)


def _run(args: argparse.Namespace) -> None:
    from .cli import long_lived, spec_options

    with long_lived():
        from .compiler import simulate as sim
        from .compiler.lower import lower
        from .spec.limits import MAX_MODEL, model_problem
        from .spec.resolve import load

    for name in ("heads", "kv_heads", "head_dim"):
        value = getattr(args, name)
        if value is not None and (value < 1 or model_problem(name, value)):
            raise ValueError(f"--{name.replace('_', '-')} must be between 1 and {MAX_MODEL[name]}, got {value}")
    if args.backward and args.decode:
        raise ValueError("--backward predicts a training step over a whole sequence: it does not combine with --decode")
    spec = load(args.file, **spec_options(args))
    program = lower(spec)
    profile = sim.load_profile(args.profile or args.device)
    heads = args.heads or spec.model.heads or 32
    shape = dict(
        batch=args.batch,
        heads=heads,
        kv_heads=args.kv_heads or spec.model.kv_heads or heads,
        head_dim=args.head_dim or spec.model.head_dim or 128,
        dtype=args.dtype,
    )
    predict = sim.predict_decode if args.decode else sim.predict_prefill
    from .compiler.passes import check_grid_length, default_length

    lengths = args.sweep or [args.seq or default_length(program)]

    for n in lengths:
        for d in check_grid_length(program, n, None):
            print(
                f"{args.file}: warning: at N = {n:,}: {d.message}; the generic kernel runs at this length",
                file=sys.stderr,
            )
    shapes = [sim.Shape(n, **shape) for n in lengths]  # every length checked before any is predicted
    results = [predict(program, s, profile, args.layer) for s in shapes]
    if args.json:
        rows = [
            dict(r.to_dict(), **({"backward": _backward_dict(r, profile)} if args.backward else {})) for r in results
        ]
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "pattern": program.name,
                    "profile": profile.name,
                    "profile_source": profile.source,
                    "results": rows,
                },
                indent=1,
            )
        )
    else:
        _print(args.file, program, profile, results)
        if args.backward:
            _print_backward(results, profile)
    if args.plot:
        plot(results, args.plot, f"{program.name} on {profile.device or profile.name}")
        if not args.json:
            print(f"wrote {args.plot}")


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def _mib(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def _print(file: Path, program: Any, profile: Any, results: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    r0 = results[0]
    s = r0.shape
    console = Console()
    layers = f", {r0.layers} layers" if r0.layers > 1 else ""
    console.print(
        f"[bold]{program.name}[/] ({file}), {r0.mode} on {profile.device or profile.name}: "
        f"B={s.batch} H={s.heads} KV={s.kv} D={s.head_dim} {s.dtype}{layers}"
    )
    table = Table(box=None, header_style="bold")
    for col in ("N", "attnc ms", "SDPA ms", "speedup", "Flex* ms", "vs Flex*", "KV cache", "of dense"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        table.add_row(
            f"{r.shape.n:,}",
            _ms(r.attnc.ms),
            _ms(r.sdpa.ms),
            f"{r.speedup:.2f}x",
            _ms(r.flex.ms),
            f"{r.speedup_vs_flex:.2f}x",
            _mib(r.cache_bytes),
            f"{r.cache_bytes / r.dense_cache_bytes:.1%}" if r.dense_cache_bytes else "-",
        )
    console.print(table)
    last = results[-1]
    t = last.attnc
    if last.mode == "decode":
        parts = [
            ("reading the cache", t.full_ms, _mib(last.cache_bytes)),
            ("reduction pass", t.overhead_ms, ""),
            ("launch", t.launch_ms, ""),
        ]
    else:
        parts = [
            ("full tiles", t.full_ms, f"{t.tiles_full:,} of {t.tile[0]}x{t.tile[1]}"),
            ("masked tiles", t.masked_ms, f"{t.tiles_masked:,}"),
            ("sink tiles", t.sink_ms, f"{t.tiles_sink:,} narrow"),
            ("program overhead", t.overhead_ms, f"{t.programs:,} programs, {t.waves:.1f} waves"),
            ("idle SMs at the tail", t.idle_ms, ""),
            ("launch", t.launch_ms, ""),
            ("selection (estimate)", t.select_ms, "chosen blocks counted at the budget"),
        ]
    where = Table(
        title=f"where attnc's time goes at N={last.shape.n:,}", box=None, header_style="bold", title_justify="left"
    )
    for col in ("", "ms", "share", ""):
        where.add_column(col, justify="right" if col else "left")
    for name, ms, extra in parts:
        if ms > 0 or name in ("full tiles", "reading the cache"):
            where.add_row(name, _ms(ms), f"{ms / t.ms:.0%}", extra)
    console.print(where)
    if last.ideal_tiles >= 0:
        narrow = f" (and {t.tiles_sink:,} narrow ones)" if t.tiles_sink else ""
        console.print(
            f"[dim]the exact block map has {last.ideal_tiles:,} non-empty {t.tile[0]}x{t.tile[1]} tiles; "
            f"the kernel visits {t.tiles_full + t.tiles_masked:,}{narrow}[/]"
        )
    console.print(
        f"[dim]* {last.flex.note}\nKV cache: {last.cache_note}\n"
        f"profile {profile.name}: {profile.source or 'no source given'}[/]"
    )


def _backward_dict(r: Any, profile: Any) -> dict[str, Any]:
    """Per kernel: the predicted backward and forward + backward times (ms)."""
    from .compiler.simulate import backward_time

    out = {}
    for name in ("attnc", "sdpa", "flex"):
        fwd = getattr(r, name)
        bwd = backward_time(fwd, profile.backward.get(name, 1.0))
        out[name] = {"backward_ms": bwd.ms, "forward_backward_ms": fwd.ms + bwd.ms}
    return out


def _print_backward(results: list[Any], profile: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="training step, forward + backward (ms; backward = forward tile costs x matmuls per tile / 2)",
        box=None,
        header_style="bold",
        title_justify="left",
    )
    for col in ("N", "attnc bwd", "attnc", "SDPA", "speedup", "Flex*", "vs Flex*"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        b = _backward_dict(r, profile)
        mine = b["attnc"]["forward_backward_ms"]
        table.add_row(
            f"{r.shape.n:,}",
            _ms(b["attnc"]["backward_ms"]),
            _ms(mine),
            _ms(b["sdpa"]["forward_backward_ms"]),
            f"{b['sdpa']['forward_backward_ms'] / mine:.2f}x",
            _ms(b["flex"]["forward_backward_ms"]),
            f"{b['flex']['forward_backward_ms'] / mine:.2f}x",
        )
    Console().print(table)


def plot(results: list[Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r.shape.n for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r.speedup for r in results], "o-", label="attnc vs dense (SDPA)")
    ax.plot(n, [r.speedup_vs_flex for r in results], "s--", label="attnc vs FlexAttention (estimate)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length N" if results[0].mode == "prefill" else "context length N")
    ax.set_ylabel("predicted speedup (x)")
    ax.set_title(f"{title} ({results[0].mode})", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
