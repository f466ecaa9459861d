"""Import a generated module: the one importer of generated modules.

Used by the loader (`attnc.load`), the tests and the benchmarks (bench/gpu.py imports this
file on a machine without attnc installed, so it needs the standard library only). A module
is made by executing the text it was rendered as (or its file's text): Python's bytecode
cache is neither read nor written, so a forged `.pyc` beside a module never runs. The file
must still exist: Triton reads the source of @triton.jit functions from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import CodeType, ModuleType

_CHECKED: dict[str, CodeType] = {}  # the text compile_text compiled last, and its code


def compile_text(text: str, filename: str) -> CodeType:
    """`text` compiled as a module, its code kept for an import of the very same text next
    (import_text): rendering checks that a module compiles and loading follows, so the work
    is not done twice (about 60 ms for a module of 300 KB)."""
    code = compile(text, filename, "exec", dont_inherit=True)
    _CHECKED.clear()
    _CHECKED[text] = code
    return code


def _with_filename(code: CodeType, filename: str) -> CodeType:
    """`code`, and the code nested in it, as compiled from a file of that name."""
    consts = tuple(_with_filename(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def import_text(text: str, path: str | os.PathLike, module_name: str) -> ModuleType:
    """A module made by executing `text` (whose file is `path`), registered as `module_name`
    (reusing an earlier import of that name); a module whose body raises is not left in
    sys.modules."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    code = _CHECKED.pop(text, None)
    code = compile(text, str(path), "exec", dont_inherit=True) if code is None else _with_filename(code, str(path))
    module = ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module  # before executing: dataclasses and pickling look it up
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def import_module_from_path(path: str | os.PathLike, module_name: str) -> ModuleType:
    """Import the module at `path` as `module_name`, from its source text."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    return import_text(Path(path).read_text(encoding="utf-8"), path, module_name)
