"""How much of the training loop's wall time goes to waiting for the next batch.

An accelerator that waits for input is idle; the share of wall time the loop spends blocked
in ``next(batches)`` says by how much. It is only meaningful if the host cannot run ahead of
the device: with JAX's asynchronous dispatch the host could otherwise queue dozens of steps
and then "wait for input" while the device is still busy with earlier ones. The loop therefore
keeps at most ``MAX_STEPS_AHEAD`` steps in flight (it waits for the step dispatched that many
steps earlier to finish, which costs no transfer), so that time blocked there is device time
and time blocked in ``next`` is input time.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax

# Steps dispatched but not finished: two keep the device's queue full while bounding how far
# the host runs ahead (and how much input it holds).
MAX_STEPS_AHEAD = 2
# A share of wall time waiting for input above this, for WARN_AFTER log intervals in a row,
# is worth a warning: at 10% a 100-hour run loses 10 hours of accelerator time.
WARN_SHARE = 0.10
WARN_AFTER = 2


class InputWaitMeter:
    """Times ``next(iterator)`` and keeps the host at most ``MAX_STEPS_AHEAD`` steps ahead.

    Usage in a loop::

        meter = InputWaitMeter()
        for step in ...:
            state, metrics = train_step(state, meter.next(batches))
            meter.dispatched(metrics["loss"])
            if logging_step:
                share = meter.share()   # of wall time since the previous share()

    Args:
      setting_hint: What to change when input is the bottleneck, named in the warning.
      clock: A ``time.perf_counter``-like function (tests pass a fake one).
    """

    def __init__(self, setting_hint: str = "data.num_workers", clock=time.perf_counter):
        self._clock = clock
        self._hint = setting_hint
        self._in_flight: collections.deque = collections.deque()
        self._waited = 0.0
        self._since = clock()
        self._high_intervals = 0

    def reset(self) -> None:
        """Starts a new accounting interval (e.g. after the compiling first step)."""
        self._waited = 0.0
        self._since = self._clock()

    def next(self, iterator: Iterator[Any]) -> Any:
        """Returns ``next(iterator)``, adding the time it blocked to the waiting time."""
        start = self._clock()
        try:
            return next(iterator)
        finally:
            self._waited += self._clock() - start

    def dispatched(self, step_output: jax.Array) -> None:
        """Records a dispatched step; blocks until the one ``MAX_STEPS_AHEAD`` back is done."""
        self._in_flight.append(step_output)
        while len(self._in_flight) > MAX_STEPS_AHEAD:
            self._in_flight.popleft().block_until_ready()

    def share(self) -> float:
        """Fraction of wall time spent waiting for input since the last call (or reset)."""
        now = self._clock()
        elapsed = now - self._since
        share = min(self._waited / elapsed, 1.0) if elapsed > 0 else 0.0
        self._waited, self._since = 0.0, now
        return share

    def warn_if_starved(self, share: float, step: int, num_workers: int | None) -> bool:
        """Logs a warning when the share stays above ``WARN_SHARE``; returns whether it did."""
        self._high_intervals = self._high_intervals + 1 if share > WARN_SHARE else 0
        if self._high_intervals != WARN_AFTER:
            return False
        workers = "" if num_workers is None else f" (now {num_workers})"
        logging.warning(
            "Step %d: the train step waited for its input %.0f%% of the time over the last %d "
            "log intervals, so the accelerator idled that long. Raise %s%s, or make the input "
            "cheaper (crop_in_loader, smaller images, faster storage).",
            step,
            100 * share,
            WARN_AFTER,
            self._hint,
            workers,
        )
        return True
