"""Syntax errors in the language's own words.

lark reports what it expected as a set of terminal names (`LPAR`, `__ANON_0`, `$END`).
`syntax_diagnostic` turns that set into phrases a user knows ("a pattern expression",
"':' or '{' after a selector", "a statement (import, ..., cache)"), names what it found,
and adds a hint where the context says more: the usage of the primitive whose call is
open, a did-you-mean for a misspelled keyword, the line of a '{' that is never closed.
"""

from __future__ import annotations

from collections.abc import Mapping

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from .ast import Loc
from .errors import Diagnostic, suggest
from .primitives import PRIMITIVES

STATEMENTS = ("import", "headsets", "param", "model", "grid", "let", "pattern", "cache")
SECTIONS = ("heads", "kv_heads", "layers", "rest")
CACHE_RULES = ("budget", "keep", "evict", "select", "aggregate", "positions")
SET_OPS = ("|", "&", "-")
INT_OPS = ("+", "-", "*", "//", "%", "**")
INT_START = ("INT", "NAME", "-", "+", "(", "layers", "heads", "kv_heads", "true", "false")

# (terminals that must all be expected, terminals the phrase stands for, the phrase, rank):
# groups are matched in list order (most specific first) and shown in rank order.
_GROUPS: list[tuple[set[str], set[str], str, int]] = [
    ({":", "{"}, {":", "{", ",", "..", *INT_OPS}, "':' or '{' after a selector", 0),
    (
        {"INT", "["},
        {*INT_START, "["},
        "a budget (a number of tokens, full, linear(a, b), [a, b, ...] or adaptive(M, by = cake))",
        0,
    ),
    ({"INT"}, set(INT_START), "an integer expression", 0),
    ({"NAME", "("}, {"NAME", "("}, "a pattern expression", 0),
    ({"pattern", "let"}, {*STATEMENTS, "$END"}, "a new statement (" + ", ".join(STATEMENTS) + ")", 3),
    (
        {"budget", "keep"},
        {*CACHE_RULES, *SECTIONS},
        "a cache rule (" + ", ".join(CACHE_RULES) + "), a section (heads, kv_heads, layers)",
        2,
    ),
    ({"rest"}, set(SECTIONS), "a section (" + ", ".join(SECTIONS) + ")", 2),
    ({"|", "&"}, set(SET_OPS), "an operator (|, & or -)", 1),
    ({"*", "%"}, set(INT_OPS), "an arithmetic operator", 1),
]

_SINGLE = {
    "NAME": "a name",
    "INT": "an integer",
    "STRING": 'a quoted path, as in "common.attn"',
    "$END": "the end of the file",
}

_CHAR_HINTS = {
    ";": "statements need no separator: remove the ';'",
    '"': "a quoted path must end on the same line",
    "'": 'paths are quoted with double quotes, as in import "common.attn"',
    ".": "ranges are written a..b (a, a+1, ..., b-1)",
    "/": "integer division is written //",
    "!": "the set operators are | (union), & (intersection) and - (difference)",
    "~": "the set operators are | (union), & (intersection) and - (difference)",
    "^": "the set operators are | (union), & (intersection) and - (difference)",
}


def syntax_diagnostic(exc: UnexpectedInput, text: str, filename: str, literals: Mapping[str, str]) -> Diagnostic:
    """One lark exception as a Diagnostic; `literals` maps terminal names to their text."""
    if isinstance(exc, UnexpectedToken):
        return _unexpected_token(exc, text, filename, literals)
    if isinstance(exc, UnexpectedCharacters):
        return _unexpected_character(exc, filename)
    line, col = _end_of(text)
    return Diagnostic(Loc(file=filename, line=line, col=col), "unexpected end of the file")


# ---------------------------------------------------------------- unexpected tokens


def _unexpected_token(exc: UnexpectedToken, text: str, filename: str, literals: Mapping[str, str]) -> Diagnostic:
    tok = exc.token
    expected = {literals.get(t, t) for t in (exc.accepts or exc.expected)}
    found = _found(tok, literals)
    if tok.type == "$END":
        # lark places the end token on the last real token: point just after it.
        line, col = (tok.end_line, tok.end_column) if tok.end_line else _end_of(text)
    else:
        line, col = tok.line, tok.column
    message = f"expected {describe_expected(expected)}, found {found}"
    stack = _value_stack(exc)
    hint = _hint(tok, expected, stack, literals)
    return Diagnostic(Loc(file=filename, line=line, col=col), message, hint)


def describe_expected(expected: set[str]) -> str:
    """Phrases for a set of expected terminals (given by their text), most specific first."""
    left = set(expected)
    ranked: list[tuple[int, str]] = []
    for required, covers, phrase, rank in _GROUPS:
        if required <= left:
            ranked.append((rank, phrase))
            left -= covers
    ranked += [(4 if t == "$END" else 1, _SINGLE.get(t, f"'{t}'")) for t in sorted(left)]
    phrases = [phrase for _, phrase in sorted(ranked, key=lambda r: r[0])]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _found(tok: Token, literals: Mapping[str, str]) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type in literals and str(tok).isidentifier():
        return f"the reserved word '{tok}'"
    if tok.type == "STRING":
        return str(tok)
    return f"'{tok}'"


def _value_stack(exc: UnexpectedToken) -> list[object]:
    parser = getattr(exc, "interactive_parser", None)
    state = getattr(parser, "parser_state", None)
    return list(getattr(state, "value_stack", []) or [])


def _hint(tok: Token, expected: set[str], stack: list[object], literals: Mapping[str, str]) -> str | None:
    """The most useful hint we can give from the token, the expected set and the stack."""
    keywords = [t for t in expected if t.isidentifier() and t in literals.values()]
    if tok.type == "NAME" and keywords:
        hint = suggest(str(tok), keywords)
        if hint:
            return hint
    if literals.get(tok.type) == "prefix" and _last_token(stack, "grid", literals) is not None:
        return "the prefix follows the grid's parentheses, as in grid(32, 32) prefix = 1"
    if tok.type in literals and str(tok).isidentifier() and "NAME" in expected:
        return f"'{tok}' is a reserved word of the language; choose another name"
    if tok.type == "$END" and "}" in expected:
        brace = _last_token(stack, "{", literals)
        if brace is not None:
            return f"the '{{' on line {brace.line} is never closed"
    if str(tok) == "=" and ":" in expected:
        return "a section is written `heads 0..4: expr` or `layers 0..2 { sections }`"
    call = _open_call(stack, literals)
    if call:
        return call
    if tok.type == "NAME" and _follows_integer(stack, tok):
        return f"write multiplication with '*', as in 4 * {tok}"
    return None


def _last_token(stack: list[object], text: str, literals: Mapping[str, str]) -> Token | None:
    for item in reversed(stack):
        if isinstance(item, Token) and literals.get(item.type) == text:
            return item
    return None


def _open_call(stack: list[object], literals: Mapping[str, str]) -> str | None:
    """The usage hint for the innermost call whose '(' is still open on the parser stack."""
    for i in range(len(stack) - 1, 0, -1):
        item, before = stack[i], stack[i - 1]
        if isinstance(item, Token) and item.type == "LPAR" and isinstance(before, Token) and before.type == "NAME":
            context = stack[i - 2] if i >= 2 else None
            return _call_usage(str(before), context, literals)
    return None


def _call_usage(name: str, context: object, literals: Mapping[str, str]) -> str | None:
    kind = literals.get(context.type) if isinstance(context, Token) else None
    if kind == "keep":
        return "keep takes sink(S) or recent(R)"
    if kind == "select":
        return "select takes a score, the tokens each step reads and a page size, as in select quest(4096, page = 16)"
    if kind == "evict":
        return "evict takes a score and its options, as in evict snapkv(window = 32, pool = max, kernel = 7) at prefill"
    if kind == "=" and name in ("linear", "adaptive"):
        return "a budget schedule is linear(first, last) or adaptive(M, by = cake)"
    prim = PRIMITIVES.get(name)
    return prim.usage if prim else None


def _follows_integer(stack: list[object], tok: Token) -> bool:
    """Whether `tok` is a name written right after a number, as in `4W`."""
    top = stack[-1] if stack else None
    meta = getattr(top, "meta", None)
    return getattr(top, "data", None) == "num" and getattr(meta, "end_pos", None) == tok.start_pos


# ---------------------------------------------------------------- unexpected characters


def _unexpected_character(exc: UnexpectedCharacters, filename: str) -> Diagnostic:
    char = exc.char
    loc = Loc(file=filename, line=exc.line, col=exc.column)
    if char == '"':
        return Diagnostic(loc, "a quoted path is not closed", _CHAR_HINTS['"'])
    hint = _CHAR_HINTS.get(char)
    if hint is None and not char.isascii():
        hint = "names use ASCII letters, digits and '_'"
    shown = repr(char) if not char.isprintable() else f"'{char}'"
    return Diagnostic(loc, f"unexpected character {shown}", hint)


def _end_of(text: str) -> tuple[int, int]:
    """The position just after the last character that is not blank."""
    stripped = text.rstrip()
    if not stripped:
        return 1, 1
    lines = stripped.split("\n")
    return len(lines), len(lines[-1]) + 1
