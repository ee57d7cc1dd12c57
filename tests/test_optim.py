"""Tests of ssljax.optim against NumPy references written from the equations.

References: BYOL (Grill et al. 2020) sec. 3.2 for tau, LARS and the learning rate, with the
official deepmind-research/byol utils/{optimizers,schedules}.py; torch.optim.SGD's update for
SGD; Loshchilov & Hutter 2019 (decay scaled by the rate, as in PyTorch) for AdamW.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssljax import optim

# ----------------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------------


def np_lr(k, *, base_lr, batch, total, warmup, final=0.0):
    """Closed form of the warmup-cosine schedule (BYOL's learning_schedule, final value f)."""
    peak = base_lr * batch / 256.0
    if k < warmup:
        return peak * k / warmup
    t = min(k - warmup, total - warmup) / (total - warmup)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def np_tau(k, tau_base, total):
    """Grill et al. 2020, sec. 3.2."""
    k = min(k, total)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * k / total) + 1.0) / 2.0


def flat(tree):
    """{path: float64 array} of a pytree."""
    return {
        "/".join(str(k.key) for k in path): np.asarray(leaf, np.float64)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def is_excluded(path):
    return path.endswith("bias") or path.endswith("scale")


def np_lars_preconditioned(p, g, *, wd, eta, excluded):
    """BYOL's LARS direction before momentum: weight decay then the trust ratio."""
    if excluded:
        return g
    g = g + wd * p
    p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
    ratio = eta * p_norm / g_norm if p_norm > 0 and g_norm > 0 else 1.0
    return ratio * g


def np_run_lars(params, grads_seq, lrs, *, wd, m, eta, order, nesterov=False):
    """Runs LARS in NumPy; order 'byol' (momentum, then lr) or 'optax' (lr, then momentum).

    Returns the list of per-step update dicts and the final params.
    """
    p = dict(params)
    v = {k: np.zeros_like(x) for k, x in p.items()}
    updates_seq = []
    for grads, lr in zip(grads_seq, lrs, strict=True):
        updates = {}
        for k in p:
            d = np_lars_preconditioned(p[k], grads[k], wd=wd, eta=eta, excluded=is_excluded(k))
            if order == "byol":
                v[k] = m * v[k] + d
                updates[k] = -lr * (d + m * v[k] if nesterov else v[k])
            else:
                v[k] = m * v[k] - lr * d
                updates[k] = v[k]
        p = {k: p[k] + updates[k] for k in p}
        updates_seq.append(updates)
    return updates_seq, p


def run_tx(tx, params, grads_seq):
    """Applies tx to params for each gradient tree; returns flat updates per step, final params."""
    state = tx.init(params)
    update_fn = jax.jit(tx.update)
    updates_seq = []
    for grads in grads_seq:
        updates, state = update_fn(grads, state, params)
        params = optax.apply_updates(params, updates)
        updates_seq.append(flat(updates))
    return updates_seq, flat(params)


def small_params(seed=0):
    """A tree with conv/dense kernels, a Dense bias, BatchNorm scale+bias, a zero kernel."""
    rng = np.random.default_rng(seed)
    f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    return {
        "conv": {"kernel": f32(3, 3, 2, 4)},
        "bn": {"scale": 1.0 + 0.1 * f32(4), "bias": 0.1 * f32(4)},
        "dense": {"kernel": f32(4, 5), "bias": 0.1 * f32(5)},
        # Zero-initialised (like a last-layer init): the trust ratio must fall back to 1.
        "head": {"kernel": jnp.zeros((5, 2), jnp.float32)},
    }


def random_grads(params, n, seed=1):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        for _ in range(n)
    ]


def decay_mask(params):
    return jax.tree.map(lambda m: not m, optim.path_mask(params, (r"bias$", r"scale$")))


def assert_trees_close(actual, expected, rtol=2e-5, atol=1e-7):
    assert actual.keys() == expected.keys()
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=k)


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def test_tau_schedule_endpoints_and_closed_form():
    tau_base, total = 0.996, 1000
    sched = optim.byol_tau_schedule(tau_base, total)
    assert float(sched(0)) == pytest.approx(tau_base, abs=1e-7)
    assert float(sched(total)) == 1.0
    assert float(sched(total + 50)) == 1.0  # held at 1 after the end
    for k in (1, 137, 500, 501, 999):
        assert float(sched(k)) == pytest.approx(np_tau(k, tau_base, total), abs=1e-7), k
    # Halfway the remaining gap is exactly halved.
    assert float(sched(500)) == pytest.approx(1 - (1 - tau_base) / 2, abs=1e-7)
    taus = np.asarray(jax.vmap(sched)(jnp.arange(total + 1)))
    assert np.all(np.diff(taus) >= -1e-7)


def test_lr_schedule_closed_form_and_peak():
    kw = dict(base_lr=0.2, global_batch=4096, total_steps=100, warmup_steps=10, final_lr=0.01)
    sched = optim.warmup_cosine_lr(**kw)
    ref = lambda k: np_lr(  # noqa: E731
        k, base_lr=0.2, batch=4096, total=100, warmup=10, final=0.01
    )
    peak = 0.2 * 4096 / 256
    for k in (0, 1, 5, 9, 10, 11, 37, 55, 99, 100, 130):
        assert float(sched(k)) == pytest.approx(ref(k), rel=1e-6, abs=1e-7), k
    lrs = np.asarray(jax.vmap(sched)(jnp.arange(101)))
    assert int(np.argmax(lrs)) == 10
    assert lrs[10] == pytest.approx(peak, rel=1e-6)
    assert lrs[0] == 0.0
    assert lrs[100] == pytest.approx(0.01, rel=1e-5)
    # Halfway through the decay the rate is the mean of peak and final.
    assert lrs[55] == pytest.approx((peak + 0.01) / 2, rel=1e-6)


def test_lr_schedule_without_warmup_starts_at_peak():
    sched = optim.warmup_cosine_lr(0.05, global_batch=512, total_steps=4, warmup_steps=0)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(sched)(jnp.arange(5))),
        [np_lr(k, base_lr=0.05, batch=512, total=4, warmup=0) for k in range(5)],
        rtol=1e-6,
        atol=1e-8,
    )
    assert float(sched(0)) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------
# LARS
# ----------------------------------------------------------------------------------------------

LARS_KW = dict(wd=1.5e-6 * 1e4, m=0.9, eta=1e-3)  # wd enlarged so its effect is visible


@pytest.mark.parametrize("num_steps", [1, 3])
@pytest.mark.parametrize("via_config", [False, True])
def test_byol_lars_matches_numpy_reference(num_steps, via_config):
    params = small_params()
    grads_seq = random_grads(params, num_steps)
    # A changing rate: cosine without warmup over the steps taken (every lr > 0 but the last).
    kw = dict(global_batch=4096, total_steps=num_steps + 1, warmup_steps=0)
    if via_config:
        cfg = dict(name="lars", base_lr=0.2, weight_decay=LARS_KW["wd"], momentum=0.9, eta=1e-3)
        tx, sched = optim.build_optimizer(cfg, params, **kw)
    else:
        sched = optim.warmup_cosine_lr(0.2, **kw)
        mask = decay_mask(params)
        tx = optim.byol_lars(
            sched,
            weight_decay=LARS_KW["wd"],
            momentum=0.9,
            eta=1e-3,
            weight_decay_mask=mask,
            trust_ratio_mask=mask,
        )
    lrs = [np_lr(k, base_lr=0.2, batch=4096, total=num_steps + 1, warmup=0) for k in range(3)]
    assert len(set(lrs[:num_steps])) == num_steps  # the rate really changes
    updates, final = run_tx(tx, params, grads_seq)
    ref_updates, ref_final = np_run_lars(
        flat(params), [flat(g) for g in grads_seq], lrs[:num_steps], order="byol", **LARS_KW
    )
    for got, want in zip(updates, ref_updates, strict=True):
        assert_trees_close(got, want)
    assert_trees_close(final, ref_final)
    # The excluded leaves moved by plain momentum SGD, the others by eta-scale steps.
    first = updates[0]
    np.testing.assert_allclose(
        first["bn/scale"], -lrs[0] * flat(grads_seq[0])["bn/scale"], rtol=1e-6
    )
    assert np.linalg.norm(first["conv/kernel"]) == pytest.approx(
        lrs[0] * 1e-3 * np.linalg.norm(flat(params)["conv/kernel"]), rel=1e-5
    )


def test_byol_lars_nesterov_matches_numpy_reference():
    params = small_params()
    grads_seq = random_grads(params, 3)
    lrs = [3.0, 2.0, 0.5]
    table = jnp.asarray(lrs, jnp.float32)
    mask = decay_mask(params)
    tx = optim.byol_lars(
        lambda k: table[k],
        weight_decay=LARS_KW["wd"],
        weight_decay_mask=mask,
        trust_ratio_mask=mask,
        nesterov=True,
    )
    updates, final = run_tx(tx, params, grads_seq)
    ref_updates, ref_final = np_run_lars(
        flat(params), [flat(g) for g in grads_seq], lrs, order="byol", nesterov=True, **LARS_KW
    )
    for got, want in zip(updates, ref_updates, strict=True):
        assert_trees_close(got, want)
    assert_trees_close(final, ref_final)


def _optax_lars(learning_rate, mask):
    return optax.lars(
        learning_rate,
        weight_decay=LARS_KW["wd"],
        weight_decay_mask=mask,
        trust_coefficient=LARS_KW["eta"],
        eps=0.0,
        trust_ratio_mask=mask,
        momentum=LARS_KW["m"],
    )


def _byol_lars(learning_rate, mask):
    return optim.byol_lars(
        learning_rate,
        weight_decay=LARS_KW["wd"],
        momentum=LARS_KW["m"],
        eta=LARS_KW["eta"],
        weight_decay_mask=mask,
        trust_ratio_mask=mask,
    )


def test_byol_and_optax_lars_agree_at_constant_lr():
    params = small_params()
    grads_seq = random_grads(params, 3)
    mask = decay_mask(params)
    byol, byol_final = run_tx(_byol_lars(2.0, mask), params, grads_seq)
    ox, ox_final = run_tx(_optax_lars(2.0, mask), params, grads_seq)
    for a, b in zip(byol, ox, strict=True):
        assert_trees_close(a, b, rtol=1e-6)
    assert_trees_close(byol_final, ox_final, rtol=1e-6)


def test_byol_and_optax_lars_part_while_lr_changes():
    """During warmup BYOL re-weights past gradients by the current rate; optax does not.

    With lr_0 = 0 (the first warmup step) both first updates are 0, so both see the same
    params at step 1, where u_byol - u_optax = -m * (lr_1 - lr_0) * d_0 exactly, d_0 being
    the weight-decayed, trust-ratio-scaled gradient of step 0.
    """
    params = small_params()
    grads_seq = random_grads(params, 3)
    kw = dict(global_batch=4096, total_steps=10, warmup_steps=4)
    sched = optim.warmup_cosine_lr(0.2, **kw)
    lrs = [np_lr(k, base_lr=0.2, batch=4096, total=10, warmup=4) for k in range(3)]
    assert lrs == [0.0, 0.8, 1.6]
    mask = decay_mask(params)
    byol, _ = run_tx(_byol_lars(sched, mask), params, grads_seq)
    ox, _ = run_tx(_optax_lars(sched, mask), params, grads_seq)
    # Each equals its own NumPy reference...
    np_params, np_grads = flat(params), [flat(g) for g in grads_seq]
    for got, order in ((byol, "byol"), (ox, "optax")):
        ref, _ = np_run_lars(np_params, np_grads, lrs, order=order, **LARS_KW)
        for a, b in zip(got, ref, strict=True):
            assert_trees_close(a, b)
    # ... they agree on the first step and part by exactly -m (lr_1 - lr_0) d_0 on the second.
    assert_trees_close(byol[0], ox[0], rtol=0, atol=0)
    for k in np_params:
        d0 = np_lars_preconditioned(
            np_params[k], np_grads[0][k], wd=LARS_KW["wd"], eta=1e-3, excluded=is_excluded(k)
        )
        expected = -LARS_KW["m"] * (lrs[1] - lrs[0]) * d0
        np.testing.assert_allclose(byol[1][k] - ox[1][k], expected, rtol=1e-4, atol=1e-9)
        assert np.linalg.norm(expected) > 1e-3 * np.linalg.norm(byol[1][k]), k


# ----------------------------------------------------------------------------------------------
# SGD and AdamW
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_ordering(nesterov):
    params = small_params()
    grads_seq = random_grads(params, 3)
    lrs, wd, m = [0.3, 0.2, 0.05], 1e-2, 0.9
    table = jnp.asarray(lrs, jnp.float32)
    tx = optim.sgd(
        lambda k: table[k],
        weight_decay=wd,
        momentum=m,
        nesterov=nesterov,
        weight_decay_mask=decay_mask(params),
    )
    updates, final = run_tx(tx, params, grads_seq)
    # torch.optim.SGD: d = g + wd p; buf = m buf + d; step = buf (or d + m buf); p -= lr step.
    p = flat(params)
    buf = {k: np.zeros_like(x) for k, x in p.items()}
    for step, (grads, lr) in enumerate(zip(grads_seq, lrs, strict=True)):
        g = flat(grads)
        for k in p:
            d = g[k] if is_excluded(k) else g[k] + wd * p[k]
            buf[k] = m * buf[k] + d
            u = -lr * (d + m * buf[k] if nesterov else buf[k])
            np.testing.assert_allclose(updates[step][k], u, rtol=2e-5, atol=1e-7, err_msg=k)
            p[k] = p[k] + u
    assert_trees_close(final, p)


def test_adamw_matches_numpy_reference_with_mask():
    params = small_params()
    grads_seq = random_grads(params, 2)
    cfg = dict(name="adamw", base_lr=1e-3, weight_decay=0.05, b1=0.9, b2=0.95)
    tx, sched = optim.build_optimizer(cfg, params, global_batch=256, total_steps=4, warmup_steps=1)
    updates, _ = run_tx(tx, params, grads_seq)
    p = flat(params)
    mu = {k: np.zeros_like(x) for k, x in p.items()}
    nu = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        lr = np_lr(t - 1, base_lr=1e-3, batch=256, total=4, warmup=1)
        g = flat(grads)
        for k in p:
            mu[k] = 0.9 * mu[k] + 0.1 * g[k]
            nu[k] = 0.95 * nu[k] + 0.05 * g[k] ** 2
            direction = (mu[k] / (1 - 0.9**t)) / (np.sqrt(nu[k] / (1 - 0.95**t)) + 1e-8)
            if not is_excluded(k):
                direction = direction + 0.05 * p[k]
            u = -lr * direction
            np.testing.assert_allclose(updates[t - 1][k], u, rtol=2e-5, atol=1e-9, err_msg=k)
            p[k] = p[k] + u


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


class _Backbone(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), name="conv_init")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn_init")(x)
        x = nn.relu(x)
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, use_scale=False, name="bn1")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.LayerNorm(name="ln")(x)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = _Backbone(name="backbone")(x, train)
        x = nn.Dense(8, name="dense_0")(x)
        x = nn.Dense(3, use_bias=False, name="dense_1")(x)
        return x


@pytest.fixture(scope="module")
def net_params():
    variables = _Net().init(jax.random.key(0), jnp.zeros((2, 6, 6, 3)), train=False)
    return variables["params"]


def test_default_exclusions_on_conv_bn_layernorm_dense_model(net_params):
    excluded = set(optim.matching_paths(net_params, optim.DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY))
    assert excluded == {
        "backbone/conv_init/bias",
        "backbone/bn_init/scale",
        "backbone/bn_init/bias",
        "backbone/bn1/bias",
        "backbone/ln/scale",
        "backbone/ln/bias",
        "dense_0/bias",
    }
    decayed = set(optim.param_paths(net_params)) - excluded
    assert decayed == {
        "backbone/conv_init/kernel",
        "backbone/conv1/kernel",
        "dense_0/kernel",
        "dense_1/kernel",
    }
    # path_mask agrees leaf by leaf with the listing.
    mask = optim.path_mask(net_params, optim.DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY)
    assert jax.tree.structure(mask) == jax.tree.structure(net_params)
    flags = dict(zip(optim.param_paths(net_params), jax.tree.leaves(mask), strict=True))
    assert {p for p, f in flags.items() if f} == excluded


def test_build_optimizer_excludes_exactly_those_from_decay_and_trust_ratio(net_params):
    """With zero gradients LARS moves only the weight-decayed leaves (by the trust ratio)."""
    cfg = dict(name="lars", base_lr=0.2, weight_decay=1e-2, momentum=0.9)
    tx, _ = optim.build_optimizer(cfg, net_params, global_batch=256, total_steps=3, warmup_steps=0)
    zeros = jax.tree.map(jnp.zeros_like, net_params)
    updates, _ = tx.update(zeros, tx.init(net_params), net_params)
    p, u = flat(net_params), flat(updates)
    moved = {k for k, x in u.items() if np.any(x != 0)}
    assert moved == {
        "backbone/conv_init/kernel",
        "backbone/conv1/kernel",
        "dense_0/kernel",
        "dense_1/kernel",
    }
    # d = wd p, trust ratio eta ||p|| / ||wd p|| = eta / wd: the update is -lr eta p / ||p|| ||p||.
    for k in moved:
        np.testing.assert_allclose(u[k], -0.2 * 1e-3 * p[k], rtol=1e-5, err_msg=k)


def test_path_mask_patterns(net_params):
    assert optim.matching_paths(net_params, r"^backbone/bn") == [
        "backbone/bn1/bias",
        "backbone/bn_init/bias",
        "backbone/bn_init/scale",
    ]
    # A lone string is one pattern, not a sequence of one-character patterns.
    mask = optim.path_mask(net_params, "ln/scale$")
    assert sum(jax.tree.leaves(mask)) == 1
    assert not any(jax.tree.leaves(optim.path_mask(net_params, ())))


# ----------------------------------------------------------------------------------------------
# Per-group learning rates
# ----------------------------------------------------------------------------------------------


def _two_group_params():
    rng = np.random.default_rng(3)
    f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    return {
        "backbone": {"dense": {"kernel": f32(3, 4), "bias": f32(4)}},
        "projector": {"bn": {"scale": f32(4), "bias": f32(4)}},
        "predictor": {"dense": {"kernel": f32(4, 4), "bias": f32(4)}},
    }


def test_fixed_lr_group_keeps_peak_while_others_follow_cosine():
    params = _two_group_params()
    steps = 6
    cfg = ml_collections.ConfigDict(
        dict(name="sgd", base_lr=0.05, momentum=0.0, weight_decay=0.0, fixed_lr=("^predictor/",))
    )
    tx, sched = optim.build_optimizer(
        cfg, params, global_batch=512, total_steps=steps, warmup_steps=2
    )
    grads_seq = random_grads(params, steps, seed=4)
    updates, _ = run_tx(tx, params, grads_seq)
    for k in range(steps):
        g = flat(grads_seq[k])
        want = np_lr(k, base_lr=0.05, batch=512, total=steps, warmup=2)
        assert float(sched(k)) == pytest.approx(want, rel=1e-6, abs=1e-8)
        for path, u in updates[k].items():
            effective_lr = -u / g[path]
            expected = 0.1 if path.startswith("predictor/") else want
            np.testing.assert_allclose(effective_lr, expected, rtol=1e-5, atol=1e-8, err_msg=path)


def test_fixed_lr_with_momentum_and_masked_decay_matches_reference():
    """multi_transform's two groups each keep their own momentum and weight-decay mask."""
    params = _two_group_params()
    cfg = dict(name="sgd", base_lr=0.05, momentum=0.9, weight_decay=1e-2, fixed_lr=("^predictor/",))
    tx, _ = optim.build_optimizer(cfg, params, global_batch=512, total_steps=4, warmup_steps=1)
    grads_seq = random_grads(params, 3, seed=5)
    updates, final = run_tx(tx, params, grads_seq)
    p = flat(params)
    buf = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g = flat(grads)
        for k in p:
            lr = (
                0.1
                if k.startswith("predictor/")
                else np_lr(step, base_lr=0.05, batch=512, total=4, warmup=1)
            )
            d = g[k] if is_excluded(k) else g[k] + 1e-2 * p[k]
            buf[k] = 0.9 * buf[k] + d
            np.testing.assert_allclose(updates[step][k], -lr * buf[k], rtol=2e-5, atol=1e-8)
            p[k] = p[k] - lr * buf[k]
    assert_trees_close(final, p)


# ----------------------------------------------------------------------------------------------
# Target update
# ----------------------------------------------------------------------------------------------


def test_update_target_is_tau_weighted_average():
    online, target = small_params(seed=10), small_params(seed=11)
    tau = 0.99
    new = flat(optim.update_target(online, target, tau))
    on, tg = flat(online), flat(target)
    for k in on:
        np.testing.assert_allclose(new[k], tau * tg[k] + (1 - tau) * on[k], rtol=1e-6, atol=1e-7)
    # Under jit with tau from the schedule (a traced scalar); the endpoints are exact.
    sched = optim.byol_tau_schedule(0.5, 10)
    step_fn = jax.jit(lambda o, t, k: optim.update_target(o, t, sched(k)))
    assert_trees_close(flat(step_fn(online, target, 0)), {k: 0.5 * (tg[k] + on[k]) for k in on})
    assert_trees_close(flat(step_fn(online, target, 10)), tg, rtol=0, atol=0)
    assert_trees_close(flat(optim.update_target(online, target, 0.0)), on, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

_GOOD = dict(name="lars", base_lr=0.2, weight_decay=1e-6)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(name="adam"), r"Unknown optimizer name 'adam'.*\['adamw', 'lars', 'sgd'\]"),
        (dict(base_lr=-0.1), "base_lr"),
        (dict(weight_decay=-1e-6), "weight_decay"),
        (dict(final_lr=-1.0), "final_lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(eta=0.0), "eta"),
        (dict(weight_decay_rate=1e-6), r"unknown field\(s\) \['weight_decay_rate'\]"),
        (dict(base_lr=None), r"missing required field\(s\) \['base_lr'\]"),
        (
            dict(exclude_from_weight_decay=(r"bias$", r"bais$")),
            r"(?s)exclude_from_weight_decay: pattern\(s\) \['bais\$'\].*backbone/conv_init/kernel",
        ),
        (dict(fixed_lr=("^predictor/",)), r"fixed_lr: pattern\(s\) \['\^predictor/'\]"),
        (dict(fixed_lr=("(",)), "fixed_lr holds an invalid regex"),
    ],
)
def test_build_optimizer_rejects_bad_config(net_params, overrides, match):
    cfg = {**_GOOD, **overrides}
    with pytest.raises(ValueError, match=match):
        optim.build_optimizer(cfg, net_params, global_batch=256, total_steps=10, warmup_steps=1)


def test_error_message_abbreviates_long_path_lists():
    params = {f"layer_{i:02d}": {"kernel": jnp.zeros(1)} for i in range(40)}
    with pytest.raises(ValueError, match=r"and 16 more") as info:
        optim.path_mask(params, ("bias$",), name="exclude_from_weight_decay")
    assert "layer_00/kernel" in str(info.value)
    assert "layer_39/kernel" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(warmup_steps=10), "warmup_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(total_steps=0), "total_steps"),
        (dict(global_batch=0), "global_batch"),
    ],
)
def test_lr_schedule_rejects_bad_steps(kwargs, match):
    full = {**dict(global_batch=256, total_steps=10, warmup_steps=1), **kwargs}
    with pytest.raises(ValueError, match=match):
        optim.warmup_cosine_lr(0.1, **full)


@pytest.mark.parametrize("tau_base", [-0.1, 1.5])
def test_tau_schedule_rejects_bad_tau(tau_base):
    with pytest.raises(ValueError, match="tau_base"):
        optim.byol_tau_schedule(tau_base, 100)


# ----------------------------------------------------------------------------------------------
# solo-learn's LARS (clip_lr) and per-group rates
# ----------------------------------------------------------------------------------------------


def np_solo_learn_lars_step(p, g, *, lr, wd, eta, clip, excluded, eps=1e-8):
    """solo-learn's LARS.step (solo/utils/lars.py) on one tensor, before momentum."""
    if excluded:  # exclude_bias_n_norm: neither weight decay nor adaptation
        return g
    p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
    if p_norm == 0 or g_norm == 0:
        return g
    ratio = eta * p_norm / (g_norm + p_norm * wd + eps)
    if clip:
        ratio = min(ratio / lr, 1.0) if lr > 0 else 1.0  # torch: x / 0.0 = inf, min(inf, 1) = 1
    return (g + wd * p) * ratio


def _solo_learn_case():
    """Params and gradients where clip_lr binds for some leaves and steps and not for others."""
    params = small_params()
    grads_seq = random_grads(params, 6, seed=7)
    # Tiny gradients on one kernel: its ratio eta*|p|/|g| ~ 2 exceeds the rate, so it is clipped.
    for g in grads_seq:
        g["dense"]["kernel"] = 0.01 * g["dense"]["kernel"]
    return params, grads_seq


@pytest.mark.parametrize("clip", [True, False])
def test_solo_learn_lars_matches_numpy_reference_over_changing_lr(clip):
    params, grads_seq = _solo_learn_case()
    wd, eta, m = 1e-2, 0.02, 0.9
    kw = dict(global_batch=256, total_steps=8, warmup_steps=3)
    cfg = dict(
        name="lars",
        base_lr=1.0,
        weight_decay=wd,
        momentum=m,
        eta=eta,
        lars_form="solo_learn",
        clip_lr=clip,
    )
    tx, _ = optim.build_optimizer(cfg, params, **kw)
    updates, final = run_tx(tx, params, grads_seq)

    lrs = [np_lr(k, base_lr=1.0, batch=256, total=8, warmup=3) for k in range(len(grads_seq))]
    assert lrs[0] == 0.0 and len(set(lrs)) == len(lrs)  # starts at 0, changes every step
    p = flat(params)
    buf = {k: np.zeros_like(x) for k, x in p.items()}
    clipped, unclipped = 0, 0
    for step, grads in enumerate(grads_seq):
        g = flat(grads)
        for k in p:
            d = np_solo_learn_lars_step(
                p[k], g[k], lr=lrs[step], wd=wd, eta=eta, clip=clip, excluded=is_excluded(k)
            )
            if not is_excluded(k) and np.linalg.norm(p[k]) > 0 and lrs[step] > 0:
                raw = (
                    eta * np.linalg.norm(p[k]) / (np.linalg.norm(g[k]) + wd * np.linalg.norm(p[k]))
                )
                clipped += raw / lrs[step] > 1
                unclipped += raw / lrs[step] < 1
            buf[k] = m * buf[k] + d
            np.testing.assert_allclose(
                updates[step][k], -lrs[step] * buf[k], rtol=2e-5, atol=1e-8, err_msg=f"{step} {k}"
            )
            p[k] = p[k] - lrs[step] * buf[k]
    assert clipped > 0 and unclipped > 0  # both regimes of the clip were exercised
    assert_trees_close(final, p)
    # The zero-initialised kernel takes plain momentum SGD steps (no decay, no ratio).
    np.testing.assert_allclose(
        updates[1]["head/kernel"],
        -lrs[1] * (m * flat(grads_seq[0])["head/kernel"] + flat(grads_seq[1])["head/kernel"]),
        rtol=1e-5,
    )


def test_solo_learn_lars_clip_caps_the_step_at_the_global_rate():
    """With clip_lr the first step of an adapted tensor is min(eta|p|/(|g|+wd|p|), lr) long."""
    params, grads_seq = _solo_learn_case()
    lr, wd, eta = 0.5, 1e-3, 0.02
    tx = optim.solo_learn_lars(
        lr, weight_decay=wd, momentum=0.9, eta=eta, clip_lr=True, adapt_mask=decay_mask(params)
    )
    updates, _ = run_tx(tx, params, grads_seq[:1])
    p, g = flat(params), flat(grads_seq[0])
    for k in ("conv/kernel", "dense/kernel"):
        pn, gn = np.linalg.norm(p[k]), np.linalg.norm(g[k])
        step = min(eta * pn / (gn + wd * pn + 1e-8), lr)
        want = step * np.linalg.norm(g[k] + wd * p[k])
        assert np.linalg.norm(updates[0][k]) == pytest.approx(want, rel=1e-5), k
    # dense/kernel is the clipped one: its step equals the global rate times |g + wd p|.
    assert eta * np.linalg.norm(p["dense/kernel"]) / np.linalg.norm(g["dense/kernel"]) > lr


def test_lr_multipliers_scale_the_whole_schedule_of_their_group():
    """Barlow Twins' main.py: biases and BN at lr_biases, weights at lr_weights, one schedule."""
    params = small_params()
    steps, wd, m, eta = 5, 1e-2, 0.9, 1e-3
    mult = 0.0048 / 0.2
    cfg = dict(
        name="lars",
        base_lr=0.2,
        weight_decay=wd,
        momentum=m,
        eta=eta,
        final_lr=0.2 * 2048 / 256 * 1e-3,
        lr_multipliers=((r"(bias|scale)$", mult),),
    )
    tx, sched = optim.build_optimizer(
        cfg, params, global_batch=2048, total_steps=steps, warmup_steps=2
    )
    grads_seq = random_grads(params, steps, seed=8)
    updates, final = run_tx(tx, params, grads_seq)
    p = flat(params)
    buf = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        g = flat(grads)
        # main.py adjust_learning_rate: lr = base * q + end * (1 - q), end = base * 0.001.
        base = np_lr(step, base_lr=1.0, batch=2048, total=steps, warmup=2, final=2048 / 256e3)
        for k in p:
            lr = base * (0.0048 if is_excluded(k) else 0.2)
            d = np_lars_preconditioned(p[k], g[k], wd=wd, eta=eta, excluded=is_excluded(k))
            buf[k] = m * buf[k] + d
            np.testing.assert_allclose(
                updates[step][k], -lr * buf[k], rtol=2e-5, atol=1e-9, err_msg=f"{step} {k}"
            )
            p[k] = p[k] - lr * buf[k]
        # The logged schedule is the weights' one.
        assert float(sched(step)) == pytest.approx(base * 0.2, rel=1e-5, abs=1e-9)
    assert_trees_close(final, p)


def test_lr_multiplier_combines_with_fixed_lr_and_first_match_wins():
    params = _two_group_params()
    cfg = dict(
        name="sgd",
        base_lr=0.05,
        momentum=0.0,
        fixed_lr=("^predictor/",),
        lr_multipliers=((r"^predictor/dense/bias$", 0.5), (r"bias$", 0.1)),
    )
    tx, _ = optim.build_optimizer(cfg, params, global_batch=512, total_steps=4, warmup_steps=0)
    grads_seq = random_grads(params, 2, seed=9)
    updates, _ = run_tx(tx, params, grads_seq)
    for step in range(2):
        g = flat(grads_seq[step])
        sched = np_lr(step, base_lr=0.05, batch=512, total=4, warmup=0)
        expected = {
            "backbone/dense/kernel": sched,
            "backbone/dense/bias": 0.1 * sched,
            "projector/bn/scale": sched,
            "projector/bn/bias": 0.1 * sched,
            "predictor/dense/kernel": 0.1,
            "predictor/dense/bias": 0.5 * 0.1,
        }
        for path, want in expected.items():
            np.testing.assert_allclose(
                -updates[step][path] / g[path], want, rtol=1e-5, err_msg=path
            )


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(clip_lr=True), "clip_lr is solo-learn's LARS option"),
        (dict(name="sgd", clip_lr=True, lars_form="solo_learn"), "clip_lr is solo-learn's"),
        (dict(lars_form="lars"), "lars_form must be one of"),
        (dict(lr_multipliers=(r"bias$", 0.5)), r"\(regex, multiplier\) pairs"),
        (dict(lr_multipliers=((r"bias$", -0.5),)), "multiplier"),
        (dict(lr_multipliers=((r"^nothing/", 0.5),)), r"lr_multipliers\[0\]: pattern"),
    ],
)
def test_build_optimizer_rejects_bad_lars_and_group_fields(net_params, overrides, match):
    cfg = {**_GOOD, **overrides}
    with pytest.raises(ValueError, match=match):
        optim.build_optimizer(cfg, net_params, global_batch=256, total_steps=10, warmup_steps=1)


def test_a_frozen_kernel_baseline_holds_the_kernels_for_the_whole_run():
    """``freeze`` with more epochs than an int32 step count holds (1e9 epochs of 781 steps)."""
    params = {
        "backbone": {"conv": {"kernel": jnp.ones((2, 2))}, "bn": {"scale": jnp.ones(2)}},
        "head": {"kernel": jnp.ones(2)},
    }
    cfg = {
        "name": "lars",
        "base_lr": 1.0,
        "weight_decay": 1e-4,
        "exclude_from_weight_decay": ("scale$",),
        "freeze": ((r"^backbone/.*kernel$", 1e9),),
    }
    tx, _ = optim.build_optimizer(
        cfg, params, global_batch=256, total_steps=10, warmup_steps=1, steps_per_epoch=781
    )
    state, p = tx.init(params), params
    update = jax.jit(tx.update)
    for _ in range(3):
        u, state = update(jax.tree.map(jnp.ones_like, p), state, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_array_equal(p["backbone"]["conv"]["kernel"], 1.0)
    assert np.all(np.asarray(p["backbone"]["bn"]["scale"]) < 0.5)
    assert np.all(np.asarray(p["head"]["kernel"]) < 1.0)
