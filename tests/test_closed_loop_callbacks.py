"""ssljax.closed_loop_callbacks: tensorstore's late callbacks into a closed event loop.

The event is reproduced deterministically without orbax: a tensorstore future awaited in an
``asyncio.gather`` whose other member fails, the loop closed, then the future completed -- what
orbax's read of a damaged checkpoint does when one of its arrays fails to open.
"""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest
import tensorstore as ts

from ssljax import checkpointing, closed_loop_callbacks


def _late_callback_into_closed_loop() -> None:
    """Completes a tensorstore future after the loop that awaited it has been closed."""
    promise, future = ts.Promise.new()

    async def damaged_read():
        await asyncio.sleep(0)
        raise ValueError("damaged")

    async def read_all():
        await asyncio.gather(future, damaged_read())

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="damaged"):
            loop.run_until_complete(read_all())
    finally:
        loop.close()
    promise.set_result(1)  # tensorstore now calls the closed loop's call_soon_threadsafe


@pytest.fixture
def recorder(monkeypatch):
    """Replaces ``sys.unraisablehook`` with a list-appending hook for the test."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def test_without_the_filter_the_event_reaches_the_hook_and_matches(recorder):
    # The control: the reproduction does produce the event, and the predicate recognises it.
    _late_callback_into_closed_loop()
    assert len(recorder) == 1
    (event,) = recorder
    assert event.exc_type is RuntimeError and str(event.exc_value) == "Event loop is closed"
    assert closed_loop_callbacks.is_late_callback_into_closed_loop(event)


def test_the_filter_drops_the_event_and_counts_it(recorder):
    closed_loop_callbacks.install()
    before = closed_loop_callbacks.dropped()
    _late_callback_into_closed_loop()
    assert recorder == []
    assert closed_loop_callbacks.dropped() == before + 1


class _RaisesInDel:
    def __init__(self, exc):
        self.exc = exc

    def __del__(self):
        raise self.exc


class _CallsClosedLoopInDel:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.loop.close()

    def __del__(self):
        self.loop.call_soon_threadsafe(print)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _RaisesInDel(RuntimeError("Event loop is closed")),  # same text, Python code
        lambda: _RaisesInDel(ValueError("something else")),
        _CallsClosedLoopInDel,  # call_soon_threadsafe with a Python caller above it
    ],
    ids=["same-message-from-python", "other-error", "closed-loop-from-python"],
)
def test_every_other_unraisable_exception_is_passed_on(recorder, make):
    closed_loop_callbacks.install()
    before = closed_loop_callbacks.dropped()
    obj = make()
    del obj
    gc.collect()
    assert len(recorder) == 1
    assert not closed_loop_callbacks.is_late_callback_into_closed_loop(recorder[0])
    assert closed_loop_callbacks.dropped() == before


def test_install_wraps_once(recorder):
    closed_loop_callbacks.install()
    first = sys.unraisablehook
    closed_loop_callbacks.install()
    assert getattr(first, "_ssljax_closed_loop_filter", False)
    assert sys.unraisablehook is first


def test_a_checkpointer_installs_the_filter(recorder, tmp_path):
    checkpointing.Checkpointer(str(tmp_path), async_save=False).close()
    assert getattr(sys.unraisablehook, "_ssljax_closed_loop_filter", False)
    _late_callback_into_closed_loop()
    assert recorder == []
