"""The one error type of the front end, and how it is shown to people.

Every problem in an `.attn` file becomes a `Diagnostic`: a location, a message in the
language's own terms, and an optional hint that says how to fix it. The parser stops at the
first syntax error; the resolver collects every semantic error it finds and raises them
together, so a user fixes a file in one round trip. `AttnError` carries the list; its text
is the compiler-style rendering:

    patterns/x.attn:3:20: error: expected an integer expression, found ')'
        pattern p = window()
                           ^
      hint: window takes one size, as in window(1024), or window(left = L, right = R)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .ast import Loc

# A location for problems that no source text holds, such as a bad `-D` on the command line.
COMMAND_LINE = "<command line>"


def command_line_loc() -> Loc:
    """The location reported for problems in command-line options."""
    return Loc(file=COMMAND_LINE, line=1, col=1)


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where it is, what is wrong, and (when we know) how to fix it."""

    loc: Loc
    message: str
    hint: str | None = None
    source_line: str | None = None

    def render(self) -> str:
        """The problem as a compiler-style message with the source line and a caret."""
        where = self.loc.file if self.loc.file == COMMAND_LINE else str(self.loc)
        lines = [f"{where}: error: {self.message}"]
        if self.source_line is not None:
            text = self.source_line.rstrip("\n")
            # Keep tabs under tabs so the caret lines up whatever the tab width.
            pad = "".join(c if c == "\t" else " " for c in text[: max(self.loc.col - 1, 0)])
            lines += [f"    {text}", f"    {pad}^"]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class AttnError(Exception):
    """Every problem found in one `.attn` file (and the files it imports), in source order."""

    def __init__(self, diagnostics: list[Diagnostic]):
        if not diagnostics:
            raise ValueError("AttnError needs at least one diagnostic")
        self.diagnostics = list(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


@dataclass
class Reporter:
    """Collects diagnostics, filling in source lines from the files it was shown.

    The resolver adds every problem it finds and calls `raise_if_any` at the end of a
    phase, so independent errors are all reported together.
    """

    sources: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add_source(self, filename: str, text: str) -> None:
        self.sources[filename] = text

    def error(self, loc: Loc, message: str, hint: str | None = None) -> None:
        diag = Diagnostic(loc, message, hint, self._line(loc))
        if diag not in self.diagnostics:
            self.diagnostics.append(diag)

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        for d in diagnostics:
            self.error(d.loc, d.message, d.hint)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise AttnError(self._sorted())

    def _line(self, loc: Loc) -> str | None:
        text = self.sources.get(loc.file)
        if text is None or loc.line < 1:
            return None
        lines = text.splitlines()
        return lines[loc.line - 1] if loc.line <= len(lines) else ""

    def _sorted(self) -> list[Diagnostic]:
        """Source order within a file; files in the order their first problem was found."""
        order: dict[str, int] = {}
        for d in self.diagnostics:
            order.setdefault(d.loc.file, len(order))
        return sorted(self.diagnostics, key=lambda d: (order[d.loc.file], d.loc.line, d.loc.col))


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """A did-you-mean hint for a misspelled name, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def one_of(words: Iterable[str]) -> str:
    """`'a', 'b' or 'c'`: a list of choices for a message."""
    quoted = [f"'{w}'" for w in words]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
