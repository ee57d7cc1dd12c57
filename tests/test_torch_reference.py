"""The PyTorch reference (benchmarks/torch_reference.py) computes ssljax's train step.

From the same initial weights (ssljax's, converted with ``state_dict_from_ssljax``) and the same
fixed batch of two pre-normalised views (no augmentation on either side), two steps of
``ssljax.train.make_train_step`` and two steps of the reference's ``Trainer`` must give the same
losses, online parameters, BatchNorm statistics and (BYOL) target parameters, for each method.

The settings are chosen so that every mechanism leaves a visible trace in two steps: no warm-up
and a 4-step cosine, so the rate changes between the steps (the momentum/rate ordering of LARS
and SGD and the fixed predictor rate of SimSiam show); updates of about 1% of each tensor
(large rates, LARS eta 0.02); tau_base 0.5 for BYOL, so the target moves by half the update.

Tolerances. ssljax computes in float32; the reference runs here in float64 from the same
(float32) initial weights, so the comparison measures ssljax's float32 rounding against an exact
computation of the same algorithm, and nothing of PyTorch's own float32 rounding: on this CPU,
PyTorch's float32 convolution gradients at 32x32 deviate from float64 by up to ~4e-3 relative
after one step and ~5e-2 after two (measured; JAX's by ~5e-6 and ~2e-3), so a float32 PyTorch
side would need tolerances that hide real bugs. Measured worst cases and the bounds:

* losses: ~1e-7 relative; bound 1e-5;
* each tensor's two-step update ``d = p_2 - p_0``: ``||d_torch - d_jax|| / ||d_jax||`` is ~5e-6
  for BYOL and SimSiam with one XLA CPU device, up to 8e-4 under the test suite's 8 simulated
  devices (other reduction orders), and 3.1e-3 for the recipes branch's VICReg (no zero-init
  residual, torch head init, clipped solo-learn LARS), whose second step is ill-conditioned at
  this size; bound 1e-2. Updates rather than parameters keep the test scale-free: a parameter
  that moves 1% would hide a 10% error of its update in a 1e-3 relative parameter tolerance,
  and the update is what an implementation bug changes. Dense biases followed by a BatchNorm
  have an exactly zero gradient; their updates (rounding noise) must stay below 1e-5;
* BatchNorm running statistics likewise, after PyTorch's convention is undone: PyTorch
  averages the unbiased batch variance (n / (n - 1) times Flax's biased one), so with w0 =
  0.9^updates the weight left on the initial variance 1, ``var_torch - w0 = (var_flax - w0) *
  n / (n - 1)`` exactly, n being the elements per channel of that layer's input.

``test_deviations_are_caught`` shows that the bound is tight enough: planted bugs move the worst
tensor by 8e-2 (optax's LARS ordering, the rate inside the momentum), 1e-1 (SimSiam's predictor
on the cosine schedule), 0.66 (the target EMA taken before the optimizer step) and 2.0 (PyTorch
BatchNorm given Flax's momentum 0.9); each must exceed 5x the bound.
"""

import contextlib
import copy
import dataclasses
import functools
import math
import pathlib
import types

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ssljax import augment, config_schema, methods, sharding, train, tree_paths  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
# benchmarks/ is on pytest's pythonpath (pyproject.toml).
import torch_reference  # noqa: E402
import torch_yardstick  # noqa: E402

BATCH = 16
SIZE = 32
STEPS = 2
LOSS_RTOL = 1e-5
UPDATE_RTOL = 1e-2
NOISE_FLOOR = 1e-5
# Every registered method the reference has a loss for (configs/<name>.py each).
METHODS = tuple(m for m in sorted(methods.METHODS) if m in torch_yardstick.TORCH_LOSS_METHODS)


def small_config(method: str, overrides: tuple = ()):
    """The method's ``cifar10_cpu`` recipe on a tiny ResNet and heads, for a 2-step test.

    ``overrides``: ``(dotted key, value)`` pairs applied last.
    """
    c = config_schema.load_config(f"{REPO / 'configs' / method}.py:cifar10_cpu")
    c.model.backbone = "resnet_tiny"  # one block per stage, width 0.25 (16 base channels)
    c.global_batch = BATCH
    c.num_steps = 4
    c.warmup_epochs = 0.0
    c.heads.projector_hidden = (64,) if method in ("byol", "simsiam") else (64, 64)
    # VICReg's and Barlow Twins' covariance and cross-correlation are rank-deficient when the
    # batch is smaller than the dimension, and their second-step gradients then so sensitive
    # that float32 rounding of the first update alone moves them by ~1%: keep d < batch.
    c.heads.projector_dim = 32 if method in ("byol", "simsiam") else 8
    c.heads.predictor_hidden = (16,) if method == "simsiam" else (64,)
    c.heads.predictor_dim = 32
    c.optimizer.base_lr = 8.0  # peak 0.5 at batch 16
    if c.optimizer.name == "lars":
        c.optimizer.eta = 0.02
    c.tau_base = 0.5
    for key, value in overrides:
        node, *parents, leaf = [c, *key.split(".")]
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def fake_info():
    return types.SimpleNamespace(
        name="fixed_views",
        num_classes=10,
        split_sizes={"train": 1000, "test": 100},
        image_shape=(SIZE, SIZE, 3),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=None,
    )


def fixed_batch():
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((BATCH, 2, SIZE, SIZE, 3), dtype=np.float32),
        "label": rng.integers(0, 10, (BATCH,), dtype=np.int32),
    }


def run_ssljax(method: str, overrides: tuple = ()) -> dict:
    """Initial variables and the variables and losses after each of STEPS steps."""
    config = small_config(method, overrides)
    comps = train.build_components(config, fake_info(), num_train_examples=1000)
    comps = dataclasses.replace(comps, augment_fn=lambda rng, images: (images[:, 0], images[:, 1]))
    state = train.init_state(comps, config, jax.random.PRNGKey(0))
    step = jax.jit(train.make_train_step(comps, config))

    def variables(s):
        return jax.device_get(
            {
                "params": s.params,
                "batch_stats": s.batch_stats,
                "target_params": s.method_state.get("target_params", {}),
                "target_batch_stats": s.method_state.get("target_batch_stats", {}),
            }
        )

    history, losses = [variables(state)], []
    batch = fixed_batch()
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        history.append(variables(state))
    return {
        "config": config,
        "total_steps": comps.total_steps,
        "warmup_steps": comps.warmup_steps,
        "history": history,
        "losses": losses,
    }


@pytest.fixture(scope="module")
def ssljax_runs():
    cache = {}

    def get(method, overrides=()):
        if (method, overrides) not in cache:
            cache[method, overrides] = run_ssljax(method, overrides)
        return cache[method, overrides]

    return get


def _load(module, params, batch_stats):
    state = torch_reference.state_dict_from_ssljax(params, batch_stats)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def run_torch(ref: dict, mutation: str | None = None, dtype=torch.float64):
    """STEPS reference steps from ssljax's initial variables; ``mutation`` plants a bug."""
    config = ref["config"]
    init = ref["history"][0]
    online, target, _ = torch_yardstick.build_torch_modules(config, 10)
    _load(online, init["params"], init["batch_stats"])
    online.to(dtype).train()
    if target is not None:
        _load(target, init["target_params"], init["target_batch_stats"])
        target.to(dtype).train()
    trainer = torch_reference.Trainer(
        config,
        online,
        target,
        total_steps=ref["total_steps"],
        warmup_steps=ref["warmup_steps"],
        autocast=contextlib.nullcontext,
    )
    if mutation == "bn_momentum_0.9":
        for m in [*online.modules(), *(target.modules() if target is not None else [])]:
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.9
    if mutation == "optax_lars_ordering":
        lars = trainer.optimizer.impl

        def optax_step(rates):  # v = m v + lr g; p -= v
            with torch.no_grad():
                for p, adapt, group, v in lars.entries:
                    g = lars.direction(p, p.grad, adapt, rates[group])
                    v.mul_(lars.momentum).add_(g, alpha=rates[group])
                    p.sub_(v)

        lars.step = optax_step
    if mutation == "scheduled_predictor":
        trainer.optimizer.groups = [(False, m) for _, m in trainer.optimizer.groups]
    views = [
        torch.from_numpy(fixed_batch()["image"][:, v]).permute(0, 3, 1, 2).to(dtype) for v in (0, 1)
    ]
    losses = []
    for k in range(STEPS):
        loss, _ = trainer.loss_and_grads(views)
        if mutation == "ema_before_update":
            trainer.ema_update(k)
            trainer.optimizer_step(k)
        else:
            trainer.optimizer_step(k)
            trainer.ema_update(k)
        losses.append(float(loss))
    return online, target, losses


def _elements_per_channel(net, view) -> dict[str, int]:
    """n of each BatchNorm's statistics: the elements per channel of its input."""
    net = copy.deepcopy(net).train()  # the forward updates the copy's statistics only
    counts, hooks = {}, []

    def count(module, inputs, name):
        counts.setdefault(name, inputs[0].numel() // inputs[0].shape[1])

    for name, m in net.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(functools.partial(count, name=name)))
    with torch.no_grad():
        torch_reference.Trainer.forward(net, view)
    for h in hooks:
        h.remove()
    return counts


def update_errors(ref: dict, online, target) -> dict[str, float]:
    """Relative error of every tensor's STEPS-step update (and of BN statistics)."""
    init, final = ref["history"][0], ref["history"][-1]
    views = [torch.from_numpy(fixed_batch()["image"][:, v]).permute(0, 3, 1, 2) for v in (0, 1)]
    errors = {}
    nets = [("", online, "params", "batch_stats")]
    if target is not None:
        nets.append(("target:", target, "target_params", "target_batch_stats"))
    for tag, net, pkey, skey in nets:
        start = torch_reference.state_dict_from_ssljax(init[pkey], init[skey])
        want = torch_reference.state_dict_from_ssljax(final[pkey], final[skey])
        counts = _elements_per_channel(net, views[0].to(next(net.parameters()).dtype))
        got = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
        for name, w in want.items():
            if name.endswith("num_batches_tracked"):
                continue
            g, s = got[name].astype(np.float64), start[name].astype(np.float64)
            w = w.astype(np.float64)
            if name.endswith("running_var"):
                # Undo PyTorch's unbiased variance: see the module docstring.
                n = counts[name.rsplit(".", 1)[0]]
                w0 = 0.9 ** (2 * STEPS)
                w = w0 + (w - w0) * n / (n - 1)
            want_update, got_update = w - s, g - s
            scale = np.linalg.norm(want_update)
            if scale < NOISE_FLOOR:
                # A Dense bias before a BatchNorm: its exact gradient is 0 (BN removes any
                # constant), so both updates are rounding noise; both must stay that small.
                errors[tag + name] = float(np.linalg.norm(got_update) / NOISE_FLOOR) * UPDATE_RTOL
                continue
            errors[tag + name] = float(np.linalg.norm(got_update - want_update) / scale)
    return errors


@pytest.mark.slow  # ~20 s per method on an idle 2-core CPU, mostly XLA's compilation
@pytest.mark.parametrize("method", METHODS)
def test_two_steps_match_ssljax(method, ssljax_runs):
    ref = ssljax_runs(method)
    online, target, losses = run_torch(ref)
    np.testing.assert_allclose(losses, ref["losses"], rtol=LOSS_RTOL)
    # The loss changed between the steps: the first update mattered.
    assert abs(ref["losses"][1] - ref["losses"][0]) > 100 * LOSS_RTOL * abs(ref["losses"][0])
    errors = update_errors(ref, online, target)
    worst = max(errors, key=errors.get)
    assert errors[worst] < UPDATE_RTOL, f"{worst}: relative update error {errors[worst]:.2e}"
    expected = {torch_yardstick.flax_path(n) for n, _ in online.named_parameters()}
    assert len(expected) == len(tree_paths.flatten(ref["history"][0]["params"]))


# The recipe fields: solo-learn's LARS with clip_lr, per-group rate multipliers (with SimSiam's
# fixed predictor rate too), head initialisations, Barlow Twins' loss scale.
RECIPE_CASES = [
    (
        "byol",
        (
            ("optimizer.lars_form", "solo_learn"),
            ("optimizer.clip_lr", True),
            ("heads.init", "haiku"),
        ),
    ),
    (
        "barlow_twins",
        (
            ("optimizer.lr_multipliers", ((r"(bias|scale)$", 0.024),)),
            ("method_config.scale_loss", 0.1),
            ("heads.init", "torch"),
        ),
    ),
    ("simsiam", (("optimizer.lr_multipliers", ((r"^backbone/", 0.5),)), ("heads.init", "flax"))),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, overrides", RECIPE_CASES)
def test_recipe_fields_match_ssljax(method, overrides, ssljax_runs):
    ref = ssljax_runs(method, overrides)
    online, target, losses = run_torch(ref)
    np.testing.assert_allclose(losses, ref["losses"], rtol=LOSS_RTOL)
    errors = update_errors(ref, online, target)
    worst = max(errors, key=errors.get)
    assert errors[worst] < UPDATE_RTOL, f"{worst}: relative update error {errors[worst]:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, mutation",
    [
        ("byol", "ema_before_update"),
        ("byol", "optax_lars_ordering"),
        ("byol", "bn_momentum_0.9"),
        ("simsiam", "scheduled_predictor"),
    ],
)
def test_deviations_are_caught(method, mutation, ssljax_runs):
    ref = ssljax_runs(method)
    online, target, _ = run_torch(ref, mutation)
    errors = update_errors(ref, online, target)
    assert max(errors.values()) > 5 * UPDATE_RTOL, f"{mutation} went unnoticed"


def test_linear_protocol_is_ssljax_cifar_preset():
    from ssljax import evaluate

    lin = evaluate.eval_config("cifar").linear
    for key, value in torch_reference.LINEAR_CIFAR.items():
        assert tuple(lin[key]) == value if isinstance(value, tuple) else lin[key] == value, key
    assert lin.optimizer == "sgd" and lin.schedule == "step" and lin.init == "uniform_fan_in"
    assert lin.lr_batch_scaling and not lin.nesterov and not lin.standardize


@pytest.mark.parametrize("clip_lr", [True, False])
def test_solo_learn_lars_matches_ssljax_over_a_whole_schedule(clip_lr):
    """60 updates through warm-up, the full rate and the cosine decay, not just the first two.

    The equal-budget runs (README) found ssljax's BYOL 3.8 kNN points behind the reference with
    solo-learn's LARS and clip_lr, and not with BYOL's: the two optimizers must not be where
    that comes from. Random gradients, float64 on the PyTorch side; relative error <= 1e-5.
    """
    import jax.numpy as jnp
    import optax

    from ssljax import optim

    rng = np.random.default_rng(0)
    shapes = {"kernel": (3, 3, 16, 32), "bias": (32,)}
    p0 = {
        k: (rng.normal(size=s) * (0.1 if k == "kernel" else 0.01)).astype(np.float32)
        for k, s in shapes.items()
    }
    total, warmup, peak = 60, 6, 1.0
    schedule = optim.warmup_cosine_lr(
        peak, global_batch=256, total_steps=total, warmup_steps=warmup, final_lr=0.0
    )
    tx = optim.solo_learn_lars(
        schedule,
        weight_decay=1e-5,
        momentum=0.9,
        eta=0.02,
        clip_lr=clip_lr,
        adapt_mask={"kernel": True, "bias": False},
    )
    params = {k: jnp.asarray(v) for k, v in p0.items()}
    state = tx.init(params)
    ref = {k: torch.tensor(v, dtype=torch.float64) for k, v in p0.items()}
    ref_opt = torch_yardstick.SoloLearnLars(
        [(ref["kernel"], True, 0), (ref["bias"], False, 0)],
        clip_lr=clip_lr,
        weight_decay=1e-5,
        momentum=0.9,
        eta=0.02,
    )
    clipped = 0
    for k in range(total):
        g = {n: (rng.normal(size=s) * 0.05).astype(np.float32) for n, s in shapes.items()}
        updates, state = tx.update({n: jnp.asarray(v) for n, v in g.items()}, state, params)
        params = optax.apply_updates(params, updates)
        for n in ref:
            ref[n].grad = torch.tensor(g[n], dtype=torch.float64)
        lr = torch_yardstick.warmup_cosine(k, peak, warmup, total, 0.0)
        norm_p = np.linalg.norm(ref["kernel"].numpy())
        clipped += lr > 0 and 0.02 * norm_p / np.linalg.norm(g["kernel"]) < lr
        ref_opt.step([lr])
        for n in ref:
            want = ref[n].numpy()
            err = np.linalg.norm(np.asarray(params[n], np.float64) - want) / np.linalg.norm(want)
            assert err <= 1e-5, (k, n, err)
    # The trust ratio bound the step at some steps, so both branches of clip_lr were compared.
    assert clipped > 10, clipped


def test_schedules_match_ssljax():
    from ssljax import optim

    config = small_config("byol")
    config.num_steps = 50
    config.warmup_epochs = 0.2  # 20 steps of 100 per epoch at 1000 examples / batch 10
    config.global_batch = 10
    _, total, warmup = torch_reference.schedule_lengths(config, 1000)
    assert (total, warmup) == (50, 20)
    lr = optim.warmup_cosine_lr(8.0, global_batch=10, total_steps=total, warmup_steps=warmup)
    tau = optim.byol_tau_schedule(0.5, total)
    online, target, _ = torch_yardstick.build_torch_modules(config, 10)
    trainer = torch_reference.Trainer(
        config, online, target, total_steps=total, warmup_steps=warmup, autocast=None
    )
    peak = 8.0 * 10 / 256
    for k in (0, 1, 19, 20, 21, 35, 49, 50, 60):
        # ssljax evaluates the cosine in float32: agreement to float32 rounding of the peak.
        assert math.isclose(trainer.lr(k), float(lr(k)), rel_tol=1e-6, abs_tol=1e-6 * peak), k
        assert math.isclose(trainer.tau(k), float(tau(k)), rel_tol=1e-6), k


# ----------------------------------------------------------------------------------------------
# The reference's augmentations (torchvision's definitions) against ssljax.augment's.
# ----------------------------------------------------------------------------------------------
def _image(seed=0, size=32):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (size, size, 3)).astype(np.float32)


def _chw(x):
    return torch.from_numpy(x).permute(2, 0, 1)


def _hwc(t):
    return t.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("delta", [-0.5, -0.1, 0.03, 0.25, 0.5])
def test_hue_matches_ssljax(delta):
    from ssljax import augment

    x = _image()
    x[:4, :4] = 0.5  # grey pixels: no hue
    x[4:8, :4] = x[4:8, :4, :1]  # ties between channels
    got = _hwc(torch_reference.adjust_hue(_chw(x), delta))
    np.testing.assert_allclose(got, np.asarray(augment.adjust_hue(x, delta)), atol=2e-6)


def test_blends_match_ssljax():
    from ssljax import augment

    x = _image(1)
    t = _chw(x)
    gray = torch_reference._gray(t)
    pairs = [
        (torch_reference._blend(t, 0.0, 1.3), augment.adjust_brightness(x, 1.3)),
        (torch_reference._blend(t, gray.mean(), 0.6), augment.adjust_contrast(x, 0.6)),
        (torch_reference._blend(t, gray, 1.2), augment.adjust_saturation(x, 1.2)),
        (gray.expand(3, -1, -1), augment.to_grayscale(x)),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(_hwc(got), np.asarray(want), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_matches_ssljax(sigma):
    from ssljax import augment

    x = _image(2)
    radius = augment.blur_radius(32)
    got = _hwc(torch_reference.gaussian_blur(_chw(x), sigma, radius))
    want = np.asarray(augment.gaussian_blur(x, np.float32(sigma), radius))
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("box", [(0, 0, 32, 32), (3, 5, 17, 11), (10, 0, 9, 30), (20, 20, 4, 4)])
def test_resized_crop_matches_ssljax(box):
    from ssljax import augment

    x = _image(3)
    view = dict(augment.VIEW_DEFAULTS, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    for key in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        view[key] = 0.0
    transform = torch_reference.ViewTransform(view, 32, (0.0,) * 3, (1.0,) * 3)
    top, left, h, w = box
    got = _hwc(transform.resize(_chw(x)[:, top : top + h, left : left + w]))
    want = np.asarray(augment.resized_crop(x, np.asarray(box), 32))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_view_without_randomness_is_normalisation():
    view = dict(augment.VIEW_DEFAULTS, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    for key in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        view[key] = 0.0
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = _image(4)
    got = _hwc(torch_reference.ViewTransform(view, 32, mean, std)(_chw(x)))
    np.testing.assert_allclose(got, (x - np.asarray(mean)) / np.asarray(std), atol=1e-6)


@pytest.mark.parametrize("preset", ["simsiam", "byol"])
def test_whole_view_replays_ssljax_decisions(preset):
    """Given ssljax's own random decisions, the reference builds the same views.

    The operations are compared one by one above; this composes them: the order, the
    conditions, which factor goes to which operation, the flip after the resize. With the
    decisions equal, the views must agree to float32 rounding, so the two implementations
    differ only in their random streams (whose distributions benchmarks/view_stats.py compares).
    """
    import jax

    views = {"simsiam": augment.simsiam_views, "byol": augment.byol_views}[preset]()
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    images = np.random.default_rng(5).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    fn = augment.build_augment(views, output_size=32, mean=mean, std=std)
    outs, params = jax.jit(lambda r, x: fn(r, x, return_params=True))(jax.random.PRNGKey(1), images)
    applied = 0
    for v, view in enumerate(views):
        transform = torch_reference.ViewTransform(view, 32, mean, std)
        p = {k: np.asarray(a) for k, a in params[v].items()}
        for i, image in enumerate(images):
            decisions = {k: a[i] for k, a in p.items()}
            decisions["blur"] = bool(decisions["blur"]) and transform.radius > 0
            got = transform.apply(_chw(image.astype(np.float32) / 255.0), decisions)
            np.testing.assert_allclose(_hwc(got), np.asarray(outs[v][i]), atol=2e-5)
            applied += (
                int(decisions["jitter"]) + int(decisions["blur"]) + int(decisions["solarize"])
            )
    assert applied > 30  # the random operations did apply in this sample


def test_crop_boxes_follow_scale_and_ratio():
    torch.manual_seed(0)
    boxes = [torch_reference.crop_box(32, 32, (0.2, 0.6), (0.5, 2.0)) for _ in range(500)]
    areas = np.array([h * w / 1024 for _, _, h, w in boxes])
    ratios = np.array([w / h for _, _, h, w in boxes])
    # Rounding h and w to integers moves area and ratio a little beyond the sampled bounds.
    assert areas.min() > 0.15 and areas.max() < 0.68 and 0.36 < areas.mean() < 0.44
    assert ratios.min() > 0.4 and ratios.max() < 2.5
    assert all(t >= 0 and l >= 0 and t + h <= 32 and l + w <= 32 for t, l, h, w in boxes)
    assert len({(t, l) for t, l, _, _ in boxes}) > 100  # positions vary


def test_state_dict_conversion_is_exact():
    config = small_config("simsiam")
    comps = train.build_components(config, fake_info(), num_train_examples=1000)
    variables = jax.device_get(
        train._init_variables(comps.online_net, jax.random.PRNGKey(1), SIZE, fake_info())
    )
    online, _, _ = torch_yardstick.build_torch_modules(config, 10)
    _load(online, variables["params"], variables["batch_stats"])  # strict: every key, once
    x = fixed_batch()["image"][:, 0]
    want = comps.online_net.apply(variables, x, train=False)
    online.eval()
    with torch.no_grad():
        got = torch_reference.Trainer.forward(online, torch.from_numpy(x).permute(0, 3, 1, 2))
    for key in ("features", "projection", "prediction"):
        np.testing.assert_allclose(got[key].numpy(), np.asarray(want[key]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_initial_weights_are_those_of_ssljax_main(method):
    """``--init_from_ssljax`` loads what ``ssljax.main`` initialises for the seed.

    main runs ``init_state`` jitted with the state's sharding over every device (8 simulated
    here, FSDP 2 so that some tensors are split); the reference's function runs it unsharded.
    They must agree exactly, and another seed must not.
    """
    config = small_config(method)
    config.fsdp = 2
    config.seed = 3
    comps = train.build_components(config, fake_info(), num_train_examples=1000)
    mesh = sharding.make_mesh(fsdp=config.fsdp)
    rng = jax.random.PRNGKey(config.seed)
    shapes = jax.eval_shape(functools.partial(train.init_state, comps, config), rng)
    state_sharding = sharding.infer_state_sharding(mesh, shapes)
    main_state = jax.device_get(
        jax.jit(functools.partial(train.init_state, comps, config), out_shardings=state_sharding)(
            rng
        )
    )
    want = torch_reference.state_dict_from_ssljax(main_state.params, main_state.batch_stats)

    def got(seed):
        return torch_reference.ssljax_initial_state_dict(
            config, seed, image_shape=(SIZE, SIZE, 3), num_classes=10, num_train_examples=1000
        )

    same, other = got(3), got(4)
    assert same.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(same[k], want[k], err_msg=k)
    drawn = [k for k in want if k.endswith("conv1.weight") or k.endswith("dense_0.weight")]
    assert drawn and all(not np.array_equal(other[k], want[k]) for k in drawn)
    # Loads strictly (every tensor once) into the reference's modules, the target included.
    online, target, _ = torch_yardstick.build_torch_modules(config, 10)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in same.items()}
    online.load_state_dict(tensors)
    if target is not None:
        target.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("predictor.")})


def test_ssljax_inputs_are_what_the_train_step_trains_on(tmp_path):
    """``--inputs_from_ssljax`` feeds the reference the views ssljax's train step augments.

    On a small image folder, two steps of ``ssljax.train.make_train_step`` (which augments the
    loader's batch itself, with the step's key) and two reference steps on
    ``SsljaxInputs``' views from the same initial weights give the same losses; a wrong key,
    batch or view order would change them by far more than float32 rounding.
    """
    import ssljax_inputs
    from PIL import Image

    from ssljax import data
    from ssljax.data import prepare

    pixels = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, per_class in (("train", 16), ("test", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                image = pixels.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / c / f"{i}.png")
    prepare("image_folder", tmp_path / "data", root=root)
    config = small_config("simsiam")
    config.data.root, config.data.data_dir = str(root), str(tmp_path / "data")
    config.data.num_workers = 0
    config.seed = 5
    info = data.get_dataset_info(config.data)
    comps = train.build_components(config, info, num_train_examples=32)
    state = train.init_state(comps, config, jax.random.PRNGKey(config.seed))
    online, _, _ = torch_yardstick.build_torch_modules(config, 2)
    _load(online, jax.device_get(state.params), jax.device_get(state.batch_stats))
    online.to(torch.float64).train()
    trainer = torch_reference.Trainer(
        config,
        online,
        None,
        total_steps=comps.total_steps,
        warmup_steps=comps.warmup_steps,
        autocast=contextlib.nullcontext,
    )
    step = jax.jit(train.make_train_step(comps, config))
    loader = data.make_loader(
        config.data,
        split="train",
        global_batch=config.global_batch,
        seed=config.seed,
        shuffle=True,
        drop_remainder=True,
    )
    inputs = ssljax_inputs.SsljaxInputs(config)
    losses = []
    for k in range(2):  # steps_per_epoch is 2: the second batch is the epoch's other half
        state, metrics = step(state, next(loader))
        v1, v2, _ = next(inputs)
        loss, _ = trainer.loss_and_grads([v1.to(torch.float64), v2.to(torch.float64)])
        trainer.optimizer_step(k)
        losses.append((float(loss), float(metrics["loss"])))
    for got, want in losses:
        np.testing.assert_allclose(got, want, rtol=1e-4)
    # The two steps' losses differ by far more than the tolerance, so it can tell them apart.
    assert abs(losses[0][1] - losses[1][1]) > 1e-2 * abs(losses[0][1])


def test_knn_matches_ssljax():
    from ssljax import knn

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16))
    train_y, test_y = rng.integers(0, 5, 400), rng.integers(0, 5, 100)
    train_x = centres[train_y] + 1.5 * rng.standard_normal((400, 16))
    test_x = centres[test_y] + 1.5 * rng.standard_normal((100, 16))
    for k, temperature in ((1, 0.07), (20, 0.07), (200, 0.5)):
        want = knn.knn_accuracies(
            train_x, train_y, test_x, test_y, ks=(k,), temperature=temperature, num_classes=5
        )[k]
        got = torch_reference.knn_top1(
            torch.tensor(train_x, dtype=torch.float32),
            torch.from_numpy(train_y),
            torch.tensor(test_x, dtype=torch.float32),
            torch.from_numpy(test_y),
            k=k,
            temperature=temperature,
            num_classes=5,
        )
        assert 0.3 < got < 1.0  # far from chance (0.2): the features carry the labels
        assert got == pytest.approx(want, abs=0.011), (k, temperature)  # one query of 100


def test_overrides_reach_the_config():
    config = torch_reference.load_config(
        str(REPO / "configs" / "byol.py") + ":cifar10_cpu",
        [
            "num_epochs=1",  # an int for a float field
            "warmup_epochs=0.125",
            "augment.view1.crop_scale=(0.2, 1.0)",
            "optimizer.name=sgd",
            "probe.enabled=false",
        ],
    )
    assert config.num_epochs == 1.0 and isinstance(config.num_epochs, float)
    assert tuple(config.augment.view1.crop_scale) == (0.2, 1.0)
    assert config.optimizer.name == "sgd" and config.probe.enabled is False
    assert torch_reference.schedule_lengths(config, 50_000) == (195, 195, 24)
    with pytest.raises(ValueError, match="no field"):
        torch_reference.load_config(str(REPO / "configs" / "byol.py"), ["optimizer.lr=1"])
