"""The training system: the method contract, target policies, the probe, sharding, the loop.

Steps run on real CIFAR-10 images with a tiny ResNet at 16 pixels so that each compiled step
costs little on a 2-core CPU.
"""

import json
import logging
import os
import pathlib
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import param_compare
import pytest
from param_compare import assert_params_close
from PIL import Image

from ssljax import checkpointing, config_schema, methods, sharding, train
from ssljax.models.siamese import SiameseNetwork

REPO = pathlib.Path(__file__).resolve().parent.parent
METHOD_NAMES = sorted(methods.METHODS)
BATCH = 32


def small_config(method: str, **overrides):
    # Every registered method has configs/<name>.py: a new method needs no edit here.
    c = config_schema.load_config(str(REPO / "configs" / f"{method}.py") + ":digits")
    c.model.backbone = "resnet_tiny"
    c.data.image_size = 16
    c.global_batch = BATCH
    c.num_steps = 30
    c.warmup_epochs = 0.0
    c.heads.projector_hidden = (64,)
    c.heads.projector_dim = 32
    c.heads.predictor_hidden = (64,)
    c.heads.predictor_dim = 32
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


@pytest.fixture(scope="module")
def cifar_batch(cifar10_dir):
    """BATCH real CIFAR-10 training images (uint8) and their labels."""
    classes = sorted(p.name for p in (cifar10_dir / "train").iterdir())
    images, labels = [], []
    for i in range(BATCH):
        label = i % len(classes)
        path = cifar10_dir / "train" / classes[label] / f"{i // len(classes):04d}.jpg"
        images.append(np.asarray(Image.open(path).convert("RGB")))
        labels.append(label)
    return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


def fake_info(num_examples=BATCH):
    return types.SimpleNamespace(
        name="cifar10_subset",
        num_classes=10,
        split_sizes={"train": num_examples, "test": num_examples},
        image_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.247, 0.243, 0.261),
        class_names=None,
    )


def build(config):
    comps = train.build_components(config, fake_info(), num_train_examples=BATCH)
    state = train.init_state(comps, config, jax.random.PRNGKey(config.seed))
    step = jax.jit(train.make_train_step(comps, config))
    return comps, state, step


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_contract_loss_falls_and_state_keeps_structure(method, cifar_batch):
    config = small_config(method)
    _, state, step = build(config)
    structure = jax.tree.structure(state)
    batch = jax.tree.map(jnp.asarray, cifar_batch)
    losses, kls = [], []
    for i in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if "loss_kl" in metrics:
            kls.append(float(metrics["loss_kl"]))
        logging_step = (i + 1) % config.log_every_steps == 0
        for name, value in metrics.items():
            if name in train.LOG_STEP_ONLY and not logging_step:
                assert np.isnan(float(value)), (method, name, "computed off logging steps")
            else:
                assert np.isfinite(float(value)), (method, name, value)
    assert jax.tree.structure(state) == structure
    assert int(state.step) == 30
    assert int(state.nonfinite_total) == 0
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    if kls:
        # DINO: the cross-entropy is the teacher's entropy (raised by the centering, by
        # design, in the first steps) plus the KL the student reduces: the KL must fall.
        first, last = np.mean(kls[:5]), np.mean(kls[-5:])
    assert last < first, f"{method}: loss did not fall: first 5 {first:.4f}, last 5 {last:.4f}"


def test_byol_target_is_ema_of_online(cifar_batch):
    # The contract test's config: its compiled step, from the compilation cache.
    config = small_config("byol")
    comps, state, step = build(config)
    old_target = state.method_state["target_params"]
    tau = float(comps.target_policy.tau_schedule(0))
    assert tau == pytest.approx(config.tau_base) and tau < 1.0
    new_state, metrics = step(state, jax.tree.map(jnp.asarray, cifar_batch))
    assert float(metrics["tau"]) == pytest.approx(tau)
    assert set(new_state.method_state["target_params"]) == {"backbone", "projector"}
    expected = jax.tree.map(
        lambda t, o: tau * t + (1 - tau) * o,
        old_target,
        {k: v for k, v in new_state.params.items() if k != "predictor"},
    )
    got_leaves, want_leaves = (
        jax.tree.leaves(new_state.method_state["target_params"]),
        jax.tree.leaves(expected),
    )
    for got, want in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The target moved: it is not still the initial copy.
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(old_target), got_leaves, strict=True)
    ]
    assert any(moved)


def test_simsiam_stores_no_target_copy():
    config = small_config("simsiam")
    comps = train.build_components(config, fake_info(), num_train_examples=BATCH)
    state = train.init_state(comps, config, jax.random.PRNGKey(0))
    assert isinstance(comps.target_policy, methods.StopGradient)
    assert state.method_state == {}


def _projection_grads(method_name, key):
    method = methods.get_method(method_name)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    z1, z2 = jax.random.normal(k1, (16, 8)), jax.random.normal(k2, (16, 8))
    p1, p2 = jax.random.normal(k3, (16, 8)), jax.random.normal(k4, (16, 8))

    def loss(z1, z2, p1, p2):
        online = [{"projection": z1, "prediction": p1}, {"projection": z2, "prediction": p2}]
        if method.target_policy == methods.NoTarget.from_config:
            target = None
        else:  # the stop-gradient side is the same projections, as SimSiam's policy has it
            target = [{"projection": z1}, {"projection": z2}]
        return method.loss(online, target, {})[0]

    return jax.grad(loss, argnums=(0, 1, 2, 3))(z1, z2, p1, p2)


@pytest.mark.parametrize("method", ["vicreg", "barlow_twins"])
def test_symmetric_methods_give_gradient_to_both_branches(method):
    g1, g2, _, _ = _projection_grads(method, jax.random.PRNGKey(1))
    assert float(jnp.abs(g1).max()) > 1e-4 and float(jnp.abs(g2).max()) > 1e-4


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_asymmetric_methods_give_no_gradient_through_the_target(method):
    g1, g2, gp1, gp2 = _projection_grads(method, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(g1, 0.0)
    np.testing.assert_array_equal(g2, 0.0)
    assert float(jnp.abs(gp1).max()) > 1e-4 and float(jnp.abs(gp2).max()) > 1e-4


def test_probe_does_not_touch_the_backbone(cifar_batch):
    batch = jax.tree.map(jnp.asarray, cifar_batch)
    with_probe = small_config("byol")
    without = small_config("byol", **{"probe.enabled": False})
    _, s1, step1 = build(with_probe)
    _, s2, step2 = build(without)
    s1, m1 = step1(s1, batch)
    s2, _ = step2(s2, batch)
    assert float(m1["probe_loss"]) > 0
    # The probe trained ...
    assert not np.array_equal(
        jax.tree.leaves(s1.probe_params)[0], jax.tree.leaves(build(with_probe)[1].probe_params)[0]
    )
    # ... and the online network is exactly what it is without a probe.
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["byol", "vicreg"])
def test_eight_devices_equal_one(method, cifar_batch):
    config = small_config(method)
    comps = train.build_components(config, fake_info(), num_train_examples=BATCH)
    state0 = train.init_state(comps, config, jax.random.PRNGKey(0))
    step_fn = train.make_train_step(comps, config)
    batch = jax.tree.map(jnp.asarray, cifar_batch)

    single = jax.jit(step_fn)
    s, m_single = state0, []
    for _ in range(2):
        s, m = single(s, batch)
        m_single.append(float(m["loss"]))
    params_single = s.params

    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    state_sh = jax.tree.map(lambda _: repl, state0)
    sharded = jax.jit(step_fn, in_shardings=(state_sh, data), out_shardings=(state_sh, repl))
    s = jax.device_put(state0, state_sh)
    b = jax.device_put(batch, data)
    m_sharded = []
    for _ in range(2):
        s, m = sharded(s, b)
        m_sharded.append(float(m["loss"]))
    np.testing.assert_allclose(m_sharded, m_single, rtol=1e-5)
    # Parameters: the rule shared by every device/process-count comparison
    # (tests/param_compare.py). A sharding bug -- statistics or the loss computed per device
    # instead of over the global batch -- also changes the losses, compared at 1e-5 above.
    assert_params_close(
        param_compare.flatten(jax.device_get(s.params)),
        param_compare.flatten(jax.device_get(params_single)),
    )


def test_invalid_config_fails_before_compilation():
    c = small_config("byol", global_batch=30)
    with pytest.raises(ValueError, match="config.global_batch"):
        config_schema.validate(c, num_devices=8)
    c = small_config("byol", tau_base=1.5)
    with pytest.raises(ValueError, match="config.tau_base"):
        config_schema.validate(c, num_devices=1)
    c = small_config("byol", **{"optimizer.base_lr": -0.1})
    with pytest.raises(ValueError, match="config.optimizer: base_lr must be a number >= 0"):
        config_schema.validate(c, num_devices=1)
    c = small_config("byol")
    c.method = "mocov9"
    with pytest.raises(ValueError, match="byol"):
        config_schema.validate(c, num_devices=1)


def test_main_on_digits_writes_logs_and_checkpoints_then_resumes(tmp_path, capsys, caplog):
    workdir = tmp_path / "run"
    config = small_config("byol", num_steps=8, log_every_steps=2, **{"checkpoint.every_steps": 3})
    config.data.data_dir = str(tmp_path / "data")
    config.knn.every_epochs = 0.0
    config.knn.k = 5
    caplog.set_level(logging.DEBUG)
    config.knn.bn_calibration_batches = 2  # the digits preset measures the calibrated init
    out = train.train_and_evaluate(config, str(workdir))
    # Default output says what the start-up does; the loader's lines are for --verbosity=1.
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "kNN at initialisation: 1,797 images..." in info
    assert "Compiling the train step (the first progress line follows)..." in info
    # The loader's worker count (automatic by default) is said once, with the reason.
    assert any(m.startswith("Input: 0 loader worker process(es) (auto: digits") for m in info)
    assert not [m for m in info if "epoch 0 begins" in m or "steps per epoch" in m]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "digits/train: epoch 0 begins (step 0)" in debug
    assert np.isfinite(out["loss"]) and 0.0 <= out["knn_top1"] <= 1.0
    assert list(workdir.glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["knn_init_bn_calibration_batches"] == 2
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    # The input-wait share of each flush (log steps 2, 4, 6, 8 and checkpoint step 3; step 6
    # is both): recorded and shown on the progress line.
    shares = [r["input_wait_share"] for r in rows if "input_wait_share" in r]
    assert len(shares) == 5 and all(0.0 <= x <= 1.0 for x in shares), shares
    assert "input " in capsys.readouterr().err
    checkpoints = workdir / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [3, 6, 8]
    summary = json.loads((workdir / "summary.json").read_text())

    # A job killed after step 8's metrics were written but before its checkpoint and summary:
    # the rerun resumes at step 7 with the same config, i.e. the same compiled step (a cache
    # hit; a changed num_steps, also resumable -- test_resumable_changes_do_not_block_a_resume
    # --, would compile a new one), trains steps 7 and 8 again without duplicating their rows,
    # and takes the kNN at initialisation from metrics.jsonl's step-0 row.
    shutil.rmtree(checkpoints / "8")
    (workdir / "summary.json").unlink()
    caplog.clear()
    train.train_and_evaluate(config, str(workdir))
    assert any("Resumed from step 6" in r.getMessage() for r in caplog.records)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8], "the second run must resume at step 7, not restart"
    resumed = (workdir / "summary.json").read_text()
    assert json.loads(resumed)["step"] == 8
    assert json.loads(resumed)["knn_top1_init"] == out["knn_top1_init"], "kept from step 0"
    # Bitwise resumption: the same steps from the same state give the same final loss.
    assert json.loads(resumed)["loss"] == summary["loss"]
    assert os.path.isdir(checkpoints / "8")
    # The job again, finished: nothing trained, its summary left as it was.
    caplog.clear()
    train.train_and_evaluate(config, str(workdir))
    assert (workdir / "summary.json").read_text() == resumed
    assert any("Already finished at step 8" in r.getMessage() for r in caplog.records)


def test_resumable_changes_do_not_block_a_resume():
    """Extending a run (num_steps, num_epochs) or changing its logging resumes; others refuse."""
    saved = json.loads(small_config("byol", num_steps=6).to_json_best_effort())
    longer = small_config("byol", num_steps=8, num_epochs=3.0, log_every_steps=5)
    longer.checkpoint.every_steps = 7
    assert checkpointing.config_differences(saved, json.loads(longer.to_json_best_effort())) == {}
    other = small_config("byol", num_steps=8, tau_base=0.5)
    assert checkpointing.config_differences(saved, json.loads(other.to_json_best_effort())) == {
        "tau_base": (saved["tau_base"], 0.5)
    }


def test_calibrated_batch_stats_are_those_of_the_training_batches(cifar_batch):
    """Re-estimated on one batch again and again, eval-mode BN reproduces train-mode BN on it."""
    config = small_config("byol")
    for view in (config.augment.view1, config.augment.view2):
        # Deterministic views, so that every calibration batch is the same batch.
        view.update(
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            flip_prob=0.0,
            jitter_prob=0.0,
            grayscale_prob=0.0,
            blur_prob=0.0,
            solarize_prob=0.0,
        )
    comps, state, _ = build(config)
    images = jnp.asarray(cifar_batch["image"])
    # 60 batches of 2 views: the initial statistics weigh 0.9 ** 120 = 3e-6.
    calibrated = train.estimate_batch_stats(
        comps, state, iter([images] * 60), jax.random.PRNGKey(3)
    )
    x = comps.augment_fn(jax.random.PRNGKey(4), images)[0]

    def features(batch_stats, train_mode):
        variables = {"params": state.params, "batch_stats": batch_stats}
        if train_mode:
            out, _ = comps.online_net.apply(variables, x, train=True, mutable=["batch_stats"])
            return np.asarray(out["features"])
        return np.asarray(comps.online_net.apply(variables, x, method=SiameseNetwork.features))

    want = features(state.batch_stats, train_mode=True)
    np.testing.assert_allclose(features(calibrated.batch_stats, False), want, rtol=1e-3, atol=1e-4)
    # With the initial statistics (mean 0, variance 1) evaluation mode is far from it.
    assert np.abs(features(state.batch_stats, False) - want).max() > 0.1
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), calibrated.params, state.params)
    assert all(jax.tree.leaves(same)), "calibration must not change the parameters"


def test_summary_line_reports_knn_against_initialisation():
    last = {
        "wall_time_s": 128.4,
        "images_per_sec_overall": 437.9,
        "knn_top1": 0.9533,
        "knn_top1_init": 0.94,
    }
    line = train._summary_line(440, 440, last, "/tmp/w")
    assert line == (
        "Finished at step 440 (440 this run) in 128 s; 438 img/s overall; kNN top-1 95.33% "
        "(94.00% at initialisation, +1.3 points). Summary: /tmp/w/summary.json"
    )
    assert "kNN" not in train._summary_line(5, 0, {"wall_time_s": 1.0}, "/w")
