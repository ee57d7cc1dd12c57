"""Reliability: exact resumption after SIGKILL, clean stop on SIGTERM, damaged checkpoints,
non-finite steps, a workdir of another run, and start-up checks.

The process-level tests run ``python -m ssljax.main`` on the embedded digits dataset, as a user
would, and compare the final parameters bit for bit with an uninterrupted run.
"""

import atexit
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import _timing
import jax
import numpy as np
import pytest
import raw_checkpoint

from ssljax import config_schema, train

REPO = pathlib.Path(__file__).resolve().parent.parent
# Twelve steps, a checkpoint every two: enough to interrupt between checkpoints and resume
# several steps before the end (24 steps took twice as long and tested nothing more).
STEPS = 12
OVERRIDES = [
    f"--config.num_steps={STEPS}",
    "--config.global_batch=32",
    "--config.checkpoint.every_steps=2",
    "--config.log_every_steps=1",
    "--config.knn.at_start=False",
    "--config.knn.at_end=False",
    "--config.knn.every_epochs=0",
    "--config.heads.projector_hidden=(64,)",
    "--config.heads.predictor_hidden=(64,)",
]


def _env(tmp_root: pathlib.Path) -> dict[str, str]:
    # Two devices; the session's other XLA flags (its fast-compiling -O1) kept: every run of a
    # test compiles the same program, which keeps results bitwise equal.
    env = _timing.child_env(devices=2)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _command(workdir: pathlib.Path, data_dir: pathlib.Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ssljax.main",
        "--config=configs/byol.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *OVERRIDES,
    ]


def _run(workdir, data_dir, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(workdir, data_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def _complete_steps(workdir: pathlib.Path) -> list[int]:
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _start_and_signal(workdir, data_dir, env, sig, after_step: int) -> subprocess.Popen:
    """Starts a run and sends ``sig`` once a checkpoint of step >= after_step is complete."""
    proc = subprocess.Popen(
        _command(workdir, data_dir),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        steps = _complete_steps(workdir)
        if steps and steps[-1] >= after_step:
            break
        if proc.poll() is not None:
            out = proc.stdout.read()
            pytest.fail(f"run ended before step {after_step}: rc={proc.returncode}\n{out[-3000:]}")
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    return proc


def _final_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    step = _complete_steps(workdir)[-1]
    restored = raw_checkpoint.read_state(workdir / "checkpoints" / str(step) / "state")
    keys = ("params", "method_state", "opt_state", "probe_params", "batch_stats")
    leaves = jax.tree_util.tree_flatten_with_path({k: restored[k] for k in keys})[0]
    return step, {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run(workdir, data_dir, _env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return _final_params(workdir)


def _assert_bitwise_equal(a, b):
    step_a, pa = a
    step_b, pb = b
    assert step_a == step_b == STEPS
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_sigkill_then_restart_is_bitwise_identical(tmp_path, data_dir, uninterrupted):
    workdir = tmp_path / "killed"
    env = _env(workdir)
    proc = _start_and_signal(workdir, data_dir, env, signal.SIGKILL, after_step=4)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _complete_steps(workdir)[-1]
    assert 4 <= killed_at < STEPS
    result = _run(workdir, data_dir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from step {killed_at}" in result.stderr
    _assert_bitwise_equal(_final_params(workdir), uninterrupted)


def test_sigterm_checkpoints_exits_zero_and_resumes(tmp_path, data_dir, uninterrupted):
    workdir = tmp_path / "preempted"
    env = _env(workdir)
    proc = _start_and_signal(workdir, data_dir, env, signal.SIGTERM, after_step=4)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["preempted"] == 1.0 and summary["step"] < STEPS
    # The checkpoint of the step in flight was written synchronously before exiting.
    assert _complete_steps(workdir)[-1] == summary["step"]
    result = _run(workdir, data_dir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from step {summary['step']}" in result.stderr
    _assert_bitwise_equal(_final_params(workdir), uninterrupted)


# ------------------------------------------------------------------------------------------------
# In-process behaviours.
# ------------------------------------------------------------------------------------------------
_DIGITS_DATA_DIR: list[str] = []


def _digits_data_dir() -> str:
    """One prepared digits dataset per test process (preparing takes seconds); removed at exit."""
    if not _DIGITS_DATA_DIR:
        _DIGITS_DATA_DIR.append(tempfile.mkdtemp(prefix="ssljax-test-digits-"))
        atexit.register(shutil.rmtree, _DIGITS_DATA_DIR[0], ignore_errors=True)
    return _DIGITS_DATA_DIR[0]


def small_config(tmp_path, **overrides):
    del tmp_path  # each test's workdir is its own; the prepared dataset is shared
    c = config_schema.load_config(str(REPO / "configs" / "byol.py"))
    c.data.data_dir = _digits_data_dir()
    c.global_batch = 32
    c.num_steps = 6
    c.checkpoint.every_steps = 2
    c.checkpoint.async_save = False
    c.log_every_steps = 1
    c.knn.at_start = False
    c.knn.at_end = False
    c.knn.every_epochs = 0.0
    c.heads.projector_hidden = (64,)
    c.heads.predictor_hidden = (64,)
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    workdir = tmp_path / "run"
    config = small_config(tmp_path)
    train.train_and_evaluate(config, str(workdir))
    assert _complete_steps(workdir) == [2, 4, 6]
    # Damage the newest checkpoint: truncate every data file of its state.
    newest = workdir / "checkpoints" / "6"
    data_files = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in data_files:
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 3)
    # The same config again (the same compiled step, from the compilation cache): the run is
    # unfinished because its newest checkpoint does not read back.
    with caplog.at_level("INFO"):
        out = train.train_and_evaluate(config, str(workdir))
    assert any("checkpoints/6 is damaged" in r.getMessage() for r in caplog.records)
    assert any("Resumed from step 4" in r.getMessage() for r in caplog.records)
    assert (workdir / "checkpoints" / "6.damaged").is_dir(), "the damaged checkpoint is kept"
    assert 6 in _complete_steps(workdir)
    assert np.isfinite(out["loss"])
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Steps 5 and 6 were trained twice (before the damage, and after resuming at 4); the rows
    # of the first time were cut on resuming, so the history is an uninterrupted run's.
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_nonfinite_steps_leave_state_unchanged_then_stop(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    # The damaged-checkpoint test's config (its compiled step, from the compilation cache),
    # started from NaN weights: every step's loss is non-finite, as after a divergence (a huge
    # learning rate would do the same at the cost of compiling another step).
    # No checkpoint falls within the run: one of NaN weights would be refused (a checkpoint of a
    # diverging run is taken of the last finite state; test_hostile covers the refusal).
    config = small_config(tmp_path, max_consecutive_nonfinite=3, **{"checkpoint.every_steps": 100})
    init_state = train.init_state

    def poisoned_init_state(*args, **kwargs):
        state = init_state(*args, **kwargs)
        return state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))

    monkeypatch.setattr(train, "init_state", poisoned_init_state)
    with pytest.raises(
        FloatingPointError, match=r"3 consecutive steps .* ending at step 3.*Newest checkpoint"
    ):
        train.train_and_evaluate(config, str(workdir))
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step_finite"] for r in rows if "step_finite" in r] == [0.0, 0.0, 0.0]
    assert [r["nonfinite_count"] for r in rows if "nonfinite_count" in r] == [1.0, 2.0, 3.0]


def test_nonfinite_step_is_skipped_inside_the_jitted_step():
    import jax
    import jax.numpy as jnp
    import test_train  # the tiny-network builders of the training tests

    config = test_train.small_config("byol")
    _, state, step = test_train.build(config)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)),
        "label": jnp.zeros((32,), jnp.int32),
    }
    good, _ = step(state, batch)
    # Poison the params: the loss becomes NaN, and the step must keep everything as it was.
    poisoned = good.replace(params=jax.tree.map(lambda x: x * jnp.nan, good.params))
    after, metrics = step(poisoned, batch)
    assert float(metrics["step_finite"]) == 0.0
    assert int(after.step) == int(poisoned.step) + 1
    assert int(after.nonfinite_count) == 1 and int(after.nonfinite_total) == 1
    for a, b in zip(
        jax.tree.leaves(after.opt_state), jax.tree.leaves(poisoned.opt_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(after.method_state), jax.tree.leaves(poisoned.method_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_workdir_of_another_run_is_refused(tmp_path, caplog):
    workdir = tmp_path / "run"
    # The damaged-checkpoint test's config (its compiled step, from the compilation cache),
    # then the run made unfinished at step 2, as if it had been killed there.
    config = small_config(tmp_path)
    train.train_and_evaluate(config, str(workdir))
    for step in (4, 6):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    other = small_config(tmp_path, tau_base=0.9, **{"optimizer.base_lr": 0.5})
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(other, str(workdir))
    msg = str(err.value)
    assert "tau_base" in msg and "optimizer.base_lr" in msg and "allow_config_change" in msg
    assert _complete_steps(workdir) == [2], "nothing was written by the refused run"
    # Allowed, a changed field resumes with a warning naming it. (This field changes nothing
    # that is compiled, so the step is the cached one; any other field takes the same path.)
    changed = small_config(tmp_path, max_consecutive_nonfinite=7, allow_config_change=True)
    with caplog.at_level("WARNING"):
        out = train.train_and_evaluate(changed, str(workdir))
    warned = [r.getMessage() for r in caplog.records if "despite config changes" in r.getMessage()]
    assert warned and "max_consecutive_nonfinite: checkpoint has " in warned[0], warned
    assert "this run has 7" in warned[0], warned
    assert np.isfinite(out["loss"]) and _complete_steps(workdir)[-1] == 6


def test_startup_checks_name_the_field_before_compiling(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1) or pytest.fail("compiled"))
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    if os.access(readonly / "x", os.W_OK) or os.geteuid() == 0:
        # root ignores permission bits; use a path under a regular file instead.
        blocker = tmp_path / "file"
        blocker.write_text("")
        readonly = blocker / "sub"
    with pytest.raises(PermissionError, match="not writable"):
        train.train_and_evaluate(small_config(tmp_path), str(readonly))
    bad = small_config(tmp_path, global_batch=30)
    with pytest.raises(ValueError, match="config.global_batch"):
        config_schema.validate(bad, num_devices=8)
    not_prepared = small_config(
        tmp_path, **{"data.name": "image_folder", "data.root": str(tmp_path)}
    )
    with pytest.raises(ValueError, match="ssljax.data.prepare"):
        train.train_and_evaluate(not_prepared, str(tmp_path / "w2"))
    vit = small_config(tmp_path, **{"model.backbone": "vit_tiny_16", "data.image_size": 24})
    with pytest.raises(ValueError, match="patch"):
        train.train_and_evaluate(vit, str(tmp_path / "w3"))
    assert not compiled


def test_small_replicated_arrays_are_saved_whole_large_ones_by_replica(tmp_path, monkeypatch):
    """Replica-parallel saving only where a replica's slice is >= 1 MiB, and the round trip is
    exact either way (checkpointing.MIN_REPLICA_PARALLEL_SLICE_BYTES)."""
    from orbax.checkpoint._src.serialization import replica_slices

    from ssljax import checkpointing, sharding

    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    repl = sharding.replicated(mesh)
    rng = np.random.default_rng(0)
    big_rows = 8 * checkpointing.MIN_REPLICA_PARALLEL_SLICE_BYTES // (4 * 256)  # 1 MiB a slice
    state = {
        "bias": rng.normal(size=(64,)).astype(np.float32),
        "kernel": rng.normal(size=(3, 3, 16, 32)).astype(np.float32),
        "big": rng.normal(size=(big_rows, 256)).astype(np.float32),
    }
    state = jax.device_put(state, repl)
    sliced = []
    original = replica_slices.ReplicaSlice.data

    def data(self):
        if self.slice_args is not None:
            sliced.append(self.unsliced_data.shape)
        return original(self)

    monkeypatch.setattr(replica_slices.ReplicaSlice, "data", data)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    try:
        ckpt.save(1, state, None)
        shapes = jax.eval_shape(lambda s: s, state)
        restored, _ = ckpt.restore(1, shapes, jax.tree.map(lambda _: repl, shapes))
    finally:
        ckpt.close()
    # Only the large array was cut into per-replica slices (one per device, all on this host).
    assert sliced and set(sliced) == {(big_rows, 256)}, sliced
    for k in state:
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k]), err_msg=k)
