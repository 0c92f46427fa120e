"""shared.gcpause: pauses nest and overlap; the GC resumes when the last one ends."""

from __future__ import annotations

import gc

import pytest

from shared.gcpause import gc_paused


def test_nested_and_overlapping_pauses_resume_the_gc_once_the_last_ends() -> None:
    assert gc.isenabled()
    first, second = gc_paused(), gc_paused()
    first.__enter__()
    assert not gc.isenabled()
    second.__enter__()
    first.__exit__(None, None, None)  # overlapping: the first ends while the second runs
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
    with gc_paused(), gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_that_raises_resumes_the_gc() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_pause_leaves_a_gc_disabled_by_someone_else_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
