"""Multi-process training on one host: two JAX processes equal one process with their devices.

Each worker is this file run as a script (``python tests/test_multiprocess.py --process_id ...``)
in a fresh interpreter with its own ``XLA_FLAGS`` device count: JAX fixes the device count and
the distributed runtime once per process, so they cannot share the pytest process. The workers
join through :func:`ssljax.distributed.initialize` (a coordinator on localhost, gloo collectives
between the CPU processes), each loads only its half of every global batch with
``ssljax.train.make_train_loader(config, process_index=, process_count=)`` (main's loader), and
they run BYOL steps of the real train step (``ssljax.train``) on scikit-learn's digits.

The bad-input tests check the start-up errors: an unreachable coordinator, process counts that
contradict the cluster or the coordinator, fewer processes than announced, uneven devices.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from param_compare import assert_params_close

from ssljax import tree_paths

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 3
GLOBAL_BATCH = 16
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_STEP_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_NTASKS_PER_NODE",
)


# ----------------------------------------------------------------------------------------------
# Worker (runs in a subprocess).
# ----------------------------------------------------------------------------------------------
def small_config():
    """BYOL on digits with the tiny ResNet at 16 px, global batch 16: a cheap real step."""
    from ssljax import config_schema

    c = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":digits")
    c.model.backbone = "resnet_tiny"
    c.data.image_size = 16
    c.global_batch = GLOBAL_BATCH
    c.num_steps = 100
    c.warmup_epochs = 0.0
    c.heads.projector_hidden = (64,)
    c.heads.projector_dim = 32
    c.heads.predictor_hidden = (64,)
    c.heads.predictor_dim = 32
    return c


def _flat(tree, prefix: str) -> dict[str, np.ndarray]:
    # Replicated over every process: this process's first shard is the whole array.
    return tree_paths.flatten(
        tree, sep="/", prefix=prefix, leaf=lambda leaf: np.asarray(leaf.addressable_data(0))
    )


def run_worker(args: argparse.Namespace) -> None:
    """Joins the job, runs STEPS train steps, saves the state (rank 0 ... n-1 alike)."""
    from ssljax import distributed

    setup = distributed.initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        timeout_s=args.timeout_s,
    )
    if args.init_only:
        print(f"initialised {setup}", flush=True)
        return

    import jax

    from ssljax import data, sharding, train

    config = small_config()
    info = data.get_dataset_info(config.data)
    comps = train.build_components(
        config, info, num_train_examples=info.split_sizes[config.data.train_split]
    )
    mesh = sharding.make_mesh()
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    init = functools.partial(train.init_state, comps, config)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    state_sh = sharding.infer_state_sharding(mesh, shapes)
    state = jax.jit(init, out_shardings=state_sh)(jax.random.PRNGKey(config.seed))
    initial = _flat(state.params, "init/")
    step = jax.jit(
        train.make_train_step(comps, config),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, repl),
    )
    loader = train.make_train_loader(
        config, process_index=setup.process_id, process_count=setup.num_processes
    )
    losses, indices = [], []
    for _ in range(STEPS):
        local = next(loader)
        indices.append(local["index"])
        batch = {
            k: jax.make_array_from_process_local_data(batch_sh, local[k])
            for k in ("image", "label")
        }
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    out = {
        **initial,
        **_flat(state.params, "params/"),
        **_flat(state.batch_stats, "batch_stats/"),
        **_flat(state.method_state["target_params"], "target_params/"),
        **_flat(state.probe_params, "probe_params/"),
        "loss": np.asarray(losses),
        "indices": np.stack(indices),
        "devices": np.asarray([jax.device_count(), jax.local_device_count()]),
    }
    np.savez(args.out, **out)


# ----------------------------------------------------------------------------------------------
# Helpers for the tests.
# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SLURM_VARS}
    import _timing  # benchmarks/ is on pytest's path, not on the workers' (they run this file)

    # The device count of this worker; the session's other XLA flags (its -O1) kept.
    env["XLA_FLAGS"] = _timing.child_env(devices=devices)["XLA_FLAGS"]
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_LOCAL_DEVICE_IDS", "JAX_NUM_CPU_DEVICES"):
        env.pop(key, None)
    return env


def start_worker(
    *, devices: int, num_processes: int, process_id: int, port: int | None, out=None, **flags
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
    ]
    if port is not None:
        cmd.append(f"--coordinator_address=127.0.0.1:{port}")
    if out is not None:
        cmd.append(f"--out={out}")
    cmd += [f"--{k}={v}" for k, v in flags.items()]
    return subprocess.Popen(
        cmd,
        env=worker_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=str(REPO),
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"worker hung for {timeout} s; output:\n{output[-4000:]}") from None
    return proc.returncode, output


# ----------------------------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    """The tests must not inherit a real SLURM allocation's variables."""
    for key in (*SLURM_VARS, "JAX_COORDINATOR_ADDRESS", "JAX_LOCAL_DEVICE_IDS"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_their_devices(tmp_path):
    port = free_port()
    procs = [
        start_worker(
            devices=2,
            num_processes=2,
            process_id=i,
            port=port,
            out=tmp_path / f"p{i}.npz",
            timeout_s=120,
        )
        for i in range(2)
    ]
    # The reference run starts alongside: three compiles share the machine's cores.
    single = start_worker(
        devices=4, num_processes=1, process_id=0, port=None, out=tmp_path / "single.npz"
    )
    for name, proc in [("process 0", procs[0]), ("process 1", procs[1]), ("single", single)]:
        code, output = finish(proc)
        assert code == 0, f"{name} failed ({code}):\n{output[-4000:]}"
    p0, p1, ref = (np.load(tmp_path / f"{n}.npz") for n in ("p0", "p1", "single"))

    # Each process saw 2 of the 4 devices and fed its own half of every global batch.
    assert p0["devices"].tolist() == [4, 2] and p1["devices"].tolist() == [4, 2]
    assert ref["devices"].tolist() == [4, 4]
    halves = np.concatenate([p0["indices"], p1["indices"]], axis=1)
    np.testing.assert_array_equal(halves, ref["indices"])
    assert p0["indices"].shape == (STEPS, GLOBAL_BATCH // 2)
    assert not set(p0["indices"].ravel()) & set(p1["indices"].ravel())

    keys = [k for k in ref.files if k not in ("indices", "devices")]
    assert any(k.startswith("target_params/") for k in keys)
    assert set(p0.files) == set(ref.files) == set(p1.files)
    for key in keys:
        # Both processes hold bit-identical replicas (one program, one all-reduce).
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
    # Equal to one process with the same 4 devices, up to reduction order (the rule shared by
    # every device/process-count comparison: tests/param_compare.py), here ten times stricter
    # than its defaults for every tensor with a gradient: 2 processes x 2 devices split the
    # batch as 1 process x 4 devices does, so only the all-reduce's order differs.
    worst = assert_params_close(
        {k: p0[k] for k in keys}, {k: ref[k] for k in keys}, rtol=1e-5, atol=1e-7
    )
    print(f"largest difference / bound: {worst:.2f}")
    # The comparison is not vacuous: training moved the params.
    moved = [
        k for k in keys if k.startswith("params/") and not np.allclose(ref[k], ref["init/" + k[7:]])
    ]
    assert len(moved) > 10
    assert np.all(np.isfinite(ref["loss"]))


# ------------------------------------------------------------------------------------------
# Bad input: errors at start-up that say what to change.
# ------------------------------------------------------------------------------------------
def test_unreachable_coordinator_times_out_with_message():
    from ssljax import distributed

    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=1,
            timeout_s=1.0,
        )
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 5.0
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "within 1 s" in msg
    assert "--coordinator_address" in msg and "--distributed_timeout_s" in msg


def test_fewer_processes_than_announced_exit_with_message(tmp_path):
    # Process 0 of 2 alone: the coordinator is up, nobody joins. JAX alone would abort
    # from C++ after its deadline; the watchdog says what to change and exits first.
    proc = start_worker(
        devices=1, num_processes=2, process_id=0, port=free_port(), timeout_s=2, init_only=1
    )
    start = time.monotonic()
    code, output = finish(proc, timeout=60)
    from ssljax import distributed

    assert code == distributed.TIMEOUT_EXIT_CODE, output[-3000:]
    assert time.monotonic() - start < 30
    assert "did not all join" in output and "--num_processes" in output


def test_process_count_not_matching_coordinator_or_devices():
    port_a, port_b = free_port(), free_port()
    procs = {
        # Pair A: process 1 was told there are 3 processes, the coordinator knows 2.
        "a0": start_worker(devices=1, num_processes=2, process_id=0, port=port_a, init_only=1),
        "a1": start_worker(devices=1, num_processes=3, process_id=1, port=port_a, init_only=1),
        # Pair B: the processes have 2 and 1 devices.
        "b0": start_worker(devices=2, num_processes=2, process_id=0, port=port_b, init_only=1),
        "b1": start_worker(devices=1, num_processes=2, process_id=1, port=port_b, init_only=1),
    }
    results = {name: finish(p, timeout=90) for name, p in procs.items()}
    code, output = results["a1"]
    assert code != 0
    assert "num_processes=3" in output and "counts 2 processes" in output, output[-3000:]
    for name in ("b0", "b1"):
        code, output = results[name]
        assert code != 0
        assert "different numbers of devices" in output, output[-3000:]
        assert "process 0: 2, process 1: 1" in output


def _fake_slurm(monkeypatch, *, ntasks, nodes, procid, localid):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[007-008]")
    monkeypatch.setenv("SLURM_NTASKS", str(ntasks))
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", str(nodes))
    monkeypatch.setenv("SLURM_PROCID", str(procid))
    monkeypatch.setenv("SLURM_LOCALID", str(localid))


def test_slurm_settings_are_detected(monkeypatch):
    from ssljax import distributed

    port = 4242 % 2**12 + 65535 - 2**12 + 1  # JAX's port rule from the job id
    # One task per GPU (4 per node): GPU SLURM_LOCALID, as JAX's own detection.
    _fake_slurm(monkeypatch, ntasks=8, nodes=2, procid=6, localid=2)
    assert distributed.detect_cluster() == "slurm"
    setup = distributed._resolve(None, None, None, None, 10)
    assert (setup.process_id, setup.num_processes) == (6, 8)
    assert setup.coordinator_address == f"gpu007:{port}"
    assert setup.local_device_ids == (2,)
    # One task per node: the process keeps every GPU of its node (jax-ml/jax#16788).
    _fake_slurm(monkeypatch, ntasks=2, nodes=2, procid=1, localid=0)
    setup = distributed._resolve(None, None, None, None, 10)
    assert (setup.process_id, setup.num_processes) == (1, 2)
    assert setup.local_device_ids is None


def test_process_count_contradicting_the_cluster(monkeypatch):
    from ssljax import distributed

    _fake_slurm(monkeypatch, ntasks=4, nodes=1, procid=1, localid=1)
    with pytest.raises(ValueError, match=r"--num_processes=2 contradicts the slurm cluster"):
        distributed.initialize(num_processes=2)
    # Four tasks each believing they are alone would train four copies into one workdir.
    with pytest.raises(ValueError, match=r"--num_processes=1 contradicts.*num_processes=4"):
        distributed.initialize(num_processes=1)
    with pytest.raises(ValueError, match=r"--process_id=3 contradicts.*process_id=1"):
        distributed.initialize(process_id=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(coordinator_address="10.0.0.1:1234"), r"missing: --num_processes, --process_id"),
        (dict(num_processes=2, process_id=0), r"missing: --coordinator_address"),
        (dict(coordinator_address="10.0.0.1", num_processes=2, process_id=0), r"host:port"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"\[0, num_proc"),
        (dict(num_processes=0), r"num_processes=0 must be an integer >= 1"),
        (dict(process_id=-1), r"process_id=-1"),
        (dict(process_id=1), r"missing: --coordinator_address, --num_processes\."),
        (dict(process_id=1, num_processes=1), r"process_id=1 needs num_processes > 1"),
        (dict(timeout_s=0), r"timeout_s=0"),
        (dict(local_device_ids="0,x"), r"local_device_ids"),
    ],
)
def test_bad_arguments(kwargs, match):
    from ssljax import distributed

    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)


def test_port_already_taken_on_process_0():
    from ssljax import distributed

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"port {port} is already in use"):
            distributed.initialize(
                coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=0
            )


def test_single_process_needs_no_initialisation():
    from ssljax import distributed

    setup = distributed.initialize()
    assert (setup.process_id, setup.num_processes, setup.source) == (0, 1, "single")
    assert setup.coordinator_address is None


def test_global_batch_not_dividing_across_processes():
    from ssljax import data

    with pytest.raises(ValueError, match=r"global_batch=15 must be a positive multiple of "):
        data.make_loader(
            small_config().data,
            split="train",
            global_batch=15,
            seed=0,
            shuffle=True,
            drop_remainder=True,
            process_index=0,
            process_count=2,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ssljax multi-process test worker.")
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--timeout_s", type=float, default=60)
    parser.add_argument("--init_only", type=int, default=0)
    parser.add_argument("--out", default=None)
    run_worker(parser.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
