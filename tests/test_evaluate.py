"""Evaluation: the linear classifier against a NumPy reference of the papers' optimizers, the
linear probe on data with a known answer, the presets, the CLI path on a run's workdir, and the
errors on bad input.
"""

import functools
import json
import math
import os
import pathlib
import subprocess
import sys

import _timing
import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader

from ssljax import checkpointing, config_schema, data, evaluate, export, train

REPO = pathlib.Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# The linear classifier.
# ----------------------------------------------------------------------------------------------
def np_linear_classifier(x, y, num_classes, lin):
    """Minibatch softmax regression in float64 with PyTorch's SGD / apex LARC update rules.

    SGD (torch.optim.SGD): g += wd * p; v = m v + g; p -= lr * (g + m v if nesterov else v).
    LARC (clip=False): g = (g + wd * p) * eta ||p|| / ||g + wd p|| (1 if a norm is 0), then SGD.
    Schedules: 'step' (MultiStepLR per epoch), 'cosine' per step, 'cosine_per_epoch'.
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    batch = min(lin.batch_size, n)
    spe = math.ceil(n / batch)
    total = lin.epochs * spe
    lr0 = lin.base_lr * (lin.batch_size / 256 if lin.lr_batch_scaling else 1.0)
    params = {"w": np.zeros((d, num_classes)), "b": np.zeros(num_classes)}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    perms = np.random.default_rng(lin.seed)
    step = 0
    for epoch in range(lin.epochs):
        perm = perms.permutation(n)
        for s in range(spe):
            idx = perm[s * batch : (s + 1) * batch]
            logits = x[idx] @ params["w"] + params["b"]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            grads = {"w": x[idx].T @ p / len(idx), "b": p.sum(0) / len(idx)}
            if lin.schedule == "step":
                lr = lr0 * lin.lr_decay_factor ** sum(epoch >= m for m in lin.lr_decay_epochs)
            elif lin.schedule == "cosine":
                lr = lr0 * 0.5 * (1 + math.cos(math.pi * step / total))
            else:
                lr = lr0 * 0.5 * (1 + math.cos(math.pi * epoch / lin.epochs))
            for k in params:
                g = grads[k] + lin.weight_decay * params[k]
                if lin.optimizer == "lars":
                    pn, gn = np.linalg.norm(params[k]), np.linalg.norm(g)
                    g = g * (lin.trust_coefficient * pn / gn if pn > 0 and gn > 0 else 1.0)
                velocity[k] = lin.momentum * velocity[k] + g
                upd = g + lin.momentum * velocity[k] if lin.nesterov else velocity[k]
                params[k] = params[k] - lr * upd
            step += 1
    return params


@pytest.mark.parametrize(
    "preset, overrides",
    [
        # n = 50, batch 16: three full minibatches and a short one of 2 per epoch.
        ("cifar", dict(lr_decay_epochs=(1, 2), weight_decay=1e-3)),
        ("imagenet_byol", dict(base_lr=0.5)),
        ("imagenet_simsiam", dict(base_lr=20.0, weight_decay=1e-2)),
    ],
)
def test_classifier_follows_the_papers_update_rules(preset, overrides):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    lin = evaluate.linear_eval_config(preset)
    lin.update(dict(epochs=3, batch_size=16, init="zeros", **overrides))
    got = evaluate.train_linear_classifier(x, y, num_classes=3, config=lin)
    want = np_linear_classifier(x, y, 3, lin)
    # The classifier must have moved, and exactly as the reference.
    assert np.abs(want["w"]).max() > 1e-3
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["b"], want["b"], rtol=1e-4, atol=1e-6)


def separable(n, rng, num_classes=4, d=16):
    """Class c has feature c raised by 2 over uniform noise in [-0.5, 0.5]: x @ I separates."""
    y = rng.integers(0, num_classes, n)
    x = rng.uniform(-0.5, 0.5, size=(n, d)).astype(np.float32)
    x[np.arange(n), y] += 2.0
    return x, y


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("cifar", dict(epochs=20)),
        ("imagenet_byol", dict(epochs=20, batch_size=64)),
        # LARS moves ||W|| by about lr * eta per step: full batches, many of them.
        ("imagenet_simsiam", dict(epochs=1000)),
    ],
)
def test_linear_probe_separates_a_linearly_separable_set(preset, overrides):
    rng = np.random.default_rng(1)
    train_set, test_set = separable(400, rng), separable(400, rng)
    clf = evaluate.train_linear_classifier(
        *train_set, num_classes=4, config=evaluate.linear_eval_config(preset), **overrides
    )
    assert evaluate.classifier_accuracy(clf, *test_set)["top1"] == 1.0


def test_linear_probe_on_random_labels_stays_at_chance_on_held_out_data():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 64)).astype(np.float32), rng.integers(0, 10, 500)
    xt, yt = rng.normal(size=(4000, 64)).astype(np.float32), rng.integers(0, 10, 4000)
    clf = evaluate.train_linear_classifier(x, y, num_classes=10)
    # It fits the train labels (well above chance) but learns nothing that transfers: 10% +-
    # 5 standard deviations of a 4,000-example accuracy.
    assert evaluate.classifier_accuracy(clf, x, y)["top1"] > 0.3
    held_out = evaluate.classifier_accuracy(clf, xt, yt)
    assert abs(held_out["top1"] - 0.1) < 0.024
    assert abs(held_out["top5"] - 0.5) < 0.04


def test_top1_and_top5_count_ranks():
    clf = {"w": np.eye(6, dtype=np.float32), "b": np.zeros(6), "mean": 0.0, "std": 1.0}
    x = np.array([[6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]], np.float32)
    # Label 4 ranks 5th in row 0 (top-5 hit), 2nd in row 1; label 0 ranks 6th in row 1.
    assert evaluate.classifier_accuracy(clf, x, np.array([4, 4])) == {"top1": 0.0, "top5": 1.0}
    assert evaluate.classifier_accuracy(clf, x, np.array([0, 0])) == {"top1": 0.5, "top5": 0.5}


# ----------------------------------------------------------------------------------------------
# Presets and overrides.
# ----------------------------------------------------------------------------------------------
def test_presets_hold_the_papers_settings():
    cifar = evaluate.linear_eval_config("cifar")
    assert (cifar.optimizer, cifar.epochs, cifar.batch_size, cifar.base_lr) == (
        "sgd",
        100,
        256,
        0.3,
    )
    assert (cifar.schedule, tuple(cifar.lr_decay_epochs), cifar.weight_decay) == (
        "step",
        (60, 80),
        0,
    )
    byol = evaluate.linear_eval_config("imagenet_byol")
    assert (byol.optimizer, byol.nesterov, byol.momentum, byol.epochs) == ("sgd", True, 0.9, 80)
    assert (byol.batch_size, byol.base_lr, byol.schedule, byol.weight_decay) == (
        1024,
        0.2,
        "cosine",
        0.0,
    )
    simsiam = evaluate.linear_eval_config("imagenet_simsiam")
    assert (simsiam.optimizer, simsiam.epochs, simsiam.batch_size) == ("lars", 90, 4096)
    assert simsiam.base_lr * simsiam.batch_size / 256 == pytest.approx(1.6)
    assert (simsiam.trust_coefficient, simsiam.init, simsiam.init_std) == (1e-3, "normal", 0.01)
    assert simsiam.schedule == "cosine_per_epoch"
    assert not any(evaluate.linear_eval_config(p).standardize for p in evaluate.EVAL_PRESETS)


def test_default_preset_follows_the_run():
    c = config_schema.load_config(str(REPO / "configs" / "simsiam.py") + ":imagenet")
    assert evaluate.default_preset(c) == "imagenet_simsiam"
    c = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":imagenet")
    assert evaluate.default_preset(c) == "imagenet_byol"
    c = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":cifar10")
    assert evaluate.default_preset(c) == "cifar"


def test_overrides_are_typed_and_checked():
    c = evaluate.apply_overrides(
        evaluate.eval_config("cifar"),
        ["linear.epochs=7", "knn.ks=(5, 50)", "linear.nesterov=true", "knn.ks=3"],
    )
    assert c.linear.epochs == 7 and c.linear.nesterov is True and tuple(c.knn.ks) == (3,)
    with pytest.raises(ValueError, match="unknown field 'linear.epoch'.*linear.epochs"):
        evaluate.apply_overrides(c, ["linear.epoch=3"])
    with pytest.raises(ValueError, match="linear.epochs holds a int, got 'many'"):
        evaluate.apply_overrides(c, ["linear.epochs=many"])
    with pytest.raises(ValueError, match="must look like"):
        evaluate.apply_overrides(c, ["linear.epochs"])
    with pytest.raises(ValueError, match="eval.linear.optimizer: must be one of"):
        evaluate.validate_eval_config(evaluate.apply_overrides(c, ["linear.optimizer='adam'"]))
    with pytest.raises(ValueError, match="--eval_preset='imagenet' does not exist"):
        evaluate.eval_config("imagenet")
    with pytest.raises(ValueError, match="Unknown linear-classifier setting 'lr'"):
        evaluate.train_linear_classifier(np.zeros((4, 2)), np.zeros(4, int), num_classes=2, lr=1)


# ----------------------------------------------------------------------------------------------
# A run's workdir: the checkpoint layout of ssljax.train, built without compiling a train step.
# ----------------------------------------------------------------------------------------------
def digits_config(**model_kwargs):
    c = config_schema.load_config(str(REPO / "configs" / "byol.py"))
    c.num_steps = 4
    c.warmup_epochs = 0.0
    c.knn.at_start = c.knn.at_end = False
    c.heads.projector_hidden = c.heads.predictor_hidden = (32,)
    c.heads.projector_dim = c.heads.predictor_dim = 16
    c.model.backbone_kwargs.update(model_kwargs)
    for view in (c.augment.view1, c.augment.view2):
        # Crops only: operations of probability 0 are not compiled, which saves seconds; the
        # diagnostics' plumbing is what is tested here, not the augmentations.
        view.jitter_prob = view.grayscale_prob = view.solarize_prob = view.blur_prob = 0.0
    return c


def make_workdir(path: pathlib.Path, config) -> train.TrainState:
    """Writes config.json and a step-4 checkpoint with non-trivial BatchNorm statistics."""
    info = data.get_dataset_info(config.data)
    comps = train.build_components(config, info, num_train_examples=info.split_sizes["train"])
    state = jax.jit(functools.partial(train.init_state, comps, config))(jax.random.PRNGKey(0))

    @jax.jit
    def train_mode_forward(state, images):
        _, updates = comps.online_net.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return state.replace(step=state.step + 4, **updates)

    state = train_mode_forward(state, jax.random.normal(jax.random.PRNGKey(1), (16, 16, 16, 1)))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    ckpt = checkpointing.Checkpointer(str(path / "checkpoints"), async_save=False)
    ckpt.save(4, state, None)
    ckpt.close()
    return state


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    state = make_workdir(path, digits_config())
    return path, state


def test_load_run_restores_the_online_backbone_exactly(run_dir):
    path, state = run_dir
    run = evaluate.load_run(str(path))
    assert run.step == 4
    for got, want in (
        (run.params, state.params["backbone"]),
        (run.batch_stats, state.batch_stats["backbone"]),
    ):
        jax.tree.map(np.testing.assert_array_equal, got, want)
    # The statistics are those of a train-mode forward, not the initial zeros and ones.
    assert np.abs(np.asarray(run.batch_stats["bn1"]["mean"])).max() > 1e-3


def read_tensorboard(logdir):
    scalars = {}
    for name in sorted(os.listdir(logdir)):
        if name.startswith("events.out.tfevents"):
            for event in event_file_loader.LegacyEventFileLoader(os.path.join(logdir, name)).Load():
                for v in event.summary.value:
                    scalars[v.tag] = (event.step, v.simple_value)
    return scalars


def test_linear_and_knn_protocols_write_json_and_tensorboard(run_dir):
    path, _ = run_dir
    overrides = [
        "linear.epochs=10",
        "diagnostics.max_examples=256",
        "knn.ks=(1, 20)",
        "feature_batch=512",
    ]
    res = evaluate.evaluate_run(str(path), "linear", eval_overrides=overrides)
    record = json.loads((path / "eval_linear.json").read_text())
    assert record["step"] == 4 and record["eval_preset"] == "cifar"
    assert record["eval_config"]["linear"]["epochs"] == 10 and "note" in record
    assert record["num_train"] == 1497 and record["num_test"] == 300
    # A random tiny ResNet's features already classify digits far above the 10% of chance.
    assert 0.5 < record["linear_top1"] <= record["linear_top5"] <= 1.0
    for key in ("rankme", "normalized_std", "alignment", "uniformity"):
        assert np.isfinite(record[key]), key
    assert 1.0 <= record["rankme"] <= record["feature_dim"]
    scalars = read_tensorboard(path / "eval")
    assert scalars["eval_linear/linear_top1"] == (4, pytest.approx(res["linear_top1"]))
    assert scalars["eval_linear/linear_top5"] == (4, pytest.approx(res["linear_top5"]))
    # The cached features are the eval-mode (running statistics) features of the images, in
    # the loader's order.
    run = evaluate.load_run(str(path))
    with np.load(path / "eval" / "features_step4_test.npz") as f:
        cached = f["x"]
    loader = data.make_loader(
        run.config.data,
        split="test",
        global_batch=16,
        seed=0,
        shuffle=False,
        drop_remainder=False,
        num_epochs=1,
    )
    images = next(iter(loader))["image"]
    want = run.backbone.apply(run.variables, run.components.eval_preprocess(images), train=False)
    np.testing.assert_allclose(cached[:16], want, rtol=1e-4, atol=1e-5)
    assert (path / "eval" / "features_step4_train.npz").is_file()

    res = evaluate.evaluate_run(
        str(path), "knn", eval_overrides=[*overrides, "diagnostics.enabled=False"]
    )
    record = json.loads((path / "eval_knn.json").read_text())
    assert set(res) >= {"knn_top1_k1", "knn_top1_k20"} and 0.5 < record["knn_top1_k20"] <= 1.0
    assert read_tensorboard(path / "eval")["eval_knn/knn_top1_k1"][1] == pytest.approx(
        res["knn_top1_k1"]
    )


def test_export_from_the_workdir_equals_the_evaluated_backbone_in_torch(run_dir, tmp_path):
    """``python -m ssljax.export``'s path: newest checkpoint -> safetensors -> torch = Flax."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    from test_export import BasicBlock, TorchResNet

    path, state = run_dir
    out = export.export_from_workdir(str(path), "torch", out_dir=str(tmp_path))
    assert out == str(tmp_path / "backbone.safetensors")
    net = TorchResNet(BasicBlock, [1, 1, 1, 1], base=16, stem="cifar")  # resnet_tiny
    net.load_state_dict(load_file(out), strict=True)
    net.eval()
    run = evaluate.load_run(str(path))
    x = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype(np.float32)
    want = jax.jit(functools.partial(run.backbone.apply, train=False))(run.variables, x)
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-4, rtol=1e-4)
    flax_path = export.export_from_workdir(str(path), "flax", out_dir=str(tmp_path))
    jax.tree.map(
        np.testing.assert_array_equal,
        export.load_flax(flax_path),
        {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]},
    )


# ----------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------
def test_workdir_without_a_run_or_checkpoint_says_what_it_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.load_run(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json.*an empty folder"):
        evaluate.load_run(str(tmp_path))
    (tmp_path / "config.json").write_text(digits_config().to_json_best_effort())
    with pytest.raises(FileNotFoundError, match=r"no finished checkpoint \(found: no such folder"):
        evaluate.load_run(str(tmp_path))
    (tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="found: \\['7.orbax-checkpoint-tmp-1'\\]"):
        evaluate.load_run(str(tmp_path))
    # Looking must not create anything in the workdir.
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json"]


def test_checkpoint_of_another_model_is_refused_naming_the_difference(run_dir):
    path, _ = run_dir
    wider = digits_config(width=0.5)  # the run is resnet_tiny at width 0.25: 16 stem channels
    with pytest.raises(ValueError) as err:
        evaluate.load_run(str(path), wider)
    msg = str(err.value)
    assert "does not match the evaluation config's model" in msg
    assert "conv1/kernel: checkpoint (3, 3, 3, 16), config (3, 3, 3, 32)" in msg
    assert "'width': 0.5" in msg and "'resnet_tiny' with {}" in msg


def test_unknown_protocol_and_preset_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"--protocol='svm' does not exist; valid: \['linear'"):
        evaluate.evaluate_run(str(tmp_path / "nowhere"), "svm")
    with pytest.raises(ValueError, match="--eval_preset='imagenet' does not exist"):
        evaluate.evaluate_run(str(tmp_path / "nowhere"), "knn", eval_preset="imagenet")


@pytest.mark.slow
def test_cli_on_a_short_digits_training_run(tmp_path):
    """The whole path: train 4 steps, then ``python -m ssljax.evaluate`` in a new process."""
    config = digits_config()
    config.data.data_dir = str(tmp_path / "data")
    train.train_and_evaluate(config, str(tmp_path / "run"))
    for protocol in ("linear", "knn"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ssljax.evaluate",
                f"--workdir={tmp_path / 'run'}",
                f"--protocol={protocol}",
                "--eval_override=linear.epochs=5",
                "--eval_override=diagnostics.max_examples=128",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
            env=_timing.child_env(devices=2),
        )
        assert out.returncode == 0, out.stderr[-3000:]
        record = json.loads((tmp_path / "run" / f"eval_{protocol}.json").read_text())
        assert record["step"] == 4
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "config.json").write_text(config.to_json_best_effort())
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssljax.evaluate",
            f"--workdir={tmp_path / 'untrained'}",
            "--protocol=knn",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode != 0 and "no finished checkpoint" in bad.stderr


def test_knn_results_name_the_training_logs_k():
    import ml_collections

    train_knn = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
    eval_knn = ml_collections.ConfigDict({"ks": (10, 20, 100, 200), "temperature": 0.07})
    assert evaluate.training_knn_note(train_knn, eval_knn) == (
        "knn_top1_k20 is the training log's kNN top-1 (config.knn.k=20, temperature 0.07)."
    )
    eval_knn.ks = (10, 100)
    fixed = evaluate.apply_overrides(
        ml_collections.ConfigDict({"knn": eval_knn.to_dict()}), ["knn.ks=10,20,100"]
    )
    assert tuple(fixed.knn.ks) == (10, 20, 100), "the suggested override parses"
    assert evaluate.training_knn_note(train_knn, eval_knn) == (
        "The training log's kNN top-1 uses k=20, temperature 0.07; none of these results does "
        "(ks=[10, 100], temperature 0.07): add --eval_override=knn.ks=10,20,100."
    )
