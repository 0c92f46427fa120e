"""Pausing CPython's cyclic GC over work that allocates much and builds no cycles.

Parsed JSON, decoded change entries and the rows built from them hold no reference
cycles: refcounting frees them. A GC pass while such a batch is alive traverses all of
it for nothing (a snapshot part's ~30k live objects cost ~40 % of its scan; a batch
event's ~50k cost ~10 % of the worker's time per item). :func:`gc_paused` stops the GC
for a block; pauses may nest and overlap (two transactions of one projector), the GC
resumes when the last ends. End the pause once the batch's objects are freed: each
object still alive then counts toward the next pass.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_paused = 0  # open pauses that found the GC enabled (or joined one that did)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC inside the block (nor in the others open at once)."""
    global _paused
    owner = _paused > 0 or gc.isenabled()
    if owner:
        _paused += 1
        gc.disable()
    try:
        yield
    finally:
        if owner:
            _paused -= 1
            if _paused == 0:
                gc.enable()
