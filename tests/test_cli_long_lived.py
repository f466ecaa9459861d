"""`cli.long_lived`: the collector pauses while a command imports, then skips what the imports made."""

from __future__ import annotations

import gc
import weakref

from attnc.cli import long_lived


class _Node:
    pass


def test_long_lived_freezes_what_it_makes_and_still_collects_later_cycles() -> None:
    gc.enable()
    try:
        with long_lived():
            assert not gc.isenabled()
            made = [_Node() for _ in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(made)
        cycle = _Node()
        cycle.self = cycle
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert ref() is None  # made after the block: collected as usual
    finally:
        gc.unfreeze()


def test_long_lived_keeps_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with long_lived():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
