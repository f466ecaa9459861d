"""Import a Python module from its file: the one importer of generated modules.

Used by attnc.loader, the tests and the benchmarks (bench/gpu.py imports this file on a
machine without attnc installed, so it needs the standard library only). Triton reads the
source of @triton.jit functions, so a generated module must be imported from a real file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType


def import_module_from_path(path: str | os.PathLike, module_name: str) -> ModuleType:
    """Import the module at `path` as `module_name` (reusing an earlier import of that name);
    a module whose body raises is not left in sys.modules."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import a module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
