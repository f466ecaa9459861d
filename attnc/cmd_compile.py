"""`attnc compile FILE... [-o DIR] [-D NAME=VALUE] [--model k=v,...] [--headsets F]`.

Writes each file's generated module, `DIR/<name>.py` (default: the cache,
`$ATTNC_CACHE` or `~/.cache/attnc`, as `<name>_<digest>.py`) and prints its path. No
Triton compilation happens here: kernels compile on first use, on the GPU.
Every file is compiled even when an earlier one fails (as `attnc check`); exit status 0,
or 2 on any error.
"""

from __future__ import annotations

import argparse
from pathlib import Path


HELP = "generate the Python module (Triton kernels + torch reference) of a pattern file"
DESCRIPTION = (
    "Compile an .attn file to a Python module that needs only torch and triton: prefill(q, k, v) "
    "with a specialized Triton kernel, reference(...) in plain torch, and PATTERN metadata. "
    "The module is written atomically; nothing is written on an error."
)


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of `attnc compile` (for attnc.cli's Subcommand registry)."""
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help=".attn files to compile")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/<name>.py (default: the module cache, $ATTNC_CACHE or ~/.cache/attnc)",
    )
    from .cli import add_spec_options

    add_spec_options(p)


def run(args: argparse.Namespace) -> int:
    """Compile every file; the status is 2 when any of them failed."""
    from .cli import EXIT_OK, run_reporting_errors

    statuses = [run_reporting_errors("compile", lambda a, f=path: _compile(a, f), args) for path in args.files]
    return max(statuses, default=EXIT_OK)


def _compile(args: argparse.Namespace, path: Path) -> None:
    from .cli import long_lived, print_kernel_warnings

    with long_lived():
        from .codegen.writer import write_module
        from .loader import program_of

    program = program_of(path, dict(args.defines), args.model, args.headsets)
    print(write_module(program, args.out))
    print_kernel_warnings(path, program)
