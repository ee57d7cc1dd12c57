"""Drops tensorstore's late callbacks into an event loop orbax has already closed.

orbax reads a checkpoint's arrays (and their metadata) with ``asyncio.gather`` over tensorstore
futures inside a fresh event loop that it closes when the read returns. When one read fails --
a damaged checkpoint, which ssljax then reports and passes over -- ``gather`` raises at once and
the loop is closed while the other reads are still in flight. As each of them completes,
tensorstore (from its own C++ threads) calls the closed loop's ``call_soon_threadsafe``, which
raises ``RuntimeError: Event loop is closed`` with no Python caller to receive it, so Python
prints it as an "Exception ignored in: None" traceback (pytest: a
``PytestUnraisableExceptionWarning``) after ssljax has already said which checkpoint is
damaged and why. The results those callbacks carry were already discarded with the failed read:
nothing is lost by dropping them.

:func:`install` wraps ``sys.unraisablehook`` with a filter that drops exactly that event and
hands every other unraisable exception to the hook it replaced.
(orbax-checkpoint 0.12.8, tensorstore 0.1.86; reproduced without orbax in
``tests/test_closed_loop_callbacks.py``.)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

_ASYNCIO_BASE_EVENTS = os.path.join("asyncio", "base_events.py")
_MESSAGE = "Event loop is closed"

_lock = threading.Lock()
_dropped = 0


def is_late_callback_into_closed_loop(unraisable: Any) -> bool:
    """Whether an unraisable exception is a native callback hitting a closed asyncio loop.

    Args:
      unraisable: the ``sys.UnraisableHookArgs`` given to ``sys.unraisablehook``.

    Returns:
      True only for ``RuntimeError("Event loop is closed")`` raised by
      ``BaseEventLoop.call_soon_threadsafe`` when native code (no Python frame above it) called
      it, with no object and no message attached: the signature of a tensorstore future
      completing after orbax closed the loop that awaited it.
    """
    if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != _MESSAGE:
        return False
    if unraisable.object is not None or unraisable.err_msg is not None:
        return False
    tb = unraisable.exc_traceback
    if tb is None:
        return False
    # The outermost frame is the one native code entered: call_soon_threadsafe itself. A Python
    # caller would appear above it (and would have received the exception instead).
    code = tb.tb_frame.f_code
    return code.co_name == "call_soon_threadsafe" and code.co_filename.endswith(
        _ASYNCIO_BASE_EVENTS
    )


def dropped() -> int:
    """How many late callbacks the installed filter has dropped in this process."""
    return _dropped


def install() -> None:
    """Wraps ``sys.unraisablehook`` once with the filter; calling it again is a no-op.

    The hook in place at the time (Python's default, or pytest's collector) still receives every
    other unraisable exception. A hook installed later replaces this one as usual.
    """
    with _lock:
        current = sys.unraisablehook
        if getattr(current, "_ssljax_closed_loop_filter", False):
            return

        def hook(unraisable: Any) -> None:
            global _dropped
            if is_late_callback_into_closed_loop(unraisable):
                _dropped += 1
                logging.debug(
                    "Dropped a tensorstore callback into orbax's closed event loop (left over "
                    "from a checkpoint read that had already failed)."
                )
                return
            current(unraisable)

        hook._ssljax_closed_loop_filter = True  # type: ignore[attr-defined]
        sys.unraisablehook = hook
