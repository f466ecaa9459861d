"""The `attnc` command line: a small registry of subcommands.

Each subcommand is a `Subcommand` record: a name, a one-line help, a function that adds
its arguments to an argparse parser, and a function that runs it and returns the exit
status. `main()` builds the parser from the registry and dispatches, so adding
`attnc analyze` is one `register(Subcommand(...))` call in the module that implements it.
Options shared by every command that reads `.attn` files (`-D`, `--model`, `--headsets`)
come from `add_spec_options` and are read back with `spec_options`.

Exit status: 0 when every file is valid, 2 on any error (errors go to stderr).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import textwrap
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 2


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(command: Subcommand) -> Subcommand:
    """Add a subcommand to `attnc`; a second one of the same name replaces the first."""
    SUBCOMMANDS[command.name] = command
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run `attnc` with `argv` (default: sys.argv[1:]) and return its exit status."""
    # numpy's OpenBLAS starts a thread per core that spins some 0.06 s: attnc's algebra is small
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return SUBCOMMANDS[args.command].run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnc", description="A compiler for attention-sparsity patterns (.attn files)."
    )
    parser.add_argument("--version", action=_Version, help="print attnc's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
    return parser


class _Version(argparse.Action):
    """`attnc --version`: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from .codegen.writer import attnc_version

        print(f"attnc {attnc_version()}")
        parser.exit()


# ---------------------------------------------------------------- shared options


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    """`-D NAME=VALUE`, `--model k=v,...` and `--headsets FILE`, for commands that read .attn files."""
    parser.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_define,
        help="override a param of the file (repeatable)",
    )
    parser.add_argument(
        "--model",
        type=_model,
        default={},
        metavar="FIELD=N,...",
        help="model shape, such as layers=30,heads=9,kv_heads=3",
    )
    parser.add_argument(
        "--headsets", metavar="FILE", default=None, help="head-set JSON file (overrides the file's `headsets`)"
    )


def spec_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for `attnc.spec.resolve.load` from the shared options."""
    return {"defines": dict(args.defines), "model": dict(args.model), "headsets_path": args.headsets}


def run_reporting_errors(command: str, body: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a subcommand's body: an AttnError, or a ValueError or OSError (a bad argument, a
    missing file), becomes a message on stderr and exit status 2, never a traceback."""
    with long_lived():
        from .spec.errors import AttnError

    try:
        body(args)
    except AttnError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, OSError) as exc:
        print(f"attnc {command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


@contextmanager
def long_lived() -> Iterator[None]:
    """Around a command's imports, whose objects (some 70,000 for `attnc analyze`, mostly sympy's)
    live until exit: the garbage collector pauses, then never scans them (gc.freeze), which cost
    `attnc analyze` about 0.1 s and freed nothing. Later objects are collected as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def print_kernel_warnings(path: object, program: Any) -> None:
    """Warnings, on stderr, about a compiled program that runs a slower kernel than it could
    (a grid pattern off the tile-order kernel); they never change the exit status."""
    from .compiler.passes import check_grid_kernel

    for d in check_grid_kernel(program, 0, None):
        print(f"{path}: warning: {d.where + ': ' if d.where else ''}{d.message}", file=sys.stderr)


def _integer(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None


def _define(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), _integer(value, f"the value of {name.strip()}")


def _model(text: str) -> dict[str, int]:
    fields = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, value = _define(part)
        fields[name] = value
    return fields


# ---------------------------------------------------------------- attnc check


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".attn files to check")
    add_spec_options(parser)


def _run_check(args: argparse.Namespace) -> int:
    """Check each file; print a summary of the valid ones, every error of the others."""
    from .spec.describe import describe
    from .spec.errors import AttnError
    from .spec.resolve import load

    status = EXIT_OK
    for path in args.files:
        try:
            spec = load(path, **spec_options(args))
        except AttnError as exc:
            print(exc.render(), file=sys.stderr)
            status = EXIT_ERROR
            continue
        summary = textwrap.fill(
            describe(spec, cache_losses(spec)), width=100, initial_indent="  ", subsequent_indent="  "
        )
        print(f"{path}: ok\n{summary}")
        if spec.grid is not None:
            from .compiler.lower import lower

            print_kernel_warnings(path, lower(spec))
    return status


def cache_losses(spec) -> dict[int, bool]:
    """Per cache rule, whether it keeps every key the pattern reads (the compiler's liveness);
    empty when the program does not lower or plan (its errors are compile's to report)."""
    from .compiler.cache_plan import lossless_rules
    from .compiler.lower import lower

    try:
        return lossless_rules(lower(spec))
    except Exception:  # noqa: BLE001 - a summary is still worth printing
        return {}


register(
    Subcommand(
        "check", "check .attn files and summarise each pattern and cache in plain English", _configure_check, _run_check
    )
)


# ---------------------------------------------------------------- attnc patterns, attnc docs


def _run_patterns(args: argparse.Namespace) -> int:
    """List the shipped pattern library: every command takes these files by their name."""
    from .spec.library import LIBRARY, library

    entries = library()
    width = max((len(name) for name, _ in entries), default=0)
    for name, what in entries:
        print(f"{name:<{width}}  {what}")
    print(f"\n{len(entries)} patterns in {LIBRARY}; use one by name, as in `attnc check streaming_llm`")
    return EXIT_OK


register(
    Subcommand(
        "patterns",
        "list the shipped pattern library (usable by name, as in attnc check streaming_llm)",
        lambda parser: None,
        _run_patterns,
    )
)


def docs_dir() -> Path:
    """The user documentation: `attnc/docs/` in an installed wheel, `docs/` in a source checkout."""
    here = Path(__file__).resolve().parent
    return here / "docs" if (here / "docs").is_dir() else here.parent / "docs"


def _configure_docs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", nargs="?", default=None, help="a document, as in `language`; none: list them")


def _run_docs(args: argparse.Namespace) -> int:
    """List the documents with their paths, or print one (Markdown)."""
    pages = {p.stem: p for p in sorted(docs_dir().glob("*.md"))}
    if args.topic is None:
        for name, path in pages.items():
            print(f"{name:<12}  {path}")
        return EXIT_OK
    page = pages.get(args.topic.removesuffix(".md"))
    if page is None:
        from .spec.errors import suggest

        hint = suggest(args.topic, pages) or f"the documents are {', '.join(pages)}"
        print(f"attnc docs: error: no document '{args.topic}': {hint}", file=sys.stderr)
        return EXIT_ERROR
    print(page.read_text(encoding="utf-8"), end="")
    return EXIT_OK


register(
    Subcommand(
        "docs", "list the documentation, or print one document (attnc docs language)", _configure_docs, _run_docs
    )
)


def _register_commands() -> None:
    """The other subcommands live in attnc/cmd_*.py; each imports its stage only when run."""
    from . import cmd_analyze, cmd_calibrate, cmd_compile, cmd_eval, cmd_simulate

    for name, module in (
        ("analyze", cmd_analyze),
        ("simulate", cmd_simulate),
        ("compile", cmd_compile),
        ("calibrate", cmd_calibrate),
        ("eval", cmd_eval),
    ):
        register(Subcommand(name, module.HELP, module.configure, module.run))


_register_commands()


if __name__ == "__main__":  # after every command is registered: `python -m attnc.cli` knows them all
    sys.exit(main())
