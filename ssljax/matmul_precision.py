"""How float32 matrix products and convolutions are computed: one setting, applied and logged.

JAX's default for float32 ``dot``/``conv`` trades accuracy for speed where the hardware allows:
TF32 tensor cores (10-bit mantissa) on NVIDIA GPUs since Ampere, bfloat16 passes on TPU, full
float32 on CPU (https://docs.jax.dev/en/latest/201/precision.html). PyTorch's defaults differ
again (TF32 convolutions, float32 matrix products, ``torch.backends.cudnn.allow_tf32`` and
``torch.backends.cuda.matmul.allow_tf32``). A comparison of the two on a GPU, or a run that must
match a float32 reference, therefore needs the setting stated and controllable:
``config.model.matmul_precision``.

This governs float32 inputs only; ``model.dtype='bfloat16'`` computes in bfloat16 regardless.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# "default" keeps JAX's choice (and a JAX_DEFAULT_MATMUL_PRECISION set by the user); the others
# are jax.default_matmul_precision's names, from the least to the most precise.
MATMUL_PRECISIONS: tuple[str, ...] = ("default", "bfloat16", "tensorfloat32", "float32")


def check(value: str) -> None:
    """Raises ValueError naming the allowed values if ``value`` is not one of them.

    Args:
      value: ``config.model.matmul_precision``.

    Raises:
      ValueError: if ``value`` is not in :data:`MATMUL_PRECISIONS`.
    """
    if value not in MATMUL_PRECISIONS:
        raise ValueError(
            f"model.matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, got "
            f"{value!r}. 'float32' computes float32 products in full precision (as a strict "
            "float32 reference does); 'default' is JAX's (TF32 on recent NVIDIA GPUs)."
        )


def describe(value: str, platform: str) -> str:
    """One line for the run's log: what ``value`` means on ``platform``.

    Args:
      value: ``config.model.matmul_precision``.
      platform: ``jax.devices()[0].platform`` (``cpu``, ``gpu``, ``tpu``).

    Returns:
      E.g. ``"float32 matmuls/convolutions: JAX's default (TF32 on NVIDIA GPUs since Ampere)"``.
    """
    import jax  # here, so that config validation does not import JAX

    if value != "default":
        return f"float32 matmuls/convolutions: {value} (model.matmul_precision)"
    configured = jax.config.jax_default_matmul_precision
    if configured:
        return f"float32 matmuls/convolutions: {configured} (JAX_DEFAULT_MATMUL_PRECISION)"
    meaning = {
        "gpu": "TF32 on NVIDIA GPUs since Ampere, float32 before",
        "tpu": "bfloat16 passes",
        "cpu": "float32",
    }.get(platform, "the backend's choice")
    return (
        f"float32 matmuls/convolutions: JAX's default ({meaning}; "
        "--config.model.matmul_precision=float32 for full float32)"
    )


@contextlib.contextmanager
def applied(value: str) -> Iterator[None]:
    """Traces and compiles everything inside the block at ``value``'s precision.

    JAX reads the setting when a function is traced (it is part of ``jit``'s cache key), so
    the train step, the kNN monitor and the BatchNorm calibration compiled inside the block
    all use it, and nothing outside the block is changed.

    Args:
      value: ``config.model.matmul_precision``.

    Yields:
      Nothing.

    Raises:
      ValueError: if ``value`` is not in :data:`MATMUL_PRECISIONS`.
    """
    import jax

    check(value)
    if value == "default":
        yield
        return
    with jax.default_matmul_precision(value):
        yield
