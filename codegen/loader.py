"""Compile `.attn` files to Python modules and import them: `attnc.load`, `attnc.compile_file`.

    mod = attnc.load("patterns/streaming_llm.attn", defines={"W": 2048})
    out = mod.prefill(q, k, v)

A compiled module lives in the cache (`$ATTNC_CACHE`, default `~/.cache/attnc`) as
`<name>_<digest>.py` and is reused while its text is unchanged; `compile_file(path,
out_dir)` writes `out_dir/<name>.py` instead, for vendoring. Modules are imported under the
name `attnc_generated.<name>_<digest>`, once per process, by executing the very text that
was rendered and checked (the file on disk is written for tracebacks, Triton's source
lookup and vendoring): no bytecode cache is read or written, so a forged `.pyc` next to a
cached module never runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Mapping

from ..compiler.ir import Program
from .importing import import_module_from_path, import_text
from .writer import cached_path, render_module, write_atomic, write_module

PathLike = str | os.PathLike


def program_of(
    path: PathLike,
    defines: Mapping[str, int] | None = None,
    model: Mapping[str, int] | None = None,
    headsets: PathLike | None = None,
) -> Program:
    """Parse, resolve and lower one `.attn` file (raises spec.errors.AttnError on bad input)."""
    from ..compiler.lower import lower
    from ..spec.resolve import load as resolve_file

    spec = resolve_file(path, defines, model, None if headsets is None else str(headsets))
    return lower(spec)


def compile_file(
    path: PathLike,
    out_dir: PathLike | None = None,
    *,
    defines: Mapping[str, int] | None = None,
    model: Mapping[str, int] | None = None,
    headsets: PathLike | None = None,
) -> Path:
    """Compile a pattern file to a module: `out_dir/<name>.py`, or the cache when out_dir is None.

    Nothing is written unless every stage succeeds; the file is replaced atomically.
    """
    return write_module(program_of(path, defines, model, headsets), out_dir)


def import_file(path: PathLike, module_name: str) -> ModuleType:
    """Import a generated module from its file's source text (codegen/importing.py)."""
    return import_module_from_path(path, module_name)


def load_program(program: Program) -> ModuleType:
    """Compile an IR program into the cache and import the text just rendered (not whatever
    the cache file holds by the time it is read)."""
    path = cached_path(program)
    name = f"attnc_generated.{path.stem}"
    if name in sys.modules:  # imported earlier in this process: nothing to render again
        return sys.modules[name]
    text = render_module(program)
    write_atomic(path, text)
    return import_text(text, path, name)


def load(
    path: PathLike,
    *,
    defines: Mapping[str, int] | None = None,
    model: Mapping[str, int] | None = None,
    headsets: PathLike | None = None,
) -> ModuleType:
    """Compile a pattern file (options as `attnc compile`) and import its module in one call."""
    return load_program(program_of(path, defines, model, headsets))
