"""Stopping cleanly when the scheduler says so (SIGTERM), on one host or on a pod.

On one process a SIGTERM (or a first SIGINT) handler sets a flag; the loop finishes the step in
flight, writes a checkpoint synchronously and returns, so the process exits 0 and the restart
continues from that step. On several processes every host must stop *at the same step* (a
checkpoint is a collective write), so there JAX's preemption sync point is used instead: the
coordination service propagates the notice and ``reached_preemption_sync_point`` turns true on
every host at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax


class PreemptionWatcher:
    """Answers "should the loop stop after this step?".

    Use as a context manager around the loop; the previous SIGTERM and SIGINT handlers are
    restored on exit. SIGINT (Ctrl-C) is treated like SIGTERM: the step in flight finishes, a
    checkpoint is written and the run exits 0; a second Ctrl-C aborts at once
    (``KeyboardInterrupt``). Watchers nest: one entered inside another shares its flag and its
    count of Ctrl-Cs, so a signal received during start-up (outer watcher) stops the loop
    (inner watcher) at its first step, and a second Ctrl-C there aborts.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._flag = threading.Event()
        self._previous: dict[int, object] = {}
        self._multi = jax.process_count() > 1
        self._interrupts = [0]  # Ctrl-Cs so far; a list so that nested watchers share it

    def __enter__(self) -> PreemptionWatcher:
        if not self._multi and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.signal(sig, self._on_signal)
                self._previous[sig] = previous
                outer = getattr(previous, "__self__", None)
                if isinstance(outer, PreemptionWatcher):
                    self._flag, self._interrupts = outer._flag, outer._interrupts
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT:
            self._interrupts[0] += 1
            if self._interrupts[0] > 1:
                raise KeyboardInterrupt("second Ctrl-C: aborting without a final checkpoint")
        name = signal.Signals(signum).name
        logging.warning(
            "%s received: finishing this step, then checkpointing and exiting%s.",
            name,
            " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else "",
        )
        self._flag.set()

    def request_stop(self) -> None:
        """Asks the loop to stop as if SIGTERM had arrived (tests, notebooks)."""
        self._flag.set()

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested (single process) or at the agreed step (multi-host)."""
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                # No preemption service (e.g. jax.distributed not initialised with it).
                return False
        return self._flag.is_set()
