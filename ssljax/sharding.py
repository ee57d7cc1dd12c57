"""Meshes and shardings: data parallelism over every device, FSDP for large ViTs, through ``jit``.

Pure data parallelism (the default). The mesh has one axis, ``data``, over every device of
every process; the global batch is split along it and the train state is replicated. Under
``jit`` XLA then computes BatchNorm statistics, VICReg's variance/covariance and Barlow Twins'
cross-correlation over the *global* batch (as SyncBN in the papers) and all-reduces gradients:
no ``axis_name``, no ``pmap``, no hand-written collectives.

FSDP (``make_mesh(fsdp=N)``). A second axis ``fsdp`` of size ``N``: the mesh is
``(data=D/N, fsdp=N)``; the batch is split over both axes jointly (every device still holds
``B / D`` examples), and each large leaf of the train state -- online params, optimizer moments,
EMA target params alike, since the rule sees only shapes -- is split along ``fsdp``
(:func:`infer_state_sharding`). XLA then all-gathers a layer's weights before use and
reduce-scatters its gradient (ZeRO-3, Rajbhandari et al. 2020), so state memory per device
falls by ``N`` for the price of gathering the params once per forward and once per backward.
Worth it for ViT-B and larger; ResNets and ViT-S train faster without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

P = jax.sharding.PartitionSpec
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# big_vision's default (``shardings.fsdp(min_size_to_shard_mb=4)``): below this size the
# all-gather latency costs more than the memory it saves.
DEFAULT_MIN_SHARD_BYTES = 4 * 2**20

logger = logging.getLogger(__name__)


def make_mesh(devices: Sequence[jax.Device] | None = None, *, fsdp: int = 1) -> jax.sharding.Mesh:
    """Returns the device mesh: axis ``data``, plus ``fsdp`` when ``fsdp > 1``.

    Args:
      devices: the devices, default every global device (all processes), in ``jax.devices()``
        order, which keeps each process's devices adjacent.
      fsdp: devices over which large state leaves are split; 1 (default) gives the 1-D data
        parallel mesh ``('data',)``, ``N > 1`` the mesh ``('data', 'fsdp')`` of shape
        ``(len(devices) // N, N)``. Consecutive devices form an ``fsdp`` group, so with
        ``N`` at most the devices of one host the parameter all-gathers stay inside a host.

    Returns:
      A ``jax.sharding.Mesh``.

    Raises:
      ValueError: ``fsdp`` is not a positive divisor of the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty: the mesh needs at least one device.")
    if not isinstance(fsdp, (int, np.integer)) or fsdp < 1 or len(devices) % fsdp:
        raise ValueError(
            f"fsdp={fsdp!r} must be a positive divisor of the {len(devices)} devices; use 1 "
            f"(pure data parallelism) or one of "
            f"{[d for d in range(1, len(devices) + 1) if len(devices) % d == 0]}."
        )
    if fsdp == 1:
        return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    return jax.sharding.Mesh(grid, (DATA_AXIS, FSDP_AXIS))


def batch_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over: every axis of the mesh."""
    return tuple(mesh.axis_names)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading (batch) dimension split over every mesh axis, the rest whole.

    On the 1-D mesh this is ``P('data')``; on the FSDP mesh ``P(('data', 'fsdp'))``, so every
    device holds ``B / num_devices`` examples either way.
    """
    axes = batch_axes(mesh)
    return jax.sharding.NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Every device holds the whole array (the train state under pure data parallelism)."""
    return jax.sharding.NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], itemsize: int, fsdp_size: int, *, min_shard_bytes: int) -> P:
    """The partition spec of one leaf under FSDP (big_vision's ``shardings.fsdp`` rule).

    A leaf larger than ``min_shard_bytes`` is split along ``fsdp`` on its largest dimension
    that ``fsdp_size`` divides (ties: the later dimension, e.g. a Dense kernel's output);
    smaller leaves, scalars and leaves with no divisible dimension are replicated.

    Args:
      shape: the leaf's shape.
      itemsize: bytes per element.
      fsdp_size: size of the ``fsdp`` mesh axis.
      min_shard_bytes: leaves of at most this many bytes stay replicated.

    Returns:
      ``P()`` or ``P(None, ..., 'fsdp', ...)``.
    """
    size = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if fsdp_size <= 1 or size * itemsize <= min_shard_bytes:
        return P()
    # Stable argsort reversed: largest first, and of equal sizes the later dimension first.
    for i in np.argsort(shape, kind="stable")[::-1]:
        if shape[i] % fsdp_size == 0:
            return P(*([None] * int(i)), FSDP_AXIS)
    return P()


def infer_state_sharding(
    mesh: jax.sharding.Mesh, state: Any, *, min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES
) -> Any:
    """Shardings for every leaf of ``state`` (params, optimizer state, target params, ...).

    On a mesh without an ``fsdp`` axis everything is replicated (pure data parallelism). With
    one, each leaf gets :func:`fsdp_spec`; the rule depends on shape alone, so a momentum buffer
    and an EMA target leaf are sharded exactly like the param they shadow, and the updates
    ``theta - lr * m`` and ``tau * xi + (1 - tau) * theta`` need no communication.

    Args:
      mesh: from :func:`make_mesh`.
      state: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of the
        state initialiser).
      min_shard_bytes: leaves of at most this many bytes are replicated (default 4 MiB, as
        big_vision). Pass 0 to shard everything that divides.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``state``.

    Raises:
      ValueError: ``min_shard_bytes`` is negative.
    """
    if min_shard_bytes < 0:
        raise ValueError(f"min_shard_bytes={min_shard_bytes} must be >= 0 (0 shards all).")
    if FSDP_AXIS not in mesh.axis_names:
        repl = replicated(mesh)
        return jax.tree.map(lambda _: repl, state)
    fsdp_size = mesh.shape[FSDP_AXIS]

    def leaf_sharding(x: Any) -> jax.sharding.NamedSharding:
        shape = tuple(getattr(x, "shape", ()))
        itemsize = np.dtype(getattr(x, "dtype", np.float32)).itemsize
        spec = fsdp_spec(shape, itemsize, fsdp_size, min_shard_bytes=min_shard_bytes)
        return jax.sharding.NamedSharding(mesh, spec)

    shardings = jax.tree.map(leaf_sharding, state)
    sharded = [s for s in jax.tree.leaves(shardings) if s.spec != P()]
    logger.info(
        "FSDP over %d devices: %d of %d state leaves sharded (threshold %d bytes).",
        fsdp_size,
        len(sharded),
        len(jax.tree.leaves(shardings)),
        min_shard_bytes,
    )
    return shardings


def bytes_per_device(state: Any, shardings: Any) -> int:
    """Bytes of ``state`` held by one device under ``shardings`` (for logs and tests)."""

    def leaf_bytes(x: Any, s: jax.sharding.NamedSharding) -> int:
        shard = s.shard_shape(tuple(x.shape))
        return int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize

    return int(sum(jax.tree.leaves(jax.tree.map(leaf_bytes, state, shardings))))
