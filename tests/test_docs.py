"""The docs stand on their own: they cite no document or tracker a reader does not have, and
every pattern file they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
NOT_FOR_READERS = re.compile(r"DESIGN\.md|STYLE\.md|\bthe issue\b|\bissue's\b|\bthe brief\b", re.IGNORECASE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_cite_nothing_a_reader_lacks(doc):
    found = [m.group(0) for m in NOT_FOR_READERS.finditer(doc.read_text())]
    assert not found, f"{doc.name} cites {found}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_pattern_files_exist(doc):
    """Every pattern file a doc names is shipped, except one it tells the reader to save, and
    the file of an example error message (`patterns/x.attn:3:20: error: ...`)."""
    text = doc.read_text()
    for m in re.finditer(r"patterns/([a-z0-9_]+)\.attn(:\d)?", text):
        told_to_save = "save it as" in text[max(0, m.start() - 40) : m.start()]
        if m.group(2) or told_to_save:
            continue
        assert (ROOT / "patterns" / f"{m.group(1)}.attn").exists(), f"{doc.name} names patterns/{m.group(1)}.attn"
