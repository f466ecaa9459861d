"""What a user-chosen name may be.

Pattern, let, param and head-set names end up in generated Python (function names, dict
keys, comments), so a name must be a plain identifier `[A-Za-z_][A-Za-z0-9_]*`, not a
Python keyword, not a dunder-style name (`__import__`), and not one of the language's own
reserved words. Nothing a user writes can then reach generated code as code.
"""

from __future__ import annotations

import keyword
import re
import sys

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_LENGTH = 64


def name_problem(name: str) -> tuple[str, str] | None:
    """(message, hint) saying why `name` cannot name anything, or None when it can."""
    from .parser import reserved_words  # the grammar knows its keywords

    if not IDENTIFIER.match(name):
        return ("not a valid name", "names are letters, digits and '_', and do not start with a digit")
    if len(name) > MAX_LENGTH:
        return (f"a name is at most {MAX_LENGTH} characters", "choose a shorter name")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return (f"'{name}' is a Python keyword and cannot be a name", "choose another name, such as " + f"{name}_")
    if name.startswith("__"):
        return ("names starting with '__' are reserved", "choose a name without the leading '__'")
    if name in reserved_words():
        return (f"'{name}' is a reserved word of the language", f"choose another name, such as {name}_")
    return None


SHADOWED = frozenset(sys.stdlib_module_names) | {"torch", "triton", "numpy", "attnc", "jinja2", "transformers"}
"""Modules a generated `<pattern>.py` must not hide when its folder is on the import path."""


def module_name_problem(name: str) -> tuple[str, str] | None:
    """(message, hint) when a pattern named `name` would compile to a module file that hides
    a Python module (`json.py`, `torch.py`), or None."""
    if name.lower() in SHADOWED:
        return (
            f"a pattern named '{name}' compiles to {name}.py, which would hide Python's module '{name}'",
            f"choose another name, such as {name}_pattern",
        )
    return None
