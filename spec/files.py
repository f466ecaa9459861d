"""Reading the front end's input files: size limits, UTF-8 checked to the byte, paths resolved.

`.attn` files and head-set JSON files are read through `read_text`, so every input gets the
same treatment: a file too large, missing, unreadable or not UTF-8 becomes a diagnostic (a
bad byte is reported at its line and column), never a traceback; a UTF-8 byte-order mark
is dropped. `resolved_path` resolves symbolic links and reports a loop instead of raising.
"""

from __future__ import annotations

from pathlib import Path

from .ast import Loc
from .errors import Reporter


def read_text(path: Path, reporter: Reporter, loc: Loc, what: str, shown: str, max_bytes: int) -> str | None:
    """The text of `path` (shown as `shown`), or None after reporting why it cannot be read."""
    try:
        if not path.is_file():
            reporter.error(loc, f"{what} '{shown}' {'is not a file' if path.exists() else 'does not exist'}")
            return None
        if path.stat().st_size > max_bytes:
            reporter.error(
                loc,
                f"{what} '{shown}' is larger than {_size(max_bytes)}",
                "the limits of attnc's input are in docs/language.md",
            )
            return None
        data = path.read_bytes()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic-link loop (Python < 3.13)
        reporter.error(loc, f"cannot read {what} '{shown}': {exc}")
        return None
    return decode(data, shown, reporter)


def decode(data: bytes, shown: str, reporter: Reporter) -> str | None:
    """UTF-8 bytes as text, without a leading byte-order mark; a bad byte is reported where it is."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        reporter.add_source(shown, data.decode("utf-8", errors="replace"))
        reporter.error(
            Loc(file=shown, line=line, col=col),
            f"byte 0x{data[exc.start]:02x} is not valid UTF-8",
            "save the file as UTF-8",
        )
        return None


def resolved_path(path: Path, reporter: Reporter, loc: Loc, shown: str) -> Path | None:
    """`path` made absolute with its symbolic links resolved; None after reporting a loop."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        reporter.error(loc, f"cannot resolve '{shown}': {exc}", "a symbolic link in the path points back to itself")
        return None


def _size(n: int) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"
