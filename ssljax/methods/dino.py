"""DINO: self-distillation with no labels (Caron et al., 2021).

A student (backbone -> DINO head) is trained to match the output distribution of a teacher,
an EMA of the student (momentum 0.996 -> 1 by cosine, the BYOL schedule: ``EMA`` with
``tau_base``), on different crops of the same image. The teacher sees the two global crops,
the student every crop, multi-crop's local ones included. Collapse is avoided by *centering*
(the teacher outputs minus a center ``c``, an EMA of their batch mean with momentum 0.9) and
*sharpening* (a low teacher temperature, 0.04 warmed up to 0.07 over the first 30 epochs;
the student's is 0.1). Algorithm 1 of the paper, and ``DINOLoss`` of the official
``main_dino.py``:

    L = 1 / |pairs| * sum_{global i} sum_{crop v != i} H(P_t(x_i), P_s(x_v))

with ``P_t = softmax((g_t - c) / tau_t)`` (no gradient) and ``P_s = softmax(g_s / tau_s)``.

The center is this method's own state (``method_state['center']``, beside the EMA teacher's
``target_params`` and ``target_batch_stats``); the loss reads the center of before the step,
and :func:`dino_update_state` moves it with this step's teacher outputs, as the official
``DINOLoss.forward`` computes the loss and then calls ``update_center``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.methods import base, target_policies

# The paper's values (Caron et al. 2021, sec. 3.1 and App. A; main_dino.py's arguments); a
# config's method_config overrides them.
DEFAULTS = {
    "student_temp": 0.1,
    "teacher_temp": 0.07,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 30,
    "center_momentum": 0.9,
}


def _config(method_config: Any) -> dict[str, Any]:
    return base.resolve_method_config("dino", DEFAULTS, method_config)


def teacher_temperature(
    step: jax.typing.ArrayLike, steps_per_epoch: int, method_config: Any = None
) -> jax.Array:
    """tau_t at a step: linear from ``warmup_teacher_temp`` to ``teacher_temp``, per epoch.

    As the official ``teacher_temp_schedule`` (``np.linspace(warmup, final, W)`` indexed by the
    epoch, then ``final``): epoch e < W has ``warmup + (final - warmup) * e / (W - 1)``.

    Args:
      step: the optimizer step (0-based; traced under jit).
      steps_per_epoch: steps per epoch, static.
      method_config: overrides of :data:`DEFAULTS`.

    Returns:
      A float32 scalar.
    """
    cfg = _config(method_config)
    warm, final = float(cfg["warmup_teacher_temp"]), float(cfg["teacher_temp"])
    num_warm = int(cfg["warmup_teacher_temp_epochs"])
    epoch = (jnp.asarray(step, jnp.int32) // max(int(steps_per_epoch), 1)).astype(jnp.float32)
    ramp = warm + (final - warm) * epoch / max(num_warm - 1, 1)
    return jnp.where(epoch < num_warm, ramp, final).astype(jnp.float32)


def dino_method_loss(
    online: Sequence[base.ViewOutputs],
    target: Sequence[base.ViewOutputs] | None,
    method_config: Any = None,
    context: base.LossContext | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DINO's loss over every (teacher global view, other student view) pair (Algorithm 1).

    Args:
      online: the student's outputs of every view (global first), ``'projection'`` = head
        output ``[B, K]``.
      target: the teacher's outputs of the global views.
      method_config: overrides of :data:`DEFAULTS` (temperatures, their warm-up, the center
        momentum).
      context: the loop's :class:`~ssljax.methods.base.LossContext`: the step (for the teacher
        temperature) and the method state (the center).

    Returns:
      The loss and ``{"dino": loss, "teacher_entropy": H, "kl": loss - H}``, H the teacher
      distributions' mean entropy (the loss's floor; the KL is the student's part).

    Raises:
      ValueError: without target outputs or context, or with fewer than two views.
    """
    if target is None or context is None:
        raise ValueError("DINO needs the teacher's outputs and the loop's context (the center).")
    cfg = _config(method_config)
    temp = teacher_temperature(context.step, context.steps_per_epoch, cfg)
    loss = losses.dino_loss(
        [o["projection"] for o in online],
        [t["projection"] for t in target],
        context.state["center"],
        student_temp=cfg["student_temp"],
        teacher_temp=temp,
    )
    # Each pair's cross-entropy is H(P_t) + KL(P_t || P_s), and every teacher view is in the
    # same number of pairs: the loss is the teachers' mean entropy plus the mean KL. The entropy
    # is the centering's to raise (by design, early on); the KL is what the student reduces.
    center = jnp.reshape(context.state["center"], (-1,))
    entropies = []
    for t in target:
        log_q = jax.nn.log_softmax((t["projection"].astype(jnp.float32) - center) / temp, axis=-1)
        entropies.append(jnp.mean(-jnp.sum(jnp.exp(log_q) * log_q, axis=-1)))
    entropy = jax.lax.stop_gradient(sum(entropies) / len(entropies))
    return loss, {"dino": loss, "teacher_entropy": entropy, "kl": loss - entropy}


def dino_init_state(projection_dim: int, method_config: Any) -> base.MethodState:
    """The center starts at zero (``register_buffer("center", torch.zeros(1, out_dim))``)."""
    _config(method_config)
    return {"center": jnp.zeros((projection_dim,), jnp.float32)}


def dino_update_state(
    state: base.MethodState, target: Sequence[base.ViewOutputs] | None, method_config: Any
) -> base.MethodState:
    """Moves the center towards this step's teacher batch mean (Caron et al. 2021, eq. 4)."""
    cfg = _config(method_config)
    center = losses.dino_center_update(
        state["center"], [t["projection"] for t in target], cfg["center_momentum"]
    )
    return {**state, "center": center}


DINO = base.Method(
    name="dino",
    target_policy=target_policies.EMA.from_config,
    has_predictor=False,
    loss=dino_method_loss,
    config_defaults=DEFAULTS,
    init_state=dino_init_state,
    update_state=dino_update_state,
)
