"""How many JAX devices a CPU host gets, decided before JAX starts.

One XLA CPU device uses a multi-core host poorly; one device per core (and the batch sharded
over them) was measured faster on this project's reference machine (DESIGN.md: ResNet-18 at
batch 128, 3.5 s a step on one device against 2.0 s with a device per core). XLA reads the
device count only when the CPU backend starts, so this must run before ``import jax`` does
any work. The flag affects only the CPU platform: on GPU and TPU hosts the accelerators are
still the default devices.
"""

from __future__ import annotations

import logging
import os

FLAG = "--xla_force_host_platform_device_count"


def configure_cpu_devices(num_devices: int | None = None) -> str:
    """Sets one XLA CPU device per core unless the user already chose via ``XLA_FLAGS``.

    Args:
      num_devices: devices to create; default ``os.cpu_count()``.

    Returns:
      A sentence saying what was done, for the log.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return f"XLA_FLAGS already sets {FLAG}; leaving it."
    n = num_devices or os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()
    return (
        f"CPU host default: {FLAG}={n} (one XLA CPU device per core, measured faster than one "
        "device; set XLA_FLAGS yourself to override)."
    )


def log_decision(message: str) -> None:
    """Logs the decision made by :func:`configure_cpu_devices`."""
    logging.info(message)
