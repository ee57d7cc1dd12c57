"""Stopping cleanly when the scheduler says so (SIGTERM), on one host or on a pod.

On one process a SIGTERM handler sets a flag; the loop finishes the step in flight, writes a
checkpoint synchronously and returns, so the process exits 0 and the restart continues from
that step. On several processes every host must stop *at the same step* (a checkpoint is a
collective write), so there JAX's preemption sync point is used instead: the coordination
service propagates the notice and ``reached_preemption_sync_point`` turns true on every host at
the same step.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax


class PreemptionWatcher:
    """Answers "should the loop stop after this step?".

    Use as a context manager around the loop; the previous SIGTERM handler is restored on exit.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multi = jax.process_count() > 1

    def __enter__(self) -> PreemptionWatcher:
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM received: finishing this step, then checkpointing and exiting.")
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
