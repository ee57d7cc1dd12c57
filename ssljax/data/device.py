"""Per-process NumPy batches -> global ``jax.Array`` batches, prefetched onto the devices.

Each process holds its own rows of the global batch; ``jax.make_array_from_process_local_data``
turns them into one array sharded over the mesh (no communication: each process places its rows
on its local devices).

Why a background thread: with ``num_workers=0`` the loader decodes in the calling thread, and
even with worker processes the host-to-device copy takes time. A thread that pulls the next
``size`` batches and starts their transfers overlaps both with the running train step (JAX and
PIL release the GIL while they work). ``make_array_from_process_local_data`` involves no
collective, so calling it from a thread is safe on multi-host set-ups.

Exact resumption: batches sitting in the prefetch queue have left the loader but were never
trained on. The loader state is recorded with each batch when it is pulled, and
``state_of_last_consumed()`` returns the one recorded with the last batch handed out by
``__next__``; checkpoint that, not the loader's own (ahead) state.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class DevicePrefetcher:
    """Iterator of global batches; see ``device_prefetch``."""

    def __init__(self, iterator: Iterator[Any], sharding: Any, size: int = 2):
        if size < 1:
            raise ValueError(f"size={size} must be >= 1 (batches prefetched onto the devices).")
        if not isinstance(sharding, jax.sharding.Sharding) and not isinstance(sharding, dict):
            raise ValueError(
                f"sharding={sharding!r} must be a jax.sharding.Sharding (for every array of the "
                "batch) or a dict of them with the batch's keys."
            )
        self._iterator = iterator
        self._sharding = sharding
        self._get_state = getattr(iterator, "get_state", None)
        self._last_state = self._get_state() if self._get_state is not None else None
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="ssljax-device-prefetch")
        self._thread.daemon = True
        self._thread.start()

    def _to_global(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        def put(key: str, local: Any) -> jax.Array:
            sharding = self._sharding if not isinstance(self._sharding, dict) else None
            if sharding is None:
                if key not in self._sharding:
                    raise ValueError(f"sharding has no entry for batch key {key!r}.")
                sharding = self._sharding[key]
            try:
                return jax.make_array_from_process_local_data(sharding, local)
            except Exception as e:
                raise ValueError(
                    f"Cannot place batch[{key!r}] of local shape {local.shape} with sharding "
                    f"{sharding}: the per-process batch must divide evenly over this process's "
                    f"devices ({e})."
                ) from e

        return {key: put(key, value) for key, value in batch.items()}

    def _put(self, item: Any) -> bool:
        # Wait for room, but give up when closed so the thread can end.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._iterator:
                if self._stop.is_set():
                    return
                state = self._get_state() if self._get_state is not None else None
                if not self._put((self._to_global(batch), state)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread.
            self._put(_Failure(e))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        batch, self._last_state = item
        return batch

    def state_of_last_consumed(self) -> Any:
        """Returns the loader state after the last batch returned by ``__next__``.

        Restoring it into a fresh loader makes its next batch the one that follows the last
        batch consumed here, whatever was still waiting in the prefetch queue. Before any batch
        is consumed it is the loader's state at construction.
        """
        return self._last_state

    # Lets code that checkpoints "the data iterator" call get_state() on the prefetcher.
    get_state = state_of_last_consumed

    def close(self) -> None:
        """Stops the prefetch thread (the wrapped iterator is left open)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5.0)
        self._done = True

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def device_prefetch(iterator: Iterator[Any], sharding: Any, size: int = 2) -> DevicePrefetcher:
    """Turns per-process NumPy batches into global jax.Arrays, ``size`` batches ahead.

    Args:
      iterator: yields dicts of per-process NumPy arrays (e.g. ``make_loader``'s iterator); if it
        has ``get_state()``, the state is tracked per batch (``state_of_last_consumed``).
      sharding: a ``jax.sharding.Sharding`` used for every array (e.g.
        ``NamedSharding(mesh, P('data'))`` shards the leading, batch axis), or a dict of them
        with the batch's keys.
      size: batches prefetched onto the devices ahead of the one in use (>= 1).

    Returns:
      A DevicePrefetcher: an iterator of dicts of global ``jax.Array`` whose leading dimension
      is the global batch, with ``state_of_last_consumed()`` and ``close()``.

    Raises:
      ValueError: bad ``size`` or ``sharding``.
    """
    return DevicePrefetcher(iterator, sharding, size)
