"""DINO: its loss and center against NumPy re-implementations of the official formulas, its
head, its optimizer pieces, multi-crop, one train step, and the digits job.

The NumPy references are written from Caron et al. 2021 (Algorithm 1, eq. 1-4) and the
official ``DINOLoss`` (facebookresearch/dino ``main_dino.py``): loops over the pairs, no code
shared with ``ssljax.losses``.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssljax import augment, config_schema, losses, methods, optim, train
from ssljax.methods import dino
from ssljax.models import DINOHead

REPO = pathlib.Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# NumPy references.
# ----------------------------------------------------------------------------------------------
def np_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def np_dino_loss(student, teacher, center, student_temp, teacher_temp):
    """DINOLoss.forward: student chunks / tau_s, softmax((teacher - c) / tau_t), skip v == iq."""
    total, n_terms = 0.0, 0
    for iq, t in enumerate(teacher):
        q = np_softmax((t - center) / teacher_temp)
        for v, s in enumerate(student):
            if v == iq:
                continue
            log_p = np.log(np_softmax(s / student_temp))
            total += np.mean(np.sum(-q * log_p, axis=-1))
            n_terms += 1
    return total / n_terms


def np_center(center, teacher, momentum):
    """update_center: the mean of the concatenated teacher outputs, then the EMA."""
    batch_center = np.concatenate(teacher, axis=0).sum(0) / sum(len(t) for t in teacher)
    return center * momentum + batch_center * (1 - momentum)


def _outputs(rng, num_views, batch=6, width=16, scale=3.0):
    return [rng.normal(size=(batch, width)).astype(np.float64) * scale for _ in range(num_views)]


# ----------------------------------------------------------------------------------------------
# Loss, center, temperature.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_local", [0, 1, 4])
def test_dino_loss_equals_the_official_formula(num_local):
    rng = np.random.default_rng(num_local)
    student = _outputs(rng, 2 + num_local)
    teacher = _outputs(rng, 2)
    center = rng.normal(size=16)
    # float32 in ssljax against float64 in NumPy, on the float32-rounded inputs.
    student = [np.float64(np.float32(x)) for x in student]
    teacher = [np.float64(np.float32(x)) for x in teacher]
    center = np.float64(np.float32(center))
    got = losses.dino_loss(
        [jnp.asarray(s, jnp.float32) for s in student],
        [jnp.asarray(t, jnp.float32) for t in teacher],
        jnp.asarray(center, jnp.float32),
        student_temp=0.1,
        teacher_temp=0.04,
    )
    got = float(got)
    want = np_dino_loss(student, teacher, center, 0.1, 0.04)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Pairs: 2 teacher views x (2 + M) student views, minus the 2 same-view pairs.
    assert want > 0


def test_dino_loss_float32_and_no_gradient_to_the_teacher():
    rng = np.random.default_rng(1)
    student = [jnp.asarray(x, jnp.float32) for x in _outputs(rng, 4)]
    teacher = [jnp.asarray(x, jnp.float32) for x in _outputs(rng, 2)]
    center = jnp.zeros(16)

    def f(s, t):
        return losses.dino_loss(s, t, center, student_temp=0.1, teacher_temp=0.07)

    value = f(student, teacher)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(
        float(value),
        np_dino_loss(
            [np.float64(x) for x in student], [np.float64(x) for x in teacher], 0.0, 0.1, 0.07
        ),
        rtol=1e-5,
    )
    g_student, g_teacher = jax.grad(f, argnums=(0, 1))(student, teacher)
    assert all(float(jnp.abs(g).max()) > 0 for g in g_student)
    assert all(float(jnp.abs(g).max()) == 0 for g in g_teacher)


def test_dino_loss_rejects_mismatched_inputs():
    x = jnp.zeros((4, 8))
    with pytest.raises(ValueError, match="center"):
        losses.dino_loss([x, x], [x, x], jnp.zeros(7), student_temp=0.1, teacher_temp=0.04)
    with pytest.raises(ValueError, match="one shape"):
        losses.dino_loss(
            [x, jnp.zeros((4, 9))], [x], jnp.zeros(8), student_temp=0.1, teacher_temp=0.04
        )


def test_center_update_is_the_ema_of_the_global_batch_mean():
    rng = np.random.default_rng(2)
    teacher = _outputs(rng, 2)
    center = rng.normal(size=16)
    got = losses.dino_center_update(jnp.asarray(center), [jnp.asarray(t) for t in teacher], 0.9)
    np.testing.assert_allclose(np.asarray(got), np_center(center, teacher, 0.9), rtol=1e-5)


def test_teacher_temperature_is_the_official_per_epoch_linspace():
    cfg = {"warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 30}
    schedule = np.concatenate([np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07])
    steps_per_epoch = 5
    for epoch in (0, 1, 10, 29, 30, 99):
        for step in (epoch * steps_per_epoch, epoch * steps_per_epoch + 4):
            got = float(dino.teacher_temperature(step, steps_per_epoch, cfg))
            assert got == pytest.approx(schedule[epoch], rel=1e-6), (epoch, step)


def test_dino_method_reads_the_center_and_moves_it():
    rng = np.random.default_rng(3)
    online = [{"projection": jnp.asarray(x, jnp.float32)} for x in _outputs(rng, 3)]
    target = online[:2]
    state = {"center": jnp.asarray(rng.normal(size=16), jnp.float32)}
    ctx = methods.LossContext(jnp.asarray(0), 10, state)
    loss, terms = dino.dino_method_loss(online, target, {}, ctx)
    want = np_dino_loss(
        [np.float64(o["projection"]) for o in online],
        [np.float64(t["projection"]) for t in target],
        np.float64(state["center"]),
        0.1,
        0.04,
    )
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert set(terms) == {"dino", "teacher_entropy", "kl"}
    q = [
        np_softmax((np.float64(t["projection"]) - np.float64(state["center"])) / 0.04)
        for t in target
    ]
    entropy = np.mean([np.mean(-np.sum(x * np.log(x), -1)) for x in q])
    np.testing.assert_allclose(float(terms["teacher_entropy"]), entropy, rtol=1e-4)
    np.testing.assert_allclose(float(terms["kl"]), want - entropy, rtol=1e-4, atol=1e-5)
    new = dino.dino_update_state(state, target, {})
    np.testing.assert_allclose(
        np.asarray(new["center"]),
        np_center(np.float64(state["center"]), [np.float64(t["projection"]) for t in target], 0.9),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="unknown method_config"):
        dino.dino_method_loss(online, target, {"teacher_tmp": 0.1}, ctx)


# ----------------------------------------------------------------------------------------------
# The head.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_head_matches_its_formula(norm_last_layer):
    head = DINOHead(
        hidden_dims=(32, 32), bottleneck_dim=8, output_dim=64, norm_last_layer=norm_last_layer
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 12))
    params = head.init(jax.random.PRNGKey(1), x, train=True)["params"]
    names = set(params)
    assert names == {"dense_0", "dense_1", "dense_2", "last_layer"}
    assert ("g" in params["last_layer"]) == (not norm_last_layer)
    # Trunc-normal std 0.02 weights, zero biases (DINOHead._init_weights).
    assert abs(float(np.std(params["dense_0"]["kernel"])) - 0.02) < 0.004
    np.testing.assert_array_equal(params["dense_1"]["bias"], 0.0)

    p = jax.tree.map(np.float64, params)
    gelu = lambda v: 0.5 * v * (1 + np.vectorize(__import__("math").erf)(v / np.sqrt(2)))  # noqa: E731
    h = np.float64(x)
    for i in range(3):
        h = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
        if i < 2:
            h = gelu(h)
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    v = p["last_layer"]["kernel"]
    w = v / np.linalg.norm(v, axis=0, keepdims=True)
    if not norm_last_layer:
        w = w * p["last_layer"]["g"]
    want = h @ w
    got = np.asarray(head.apply({"params": params}, x, train=True))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # With the norm fixed every prototype is a unit vector: |output| <= 1.
    assert np.abs(got).max() <= 1.0 + 1e-5


# ----------------------------------------------------------------------------------------------
# Optimizer pieces.
# ----------------------------------------------------------------------------------------------
def test_cosine_weight_decay_schedule_endpoints_and_middle():
    sched = optim.cosine_schedule(0.04, 0.4, 100)
    assert float(sched(0)) == pytest.approx(0.04)
    assert float(sched(50)) == pytest.approx(0.22)
    assert float(sched(100)) == pytest.approx(0.4)
    assert float(sched(1000)) == pytest.approx(0.4)
    # utils.cosine_scheduler without warm-up: end + (start - end) / 2 * (1 + cos(pi i / n)).
    i = np.arange(100)
    want = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * i / 100))
    np.testing.assert_allclose([float(sched(k)) for k in i], want, rtol=1e-5)


def test_adamw_with_a_weight_decay_schedule_equals_torch_adamw_updated_per_step():
    """NumPy torch.optim.AdamW with param_group['weight_decay'] rewritten every iteration."""
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(5)]
    lr, wd = 0.1, optim.cosine_schedule(0.04, 0.4, 5)
    tx = optim.adamw(lr, weight_decay=wd, weight_decay_mask=None)
    params = jnp.asarray(p0, jnp.float32)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
    # torch AdamW: p *= 1 - lr * wd_k; m, v; p -= lr * m_hat / (sqrt(v_hat) + eps).
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for k, g in enumerate(grads, start=1):
        wd_k = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * (k - 1) / 5))
        p = p * (1 - lr * wd_k)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - lr * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
    np.testing.assert_allclose(np.asarray(params), p, rtol=1e-4, atol=1e-5)


def test_per_param_clipping_is_per_tensor():
    g = {"a": jnp.full((4,), 3.0), "b": jnp.full((4,), 0.1)}  # norms 6 and 0.2
    out, _ = optim.clip_by_per_param_norm(3.0).update(g, optax.EmptyState())
    np.testing.assert_allclose(np.linalg.norm(out["a"]), 3.0 * 6 / (6 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(out["b"], g["b"])


def test_freeze_holds_the_masked_params_for_the_first_steps():
    params = {"head": jnp.ones(3), "last_layer": jnp.ones(3)}
    mask = {"head": False, "last_layer": True}
    tx = optim.freeze_for_steps(optim.adamw(0.1, weight_decay=0.5, weight_decay_mask=None), mask, 2)
    state = tx.init(params)
    g = {"head": jnp.ones(3), "last_layer": jnp.ones(3)}
    history = []
    for _ in range(3):
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    np.testing.assert_array_equal(history[1]["last_layer"], 1.0)  # frozen for 2 steps
    assert not np.allclose(history[0]["head"], 1.0)
    assert not np.allclose(history[2]["last_layer"], 1.0)  # released at the third


# DINO's optimizer fields (configs/dino.py): AdamW, weight decay 0.04 -> 0.4, the head's last
# layer frozen for the first epoch.
DINO_ADAMW = {
    "name": "adamw",
    "weight_decay": 0.04,
    "final_weight_decay": 0.4,
    "freeze": ((r"^projector/last_layer/", 1.0),),
    "exclude_from_weight_decay": (),
}


def _numpy_adamw_with_frozen(params, grads, frozen_steps, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """PyTorch's AdamW (Loshchilov & Hutter 2019, Algorithm 2 as ``torch.optim.AdamW``) over
    named arrays, with DINO's ``cancel_gradients_last_layer``: a frozen tensor's gradient is
    ``None`` for its first ``frozen_steps[name]`` iterations, so the optimizer skips it -- no
    decay, no move, and its own step count ``t`` starts at its first gradient.

    Per tensor with a gradient at iteration k (``lr(k)``, ``wd(k)`` set globally every
    iteration): ``t += 1; p -= lr wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
    """
    p = {n: np.array(x, np.float64) for n, x in params.items()}
    m = {n: np.zeros_like(x) for n, x in p.items()}
    v = {n: np.zeros_like(x) for n, x in p.items()}
    t = dict.fromkeys(p, 0)
    for k, g in enumerate(grads):
        for n in p:
            if k < frozen_steps.get(n, 0):
                continue
            t[n] += 1
            p[n] -= lr(k) * wd(k) * p[n]
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            m_hat, v_hat = m[n] / (1 - b1 ** t[n]), v[n] / (1 - b2 ** t[n])
            p[n] -= lr(k) * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_a_released_layer_starts_its_own_adam_count_as_pytorch():
    """DINO's frozen last layer: after release, Adam's bias correction starts at step 1.

    The previous ``freeze_for_steps`` shared the run's count, so the released layer's first
    updates were bias-corrected for the run's step, not its own (up to ~1.6x the reference's
    step size 100 updates after a 200-step freeze); this test fails on it.
    """
    rng = np.random.default_rng(0)
    shapes = {"backbone/kernel": (3, 2), "projector/last_layer/kernel": (2,)}
    params = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    grads = [{n: rng.normal(size=s) for n, s in shapes.items()} for _ in range(12)]
    nest = lambda flat: {  # noqa: E731
        "backbone": {"kernel": jnp.asarray(flat["backbone/kernel"], jnp.float32)},
        "projector": {
            "last_layer": {"kernel": jnp.asarray(flat["projector/last_layer/kernel"], jnp.float32)}
        },
    }
    cfg = {**DINO_ADAMW, "base_lr": 0.01}
    tx, lr = optim.build_optimizer(
        cfg, nest(params), global_batch=256, total_steps=12, warmup_steps=2, steps_per_epoch=4
    )
    wd = optim.cosine_schedule(0.04, 0.4, 12)
    p = nest(params)
    state = tx.init(p)
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(nest(g), state, p)
        p = optax.apply_updates(p, u)
    want = _numpy_adamw_with_frozen(
        params,
        grads,
        {"projector/last_layer/kernel": 4},
        lr=lambda k: float(lr(k)),
        wd=lambda k: float(wd(k)),
    )
    np.testing.assert_allclose(p["backbone"]["kernel"], want["backbone/kernel"], rtol=1e-5)
    np.testing.assert_allclose(
        p["projector"]["last_layer"]["kernel"], want["projector/last_layer/kernel"], rtol=1e-5
    )


def test_build_optimizer_reads_the_dino_fields():
    params = {
        "backbone": {"kernel": jnp.ones((2, 2))},
        "projector": {"last_layer": {"kernel": jnp.ones(2)}},
    }
    cfg = {**DINO_ADAMW, "base_lr": 0.0005, "clip_grad_per_param": 3.0}
    tx, _ = optim.build_optimizer(
        cfg, params, global_batch=256, total_steps=10, warmup_steps=2, steps_per_epoch=3
    )
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    p = params
    for _ in range(4):
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        if _ < 2:
            # lr 0 at step 0 of the warm-up; the frozen layer never moves in epoch 0 (3 steps).
            np.testing.assert_array_equal(p["projector"]["last_layer"]["kernel"], 1.0)
    assert not np.allclose(p["projector"]["last_layer"]["kernel"], 1.0)
    with pytest.raises(ValueError, match="adamw"):
        optim.build_optimizer(
            {**cfg, "name": "sgd"}, params, global_batch=256, total_steps=10, warmup_steps=2
        )


# ----------------------------------------------------------------------------------------------
# Multi-crop.
# ----------------------------------------------------------------------------------------------
def test_local_views_leave_the_global_views_bitwise_unchanged():
    images = jax.random.randint(jax.random.PRNGKey(0), (4, 32, 32, 3), 0, 256).astype(jnp.uint8)
    two = augment.build_augment(
        augment.byol_views(), output_size=16, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    local = dict(augment.VIEW_DEFAULTS, crop_scale=(0.05, 0.4), blur_prob=0.5)
    multi = augment.build_augment(
        [*augment.byol_views(), local, local, local],
        output_size=[16, 16, 8, 8, 8],
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    rng = jax.random.PRNGKey(7)
    a = jax.jit(two)(rng, images)
    b = jax.jit(multi)(rng, images)
    assert [v.shape for v in b] == [(4, 16, 16, 3)] * 2 + [(4, 8, 8, 3)] * 3
    for x, y in zip(a, b[:2], strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The local views are their own draws: not copies of one another.
    assert not np.array_equal(np.asarray(b[2]), np.asarray(b[3]))
    with pytest.raises(ValueError, match="one per view"):
        augment.build_augment(augment.byol_views(), output_size=[16], mean=(0.5,) * 3, std=(1,) * 3)


def test_local_views_need_crops_on_device():
    c = config_schema.load_config(f"{REPO}/configs/dino.py:digits")
    c.data.crop_in_loader = True
    with pytest.raises(ValueError, match="augment.num_local_views"):
        config_schema.validate(c, num_devices=1)


# ----------------------------------------------------------------------------------------------
# The train step.
# ----------------------------------------------------------------------------------------------
def test_dino_step_updates_teacher_center_and_freezes_the_last_layer():
    import test_train  # the contract test's config: its compiled step, from the cache

    config = test_train.small_config("dino")
    k = config.heads.projector_dim
    # BATCH examples / BATCH = 1 step per epoch: the last layer is frozen for step 0 only.
    comps, state, step = test_train.build(config)
    assert comps.steps_per_epoch == 1 and config.optimizer.freeze[0][1] == 1.0
    assert isinstance(comps.target_policy, methods.EMA)
    assert comps.target_policy.num_views == 2
    assert set(state.method_state) == {"target_params", "target_batch_stats", "center"}
    np.testing.assert_array_equal(state.method_state["center"], np.zeros(k))
    rng = np.random.default_rng(0)
    n = config.global_batch
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
    }
    # Compiled, not run op by op: eager dispatch compiles every primitive on its own.
    views = jax.jit(comps.augment_fn)(jax.random.fold_in(state.rng, 0), batch["image"])
    assert [v.shape[1] for v in views] == [16, 16, 8, 8]

    @jax.jit
    def teacher_projection(method_state, v):
        variables = {
            "params": method_state["target_params"],
            "batch_stats": method_state["target_batch_stats"],
        }
        out, _ = comps.target_policy.net.apply(variables, v, train=True, mutable=["batch_stats"])
        return out["projection"]

    # The teacher's outputs of this step, from the state before it.
    teacher = [teacher_projection(state.method_state, v) for v in views[:2]]
    last0 = np.asarray(state.params["projector"]["last_layer"]["kernel"])
    dense0 = np.asarray(state.params["projector"]["dense_0"]["kernel"])
    s1, m1 = step(state, batch)
    np.testing.assert_allclose(
        np.asarray(s1.method_state["center"]),
        np_center(np.zeros(k), [np.float64(t) for t in teacher], 0.9),
        rtol=1e-4,
        atol=1e-6,
    )
    assert float(m1["tau"]) == pytest.approx(config.tau_base)
    np.testing.assert_array_equal(s1.params["projector"]["last_layer"]["kernel"], last0)
    assert not np.array_equal(s1.params["projector"]["dense_0"]["kernel"], dense0)
    s2, m2 = step(s1, batch)
    assert not np.array_equal(s2.params["projector"]["last_layer"]["kernel"], last0)
    assert np.isfinite(float(m2["loss"]))


# ----------------------------------------------------------------------------------------------
# The goal: the digits job trains and beats its initialisation.
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_digits_job_beats_its_initialisation(tmp_path):
    config = config_schema.load_config(f"{REPO}/configs/dino.py:digits")
    config.data.data_dir = str(tmp_path / "data")
    out = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(out["loss"])
    assert out["knn_top1"] > out["knn_top1_init"], out


def test_vit_interpolates_its_position_embedding_for_local_crops():
    from ssljax.models import create_backbone
    from ssljax.models.vit import _resize_pos_embed

    module = create_backbone("vit_tiny_4", depth=1, interpolate_pos_embed=True)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
    assert variables["params"]["pos_embed"].shape == (1, 65, 192)  # 8 x 8 patches + class
    local = module.apply(variables, jnp.ones((2, 16, 16, 3)), train=False)
    assert local.shape == (2, 192) and np.all(np.isfinite(np.asarray(local)))
    # A linear ramp over the grid stays a ramp (bicubic reproduces linear functions inside),
    # and the class entry is kept.
    ramp = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 8, 1), np.float32)
    embed = jnp.concatenate([jnp.full((1, 1, 1), 7.0), jnp.asarray(ramp.reshape(1, 64, 1))], 1)
    out = np.asarray(_resize_pos_embed(embed, (8, 8)))
    np.testing.assert_allclose(out, np.asarray(embed), atol=1e-5)
    out = np.asarray(_resize_pos_embed(embed, (4, 4)))
    assert out[0, 0, 0] == 7.0 and out.shape == (1, 17, 1)
    rows = out[0, 1:, 0].reshape(4, 4)
    np.testing.assert_allclose(rows, rows[:, :1] * np.ones((1, 4)), atol=1e-5)  # constant in x
    assert np.all(np.diff(rows[:, 0]) > 0)  # increasing in y
