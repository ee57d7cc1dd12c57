"""Hostile inputs (issue 18): no case loses a good checkpoint, saves or exports a non-finite or
corrupted state, or exits 0 after a non-finite ending; each user error is one clear message.

Each test is named after the item of the issue it reproduces. Most work on tiny pytrees, temp
folders and single functions; the few that run the trainer use the tiny digits config of the
reliability tests.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import raw_checkpoint
from PIL import Image

from ssljax import checkpointing, config_schema, metric_writers, preemption, train
from ssljax.train_state import TrainState

REPO = pathlib.Path(__file__).resolve().parent.parent


def small_config(tmp_path, **overrides):
    import test_reliability  # the tiny digits config of the reliability tests

    return test_reliability.small_config(tmp_path, **overrides)


def _no_compiling(monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))


# ------------------------------------------------------------------------------------------------
# Tiny states and checkpoints.
# ------------------------------------------------------------------------------------------------
def tiny_state(scale: float = 1.0, width: int = 256) -> TrainState:
    """A TrainState of small arrays (random weights, like trained ones), ``scale`` added."""
    w = jax.random.normal(jax.random.PRNGKey(0), (16, width // 16)) + scale
    return TrainState(
        step=jnp.asarray(int(scale), jnp.int32),
        params={"backbone": {"w": w}, "projector": {"b": jnp.ones((4,)) * scale}},
        batch_stats={"backbone": {"mean": jnp.zeros((3,))}},
        opt_state={"mu": {"backbone": {"w": w * 0.5}}},
        probe_params={"k": jnp.ones((2, 2))},
        probe_opt_state={},
        method_state={"target_params": {"backbone": {"w": w + 1.0}}, "target_batch_stats": {}},
        rng=jax.random.PRNGKey(0),
        nonfinite_count=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )


def _abstract(state):
    shapes = jax.eval_shape(lambda s: s, state)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return shapes, jax.tree.map(lambda _: dev, shapes)


def _save(directory, steps, **kwargs) -> None:
    ckpt = checkpointing.Checkpointer(str(directory), async_save=False, **kwargs)
    for s in steps:
        ckpt.save(s, tiny_state(float(s)), {"pos": s})
    ckpt.close()


def _save_unchecked(directory, step, state) -> None:
    """Writes a checkpoint with orbax directly (as an older ssljax did: no checks)."""
    manager = ocp.CheckpointManager(
        str(directory),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True),
        item_names=("state", "loader"),
    )
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave({"kind": "none"})
        ),
    )
    manager.wait_until_finished()
    manager.close()


def _listing(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in pathlib.Path(directory).rglob("*"))


def _restore_latest(directory, like, **kwargs):
    ckpt = checkpointing.Checkpointer(str(directory), async_save=False, **kwargs)
    try:
        return ckpt.restore_latest(*_abstract(like))
    finally:
        ckpt.close()


def _flip_bits_of(step_dir: pathlib.Path, name: str, count: int = 64) -> None:
    """Flips one bit in each of ``count`` values of array ``name`` stored in a checkpoint.

    Through tensorstore, so the files stay well-formed (compression, OCDBT's own checksums of
    its index): the damage decodes without error, as the issue's flipped bytes did.
    """
    import tensorstore as ts

    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "ocdbt", "base": f"file://{step_dir}/state/"},
        "path": f"{name}/",
    }
    store = ts.open(spec, read=True, write=True).result()
    values = np.array(store.read().result())
    flat = values.reshape(-1).view(np.uint32)
    flat[:count] ^= np.uint32(1 << 22)
    store.write(values).result()


# ------------------------------------------------------------------------------------------------
# 1. A mismatch is an error, not damage; another run's folder is never written.
# ------------------------------------------------------------------------------------------------
def test_item1_mismatch_raises_naming_the_field_and_renames_nothing(tmp_path):
    _save(tmp_path, [2, 4])
    before = _listing(tmp_path)
    other = tiny_state().replace(params={"backbone": {"w": jnp.zeros((8, 8))}, "projector": {}})
    with pytest.raises(ValueError, match=r"params/backbone/w.*\(16, 16\).*\(8, 8\)"):
        _restore_latest(tmp_path, other)
    assert _listing(tmp_path) == before, "a mismatched checkpoint is not damaged"


def test_item1_init_from_source_is_never_written_even_when_damaged(tmp_path):
    source = tmp_path / "source" / "checkpoints"
    _save(source, [2, 4])
    for p in (source / "4" / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 0:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    before = _listing(source)
    fresh = tiny_state(7.0)
    got = checkpointing.load_params_from(str(tmp_path / "source"), fresh, _abstract(fresh)[1])
    np.testing.assert_array_equal(
        got.params["backbone"]["w"], tiny_state(2.0).params["backbone"]["w"]
    )
    # The step, optimizer state and RNG stay fresh.
    assert int(got.step) == 7
    np.testing.assert_array_equal(
        got.opt_state["mu"]["backbone"]["w"], fresh.opt_state["mu"]["backbone"]["w"]
    )
    assert _listing(source) == before, "init_from renamed or wrote into the source run"


def test_item1_init_from_takes_weights_across_a_different_optimizer(tmp_path):
    source = tmp_path / "source" / "checkpoints"
    _save(source, [3])
    fresh = tiny_state(5.0).replace(opt_state={"adam": {"nu": jnp.zeros((7,))}})
    before = _listing(source)
    got = checkpointing.load_params_from(str(tmp_path / "source"), fresh, _abstract(fresh)[1])
    np.testing.assert_array_equal(
        got.params["backbone"]["w"], tiny_state(3.0).params["backbone"]["w"]
    )
    np.testing.assert_array_equal(
        got.method_state["target_params"]["backbone"]["w"],
        tiny_state(3.0).method_state["target_params"]["backbone"]["w"],
    )
    assert got.opt_state["adam"]["nu"].shape == (7,)
    assert _listing(source) == before


# ------------------------------------------------------------------------------------------------
# 2. Silent corruption: checksums per array, non-finite checkpoints refused, evaluate/export.
# ------------------------------------------------------------------------------------------------
def test_item2_flipped_bits_are_detected_and_the_previous_checkpoint_used(tmp_path):
    _save(tmp_path, [2, 4])
    _flip_bits_of(tmp_path / "4", "params.backbone.w")
    state, loader = _restore_latest(tmp_path, tiny_state())
    np.testing.assert_array_equal(
        state.params["backbone"]["w"], tiny_state(2.0).params["backbone"]["w"]
    )
    assert loader == {"pos": 2}
    assert (tmp_path / "4.damaged").is_dir() and not (tmp_path / "4").exists()


def test_item2_a_non_finite_checkpoint_is_refused_at_restore(tmp_path):
    _save(tmp_path, [2])
    poisoned = tiny_state(4.0)
    poisoned = poisoned.replace(
        params={**poisoned.params, "projector": {"b": jnp.full((4,), jnp.inf)}}
    )
    _save_unchecked(tmp_path, 4, poisoned)
    state, _ = _restore_latest(tmp_path, tiny_state())
    assert int(state.step) == 2
    assert (tmp_path / "4.damaged").is_dir()


def test_item2_a_non_finite_state_is_never_saved(tmp_path):
    _save(tmp_path, [2])
    bad = tiny_state(4.0)
    bad = bad.replace(
        method_state={
            **bad.method_state,
            "target_params": {
                "backbone": {"w": bad.method_state["target_params"]["backbone"]["w"] * jnp.nan}
            },
        }
    )
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(FloatingPointError, match=r"method_state/target_params/backbone/w.*step 2"):
        ckpt.save(4, bad, None)
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory):
    """A run folder (test_evaluate's layout) whose newest checkpoint has a NaN in the backbone."""
    import test_evaluate

    path = tmp_path_factory.mktemp("poisoned")
    state = test_evaluate.make_workdir(path, test_evaluate.digits_config())
    leaves, treedef = jax.tree.flatten(state.params["backbone"])
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    params = {**state.params, "backbone": jax.tree.unflatten(treedef, leaves)}
    _save_unchecked(path / "checkpoints", 8, state.replace(params=params, step=state.step + 4))
    return path


def test_item2_evaluate_and_export_skip_non_finite_weights(poisoned_run, tmp_path):
    from ssljax import evaluate, export

    run = evaluate.load_run(str(poisoned_run), with_data=False)
    assert run.step == 4, "the NaN checkpoint of step 8 was used"
    for leaf in jax.tree.leaves(run.params):
        assert np.isfinite(np.asarray(leaf)).all()
    with pytest.raises(ValueError, match="NaN or infinity"):
        evaluate.load_run(str(poisoned_run), step=8, with_data=False)
    with pytest.raises(ValueError, match="NaN or infinity"):
        export.export_flax({"w": np.array([1.0, np.nan])}, {}, str(tmp_path / "x.msgpack"))
    with pytest.raises(ValueError, match="NaN or infinity"):
        export.export_torch({"w": np.array([np.inf])}, {}, str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.msgpack").exists()


# ------------------------------------------------------------------------------------------------
# 3. The non-finite guard: updated params checked, every step counted, non-zero exit.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_item3_a_step_whose_update_overflows_is_skipped():
    import test_train

    # Finite loss and gradients; lr * weight_decay * params overflows float32 in the update.
    config = test_train.small_config(
        "byol",
        **{
            "optimizer.name": "sgd",
            "optimizer.base_lr": 3e38,
            "optimizer.weight_decay": 3e38,
            "optimizer.exclude_from_weight_decay": (),
        },
    )
    _, state, step = test_train.build(config)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)),
        "label": jnp.zeros((32,), jnp.int32),
    }
    after, metrics = step(state, batch)
    # Loss and gradients are finite; the update is not: the step must be skipped.
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["step_finite"]) == 0.0
    assert int(after.nonfinite_count) == 1
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_item3_the_update_decides_whether_a_step_is_finite():
    grads = {"w": jnp.ones((3,))}
    ok = ({"w": jnp.ones((3,))}, {})
    assert bool(train.step_is_finite(jnp.float32(1.0), grads, ok))
    # Finite loss and gradients, but the updated params overflowed: not a finite step.
    blown = ({"w": jnp.array([1.0, jnp.inf, 2.0])}, {})
    assert not bool(train.step_is_finite(jnp.float32(1.0), grads, blown))
    assert not bool(train.step_is_finite(jnp.float32(jnp.nan), grads, ok))


def test_item3_consecutive_limit_is_counted_on_every_step_between_flushes():
    counts = [0, 1, 2, 3, 0, 0, 0, 0]
    rows = [(s, {"nonfinite_count": c}) for s, c in zip(range(1, 9), counts, strict=True)]
    with pytest.raises(FloatingPointError, match="3 consecutive .* step 4"):
        train.check_nonfinite_counts(rows, limit=3, latest_checkpoint="step 0 in /x")
    train.check_nonfinite_counts(rows, limit=4, latest_checkpoint="step 0 in /x")


@pytest.mark.slow
def test_item3_a_run_ending_on_non_finite_steps_fails_and_saves_nothing_non_finite(tmp_path):
    workdir = tmp_path / "run"
    config = small_config(
        tmp_path,
        num_steps=6,
        log_every_steps=50,
        max_consecutive_nonfinite=10,
        **{
            "optimizer.name": "sgd",
            "optimizer.base_lr": 1e30,
            "optimizer.exclude_from_weight_decay": (),
        },
    )
    with pytest.raises(FloatingPointError, match="non-finite"):
        train.train_and_evaluate(config, str(workdir))
    assert not (workdir / "summary.json").exists()
    ckpts = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert ckpts, "the checkpoints of steps 2 and 4 hold the last finite state"
    for p in ckpts:
        restored = raw_checkpoint.read_state(p / "state")
        for leaf in jax.tree.leaves(restored["params"]):
            assert np.isfinite(leaf).all(), p
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Every step was flushed and counted, although the log interval (50) was never reached.
    assert [r["step"] for r in rows if "step_finite" in r] == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------------
# 4. One run per workdir.
# ------------------------------------------------------------------------------------------------
def test_item4_second_run_on_a_locked_workdir_is_refused(tmp_path, monkeypatch):
    from ssljax import workdir_lock

    workdir = tmp_path / "run"
    workdir.mkdir()
    with workdir_lock.WorkdirLock(str(workdir)):
        _no_compiling(monkeypatch)
        with pytest.raises(
            RuntimeError, match=rf"in use by another training run \(pid {os.getpid()}"
        ):
            train.train_and_evaluate(small_config(tmp_path), str(workdir))
        with pytest.raises(RuntimeError, match="in use"):
            workdir_lock.WorkdirLock(str(workdir)).acquire()
    assert not (workdir / "config.json").exists()


def test_item4_lock_of_a_crashed_run_is_not_stale(tmp_path):
    from ssljax import workdir_lock

    code = (
        "import os, sys; from ssljax import workdir_lock; "
        "workdir_lock.WorkdirLock(sys.argv[1]).acquire(); os._exit(9)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 9
    # The crashed run's record is still there, but its lock died with it.
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] != os.getpid()
    with workdir_lock.WorkdirLock(str(tmp_path)):
        record = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()


# ------------------------------------------------------------------------------------------------
# 5. SIGINT like SIGTERM; the in-flight async checkpoint survives an exception.
# ------------------------------------------------------------------------------------------------
def test_item5_first_ctrl_c_asks_to_stop_second_aborts():
    # Python's own handler to start from: a pytest started in the background by a
    # non-interactive shell inherits SIGINT ignored (SIG_IGN). The original is put back after.
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _first_ctrl_c_asks_to_stop_second_aborts()
    finally:
        signal.signal(signal.SIGINT, original)


def _first_ctrl_c_asks_to_stop_second_aborts():
    with preemption.PreemptionWatcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert watcher.should_stop(2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Ctrl-C during start-up (outer watcher), then again in the loop (inner one): aborts.
    with preemption.PreemptionWatcher():
        os.kill(os.getpid(), signal.SIGINT)
        with preemption.PreemptionWatcher() as inner:
            assert inner.should_stop(1)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_item5_exception_in_the_loop_waits_for_the_async_checkpoint(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    config = small_config(tmp_path, num_steps=8, **{"checkpoint.async_save": True})
    original = checkpointing.Checkpointer.save

    def save_then_interrupt(self, step, *args, **kwargs):
        original(self, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, str(workdir))
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert names == ["2", "4"], names


# ------------------------------------------------------------------------------------------------
# 6. A step damaged twice.
# ------------------------------------------------------------------------------------------------
def test_item6_damaged_twice_is_renamed_to_a_free_name(tmp_path):
    _save(tmp_path, [2, 4])
    (tmp_path / "4.damaged").mkdir()
    (tmp_path / "4.damaged" / "old").write_text("first damage")
    for p in (tmp_path / "4" / "state").rglob("*"):
        if p.is_file() and "/d/" in str(p):
            p.write_bytes(b"")
    state, _ = _restore_latest(tmp_path, tiny_state())
    assert int(state.step) == 2
    assert (tmp_path / "4.damaged" / "old").read_text() == "first damage"
    assert (tmp_path / "4.damaged.1").is_dir()


# ------------------------------------------------------------------------------------------------
# 7. A checkpoint folder that cannot be written is found at start-up.
# ------------------------------------------------------------------------------------------------
def test_item7_unwritable_checkpoint_folder_fails_at_start_up(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    workdir.mkdir()
    # root ignores permission bits: a file where the folder should be is unwritable for all.
    (workdir / "checkpoints").write_text("not a folder")
    _no_compiling(monkeypatch)
    with pytest.raises(PermissionError, match=r"checkpoints.*not writable"):
        train.train_and_evaluate(small_config(tmp_path), str(workdir))


# ------------------------------------------------------------------------------------------------
# 8. Image modes in prepare.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, suffix, pixels",
    [
        ("I;16", "png", np.array([[0, 32896, 65535]], np.uint16)),  # 16-bit grayscale PNG
        ("I", "tiff", np.array([[0, 32896, 65535]], np.int32)),
        ("F", "tiff", np.array([[0.0, 0.5, 1.0]], np.float32)),
        ("LA", "png", np.array([[[0, 255], [128, 0], [255, 10]]], np.uint8)),
    ],
)
def test_item8_wide_and_alpha_modes_are_scaled_to_8_bits(tmp_path, mode, suffix, pixels):
    from ssljax.data import image_folder

    want = [0, 128, 255]
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(pixels).save(path)
    err, found_mode, h, w, sums = image_folder.inspect_file(str(path))
    assert err is None and found_mode == mode and (h, w) == (1, 3)
    with Image.open(path) as image:
        rgb = np.asarray(image_folder.to_rgb(image))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], want)
    np.testing.assert_allclose(sums[0], [sum(want)] * 3)


def test_item8_palette_with_transparency_and_out_of_range_floats(tmp_path):
    from ssljax.data import image_folder

    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        rgb = np.asarray(image_folder.to_rgb(image))
    np.testing.assert_array_equal(rgb[0], [[255, 0, 0], [0, 0, 255]])
    Image.fromarray(np.array([[0.0, 1000.5]], np.float32)).save(tmp_path / "f.tiff")
    err, *_ = image_folder.inspect_file(str(tmp_path / "f.tiff"))
    assert err is not None and "mode F" in err and "[0, 1]" in err


def test_item8_prepare_stores_a_16_bit_png_scaled_not_white(tmp_path):
    import tensorflow_datasets as tfds

    from ssljax.data.prepare import prepare

    ramp = (np.arange(16, dtype=np.uint32).reshape(4, 4) * 4369).astype(np.uint16)  # 0..65535
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "root" / split / c).mkdir(parents=True)
            Image.fromarray(ramp).save(tmp_path / "root" / split / c / "x.png")
    prepare("image_folder", tmp_path / "data", root=tmp_path / "root")
    records = tfds.data_source("image_folder", split="train", data_dir=str(tmp_path / "data"))
    stored = np.asarray(records[0]["image"])
    want = np.round(ramp / 257.0).astype(np.uint8)  # 0, 17, 34, ..., 255
    np.testing.assert_array_equal(stored, np.stack([want] * 3, axis=-1))


# ------------------------------------------------------------------------------------------------
# 9. Every split the run needs is checked at start-up.
# ------------------------------------------------------------------------------------------------
def test_item9_missing_splits_fail_at_start_up_naming_them(tmp_path, monkeypatch):
    _no_compiling(monkeypatch)
    missing_eval = small_config(tmp_path, **{"data.eval_split": "validation", "knn.at_end": True})
    with pytest.raises(ValueError, match=r"config.data.eval_split.*'validation'.*'test'"):
        train.train_and_evaluate(missing_eval, str(tmp_path / "a"))
    missing_train = small_config(tmp_path, **{"data.train_split": "training"})
    with pytest.raises(ValueError, match=r"config.data.train_split.*'training'.*'train'"):
        train.train_and_evaluate(missing_train, str(tmp_path / "b"))


# ------------------------------------------------------------------------------------------------
# 10. config.json only after a successful start-up; batch and seed validated.
# ------------------------------------------------------------------------------------------------
def test_item10_batch_larger_than_dataset_fails_early_and_writes_no_config(tmp_path, monkeypatch):
    _no_compiling(monkeypatch)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config.global_batch.*4096.*examples"):
        train.train_and_evaluate(small_config(tmp_path, global_batch=4096), str(workdir))
    assert not (workdir / "config.json").exists()
    with pytest.raises(ValueError, match="config.seed"):
        config_schema.validate(small_config(tmp_path, seed=-1), num_devices=1)


def test_item10_config_json_without_checkpoint_does_not_refuse_a_rerun(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(small_config(tmp_path, global_batch=4096).to_json())
    checkpointing.check_config_matches(small_config(tmp_path), str(workdir))  # no error
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    with pytest.raises(ValueError, match="global_batch"):
        checkpointing.check_config_matches(small_config(tmp_path), str(workdir))


# ------------------------------------------------------------------------------------------------
# 11. metrics.jsonl and TensorBoard are cut back to the resumed checkpoint.
# ------------------------------------------------------------------------------------------------
def _tensorboard_steps(logdir, tag="loss"):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), purge_orphaned_data=True)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_item11_resume_truncates_metrics_to_the_checkpoint(tmp_path):
    writer = metric_writers.MetricWriter(str(tmp_path))
    writer.write_scalars(0, {"knn_top1": 0.1})
    for s in range(1, 7):
        writer.write_scalars(s, {"loss": 10.0 - s})
    writer.close()  # "killed" after step 6; the newest checkpoint is step 4
    writer = metric_writers.MetricWriter(str(tmp_path), resume_step=4)
    for s in range(5, 9):
        writer.write_scalars(s, {"loss": 20.0 - s})
    writer.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["loss"] for r in rows[5:]] == [15.0, 14.0, 13.0, 12.0]
    assert _tensorboard_steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.slow
def test_item11_metrics_after_a_kill_between_checkpoint_and_flush(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    config = small_config(tmp_path, num_steps=8, log_every_steps=5)
    original = checkpointing.Checkpointer.save

    class Killed(BaseException):
        pass

    def save_then_die(self, step, *args, **kwargs):
        original(self, step, *args, **kwargs)
        if step == 4:
            raise Killed  # as SIGKILL right after checkpoint 4, before the flush at step 5

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
        train.train_and_evaluate(config, str(workdir))
    monkeypatch.setattr(checkpointing.Checkpointer, "save", original)
    train.train_and_evaluate(config, str(workdir))
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert _tensorboard_steps(workdir) == list(range(1, 9))


# ------------------------------------------------------------------------------------------------
# 12. Smaller ones.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["probe.lr", "num_epochs", "optimizer.base_lr", "tau_base"])
def test_item12_nan_values_are_refused_naming_the_field(tmp_path, field):
    config = small_config(tmp_path, **{field: math.nan})
    with pytest.raises(ValueError, match=rf"config.{field}: .*nan"):
        config_schema.validate(config, num_devices=1)


def test_item12_unknown_override_is_one_line_naming_the_field(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssljax.main",
            "--config=configs/byol.py",
            f"--workdir={tmp_path}",
            "--config.nonexistent=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "nonexistent" in result.stderr and "configs/byol.py" in result.stderr


def test_item12_sigterm_before_the_loop_is_honoured_by_it():
    with preemption.PreemptionWatcher() as outer:
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. during start-up or compilation
        with preemption.PreemptionWatcher() as inner:
            assert inner.should_stop(1)
        assert outer.should_stop(1)


def test_item12_restart_from_zero_is_said_loudly(tmp_path, caplog):
    _save(tmp_path, [2, 4])
    for step in ("2", "4"):
        for p in (tmp_path / step / "state").rglob("*"):
            if p.is_file() and "/d/" in str(p):
                p.write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert _restore_latest(tmp_path, tiny_state()) is None
    assert any(
        r.levelname == "ERROR" and "None of the 2 checkpoint" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # As tensorstore reports it (measured on a full 256 KiB tmpfs), JSON spec abridged.
        ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params.backbone.w/0.0" in OCDBT database at '
            'local file "/x/4.orbax-checkpoint-tmp/state": Failed to write 1200589 bytes to '
            "file 14: No space left on device [os_error_code='28'] "
            "[tensorstore_spec='" + "{}" * 500 + "']\n" + "more\n" * 50
        ),
    ],
)
def test_item12_disk_full_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, error
):
    _save(tmp_path, [2])
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(ckpt._manager, "save", full)
    with pytest.raises(OSError) as err:
        ckpt.save(4, tiny_state(4.0), None)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert "checkpoint 4" in msg and "No space left" in msg and "GiB free" in msg
    assert "previous checkpoint (step 2) is kept" in msg
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]
