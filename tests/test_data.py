"""Tests of the loader's order, sharding, resumption and device placement, and of digits."""

import json
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from ssljax.data import (
    device_prefetch,
    digits,
    get_dataset_info,
    make_loader,
)

P = jax.sharding.PartitionSpec
DIGITS = {"name": "digits"}


def _loader(**kwargs):
    args = dict(split="train", global_batch=64, seed=3, shuffle=True, drop_remainder=False)
    args.update(kwargs)
    config = args.pop("config", DIGITS)
    return make_loader(config, **args)


def _epoch_indices(it, steps):
    """Concatenated real (unpadded) indices of the next ``steps`` batches."""
    out = []
    for _ in range(steps):
        b = next(it)
        out.append(b["index"][b["mask"]] if "mask" in b else b["index"])
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_offline_sizes_and_pixels(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    digits.load_arrays.cache_clear()  # rebuild from scikit-learn with sockets blocked
    info = get_dataset_info(DIGITS)
    assert info.num_classes == 10
    assert info.split_sizes == {"train": 1497, "test": 300}
    assert sum(info.split_sizes.values()) == 1797
    assert info.image_shape == (32, 32, 3)
    assert info.class_names == tuple("0123456789")

    ref = load_digits()
    arrays = digits.load_arrays()
    test_images, test_labels = arrays["test"]
    train_images, train_labels = arrays["train"]
    # Stratified held-out split: 30 per class, disjoint from train, together all 1,797.
    np.testing.assert_array_equal(np.bincount(test_labels, minlength=10), np.full(10, 30))
    idx = digits.split_indices(ref.target)
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    assert len(np.union1d(idx["train"], idx["test"])) == 1797
    np.testing.assert_array_equal(train_labels, ref.target[idx["train"]])

    # Pixels: 0..16 -> 0..255, bilinear (half-pixel centres) 8 -> 32, gray repeated 3 times.
    # Reference: JAX's resize of the same 0..255 values (independent of PIL), within rounding.
    gray = np.round(ref.images[idx["test"]] * 255.0 / 16.0)
    want = np.asarray(jax.image.resize(jnp.asarray(gray), (len(gray), 32, 32), "bilinear"))
    got = test_images.astype(np.float64)
    assert np.abs(got[..., 0] - want).max() <= 1.0
    np.testing.assert_array_equal(got[..., 0], got[..., 1])
    np.testing.assert_array_equal(got[..., 0], got[..., 2])

    # Channel statistics on the [0, 1] scale, from the train split.
    x = train_images.astype(np.float64) / 255.0
    np.testing.assert_allclose(info.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(info.std, x.std(axis=(0, 1, 2)), rtol=1e-12)

    batch = next(_loader(drop_remainder=True))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (64, 32, 32, 3)
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int64
    np.testing.assert_array_equal(batch["image"], train_images[batch["index"]])
    np.testing.assert_array_equal(batch["label"], train_labels[batch["index"]])


# ---------------------------------------------------------------------------------------------
# order


def test_same_seed_same_order_and_fresh_order_each_epoch():
    n = 1497
    steps = -(-n // 64)  # padded last batch: ceil
    a = _loader()
    assert a.steps_per_epoch == steps
    epoch0 = _epoch_indices(a, steps)
    epoch1 = _epoch_indices(a, steps)
    b = _loader()
    np.testing.assert_array_equal(_epoch_indices(b, steps), epoch0)
    # Every example exactly once per epoch.
    for epoch in (epoch0, epoch1):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
    # A fresh shuffle each epoch, and another seed gives another order.
    assert (epoch0 != epoch1).mean() > 0.9
    other = _epoch_indices(_loader(seed=4), steps)
    assert (epoch0 != other).mean() > 0.9
    # Without shuffle: the stored order.
    plain = _epoch_indices(_loader(shuffle=False), steps)
    np.testing.assert_array_equal(plain, np.arange(n))


def test_padding_and_drop_remainder():
    padded = _loader(shuffle=False)
    batches = [next(padded) for _ in range(padded.steps_per_epoch)]
    last = batches[-1]
    real = 1497 - 23 * 64
    assert last["image"].shape[0] == 64
    np.testing.assert_array_equal(last["mask"], np.arange(64) < real)
    assert (last["index"][real:] == -1).all() and (last["label"][real:] == -1).all()
    assert (last["image"][real:] == 0).all()

    dropped = _loader(drop_remainder=True, num_epochs=2)
    assert dropped.steps_per_epoch == 1497 // 64
    seen = [next(dropped)["index"] for _ in range(dropped.steps_per_epoch)]
    flat = np.concatenate(seen)
    assert len(np.unique(flat)) == len(flat) == 23 * 64
    assert all("mask" not in next(dropped) for _ in range(dropped.steps_per_epoch))
    with pytest.raises(StopIteration):
        next(dropped)


def test_two_processes_disjoint_cover_and_equal_to_one_process():
    steps = -(-1497 // 64)
    one = _loader()
    procs = [_loader(process_index=p, process_count=2) for p in range(2)]
    assert procs[0].local_batch_size == 32
    seen = []
    for _ in range(2 * steps):  # two epochs
        whole = next(one)
        parts = [next(it) for it in procs]
        # Each process holds its own half of the same global batch.
        for key in whole:
            np.testing.assert_array_equal(
                np.concatenate([parts[0][key], parts[1][key]]), whole[key]
            )
        i0 = parts[0]["index"][parts[0]["mask"]]
        i1 = parts[1]["index"][parts[1]["mask"]]
        assert len(np.intersect1d(i0, i1)) == 0
        seen.append(np.concatenate([i0, i1]))
    for epoch in (seen[:steps], seen[steps:]):
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(1497))


# ---------------------------------------------------------------------------------------------
# resumption


def test_restore_state_gives_the_next_batches():
    k, total = 5, 30  # crosses the epoch boundary (24 steps per epoch)
    straight = _loader()
    want = [next(straight) for _ in range(total)]
    first = _loader()
    for i in range(k):
        np.testing.assert_array_equal(next(first)["index"], want[i]["index"])
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    assert state["step"] == k
    resumed = _loader()
    resumed.set_state(state)
    for i in range(k, total):
        b = next(resumed)
        for key in b:
            np.testing.assert_array_equal(b[key], want[i][key])


def test_restore_state_from_other_settings_is_refused():
    state = _loader().get_state()
    with pytest.raises(ValueError, match="seed"):
        _loader(seed=4).set_state(state)
    with pytest.raises(ValueError, match="global_batch"):
        _loader(global_batch=32).set_state(state)


# ---------------------------------------------------------------------------------------------
# device placement


def test_device_prefetch_global_arrays_and_consumed_state():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, P("data"))
    reference = _loader(global_batch=16, drop_remainder=True)
    it = _loader(global_batch=16, drop_remainder=True)
    prefetch = device_prefetch(it, sharding, size=2)
    assert prefetch.state_of_last_consumed()["step"] == 0
    k = 3
    for _ in range(k):
        got = next(prefetch)
        want = next(reference)
        assert got["image"].shape == (16, 32, 32, 3)
        for key in want:
            assert isinstance(got[key], jax.Array) and got[key].sharding == sharding
            np.testing.assert_array_equal(np.asarray(got[key]), want[key])
    # The loader has run ahead to fill the queue; the consumed state has not.
    for _ in range(100):
        if it.step >= k + 2:
            break
        time.sleep(0.01)
    assert it.step >= k + 2
    state = prefetch.state_of_last_consumed()
    assert state["step"] == k and prefetch.get_state() == state
    prefetch.close()
    resumed = _loader(global_batch=16, drop_remainder=True)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["index"], next(reference)["index"])


def test_device_prefetch_errors():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, P("data"))
    with pytest.raises(ValueError, match="size"):
        device_prefetch(iter([]), sharding, size=0)
    with pytest.raises(ValueError, match="sharding"):
        device_prefetch(iter([]), P("data"))

    def failing():
        yield {"x": np.zeros((8, 2), np.float32)}
        raise RuntimeError("broken source")

    prefetch = device_prefetch(failing(), sharding)
    assert next(prefetch)["x"].shape == (8, 2)
    with pytest.raises(RuntimeError, match="broken source"):
        next(prefetch)
    # 12 rows do not divide over 8 devices: named as a ValueError, in the consuming thread.
    prefetch = device_prefetch(iter([{"x": np.zeros((12, 2))}]), sharding)
    with pytest.raises(ValueError, match="x"):
        next(prefetch)


# ---------------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_batch=63, process_count=2, process_index=0), "global_batch"),
        (dict(global_batch=4096, drop_remainder=True), "global_batch"),
        (dict(seed=-1), "seed"),
        (dict(split="validation"), "split"),
        (dict(process_index=2, process_count=2), "process_index"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(crop_mode="center"), "crop_in_loader"),
        (dict(config={"name": "digits", "crop_in_loader": True, "crop_scale": (0.5, 0.1)}),
         "crop_scale"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _loader(**kwargs)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="not_a_dataset"):
        get_dataset_info({"name": "not_a_dataset", "data_dir": "/nonexistent"})


def test_loader_state_in_an_orbax_checkpoint(tmp_path):
    # The recipe for the trainer: the loader's JSON state beside the train state, one checkpoint.
    import orbax.checkpoint as ocp

    it = _loader(global_batch=16, drop_remainder=True)
    for _ in range(3):
        next(it)
    loader_state = it.get_state()
    want = next(it)
    train_state = {"params": {"w": np.arange(4.0, dtype=np.float32)}}
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            3,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(train_state), data=ocp.args.JsonSave(loader_state)
            ),
        )
        manager.wait_until_finished()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(train_state), data=ocp.args.JsonRestore()
            ),
        )
    np.testing.assert_array_equal(restored.state["params"]["w"], train_state["params"]["w"])
    resumed = _loader(global_batch=16, drop_remainder=True)
    resumed.set_state(restored.data)
    got = next(resumed)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
