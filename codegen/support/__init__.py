"""Plain Python shared by every generated module: host code that does not vary per pattern.

Each file here depends on torch and triton only (and on its siblings through
`from .name import ...` lines). Tests import the files as ordinary modules; the writer
(codegen/writer.py, `support_source`) inlines their text verbatim into each generated module,
without the module docstring, `from __future__` and the sibling imports, so that a
generated module stays standalone. The per-pattern parts (kernel bodies with their mask
expressions, tables of constants) stay in the templates and reach this code as named data:
the NamedTuples these files declare (`decode.DecodeSpec`, `cache.CacheSpec`, ...).

Inlining order (siblings before the files that import them) is `INLINE_ORDER`; the modules
a support file (so a generated module) may import are `IMPORTS`.
"""

IMPORTS = frozenset({"functools", "heapq", "math", "os", "typing", "torch", "triton"})

INLINE_ORDER = (
    "records",
    "checks",
    "launch",
    "hopper",
    "block_scores",
    "selection",
    "prefill",
    "policies",
    "decode",
    "cache",
    "paged",
)
