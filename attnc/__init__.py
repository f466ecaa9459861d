"""attnc: a compiler for attention-sparsity patterns.

The front end's public API (imported lazily, so that `import attnc.runtime` needs neither
lark nor pydantic, for instance on a GPU machine that has only torch and triton):

    attnc.parse(text, filename)                                  -> attnc.spec.ast.File
    attnc.check(path, defines=..., model=..., headsets_path=...) -> attnc.spec.resolved.Spec
    attnc.AttnError      raised by both: every problem found, with locations and hints
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from os import PathLike

    from .spec.ast import File
    from .spec.resolved import Spec

__all__ = ["AttnError", "check", "compile_file", "load", "parse"]


def parse(text: str, filename: str = "<string>") -> File:
    """The syntax tree of `.attn` text; raises AttnError on a syntax error."""
    from .spec.parser import parse as parse_text

    return parse_text(text, filename)


def check(
    path: str | PathLike[str],
    defines: Mapping[str, int] | None = None,
    model: Mapping[str, int] | None = None,
    headsets_path: str | None = None,
) -> Spec:
    """The resolved Spec of an `.attn` file; raises AttnError listing every problem."""
    from .spec.resolve import load as load_spec

    return load_spec(path, defines, model, headsets_path)


def __getattr__(name: str) -> Any:
    """Lazy attributes: `AttnError` (the front end) and `load`, `compile_file` (codegen)."""
    if name == "AttnError":
        from .spec.errors import AttnError

        return AttnError
    if name in ("load", "compile_file"):
        import importlib

        return getattr(importlib.import_module(".loader", __name__), name)
    raise AttributeError(f"module 'attnc' has no attribute {name!r}")
