"""The pattern library that ships with attnc, reachable by name.

`attnc check streaming_llm` and `attnc.load("streaming_llm")` mean the library's
`streaming_llm.attn` when no file of that name exists: a bare name (no folder, no suffix)
falls back to the library. The library is the `patterns/` folder of a source checkout, or
the `attnc/patterns/` package data of an installed wheel (the same place relative to this
module in both layouts); its head-set files are in `heads/`.
"""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "patterns"


def locate(path: str | os.PathLike[str]) -> Path:
    """`path` itself, unless it is a bare name of no existing file that the library holds."""
    given = Path(path)
    if given.exists() or given.name != str(path) or given.suffix:
        return given
    shipped = LIBRARY / f"{given.name}.attn"
    return shipped if shipped.is_file() else given


def library() -> list[tuple[str, str]]:
    """(name, what the file's first comment line says) for every pattern of the library."""
    out = []
    for path in sorted(LIBRARY.glob("*.attn")):
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        out.append((path.stem, first.lstrip("#").strip() if first.startswith("#") else ""))
    return out
