"""Meshes and state shardings: the FSDP mesh computes the same step as pure data parallelism.

On the 8 simulated CPU devices of conftest.py: a BYOL step of a 2-block ViT-Ti at 16 px with the
state split FSDP-style over a ('data'=2, 'fsdp'=4) mesh must equal the step with the state
replicated over ('data'=8,), and the split must be real (each device holds a quarter of the
large leaves, online and target params and optimizer moments alike).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import param_compare
import pytest
from param_compare import assert_params_close

from ssljax import config_schema, data, sharding, train

P = jax.sharding.PartitionSpec
REPO = pathlib.Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# The rule and the mesh.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, itemsize, threshold, expected",
    [
        ((192, 768), 4, 0, P(None, "fsdp")),  # largest dimension
        ((768, 192), 4, 0, P("fsdp")),
        ((3, 3, 64, 64), 4, 0, P(None, None, None, "fsdp")),  # equal sizes: the later one
        ((6, 10), 4, 0, P()),  # nothing divisible by 4
        ((10, 8), 4, 0, P(None, "fsdp")),  # the largest divisible, not the largest
        ((), 4, 0, P()),  # scalars (step, counters)
        ((1024, 1024), 4, 4 * 2**20, P()),  # exactly at the threshold: replicated
        ((1024, 1025 * 4), 4, 4 * 2**20, P(None, "fsdp")),
        ((2048, 1024), 2, 4 * 2**20, P()),  # bf16: 4 MiB
    ],
)
def test_fsdp_spec(shape, itemsize, threshold, expected):
    assert sharding.fsdp_spec(shape, itemsize, 4, min_shard_bytes=threshold) == expected


def test_make_mesh_axes_and_batch_sharding():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.shape == (8,)
    assert sharding.batch_sharding(mesh).spec == P("data")
    fsdp = sharding.make_mesh(fsdp=4)
    assert fsdp.axis_names == ("data", "fsdp") and fsdp.devices.shape == (2, 4)
    # Consecutive devices form an fsdp group (on a pod: within a host).
    assert [d.id for d in fsdp.devices[0]] == [d.id for d in jax.devices()[:4]]
    assert sharding.batch_sharding(fsdp).spec == P(("data", "fsdp"))
    x = jax.device_put(jnp.arange(16.0), sharding.batch_sharding(fsdp))
    assert {s.data.shape for s in x.addressable_shards} == {(2,)}
    assert len({tuple(s.index[0].indices(16)) for s in x.addressable_shards}) == 8


@pytest.mark.parametrize("fsdp", [0, 3, 16, 2.0])
def test_make_mesh_rejects_bad_fsdp(fsdp):
    with pytest.raises(ValueError, match=r"fsdp=.* must be a positive divisor of the 8 devices"):
        sharding.make_mesh(fsdp=fsdp)


def test_infer_state_sharding_replicates_without_fsdp_axis():
    tree = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32), "s": jnp.zeros(())}
    got = sharding.infer_state_sharding(sharding.make_mesh(), tree, min_shard_bytes=0)
    assert all(s.spec == P() for s in jax.tree.leaves(got))
    with pytest.raises(ValueError, match="min_shard_bytes=-1"):
        sharding.infer_state_sharding(sharding.make_mesh(fsdp=2), tree, min_shard_bytes=-1)


# ----------------------------------------------------------------------------------------------
# The step under FSDP equals the data-parallel step.
# ----------------------------------------------------------------------------------------------
def vit_config():
    c = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":digits")
    c.model.backbone = "vit_tiny_4"
    c.model.backbone_kwargs.depth = 2
    c.data.image_size = 16
    c.global_batch = 16
    c.num_steps = 100
    c.warmup_epochs = 0.0
    c.heads.projector_hidden = (64,)
    c.heads.projector_dim = 32
    c.heads.predictor_hidden = (64,)
    c.heads.predictor_dim = 32
    return c


@pytest.mark.slow  # two compiles of the whole step: ~40 s on the 2-core reference machine
def test_fsdp_step_equals_data_parallel_step():
    config = vit_config()
    info = data.get_dataset_info(config.data)
    comps = train.build_components(config, info, num_train_examples=1000)
    state0 = jax.jit(functools.partial(train.init_state, comps, config))(jax.random.PRNGKey(0))
    loader = data.make_loader(
        config.data,
        split="train",
        global_batch=16,
        seed=0,
        shuffle=True,
        drop_remainder=True,
        process_index=0,
        process_count=1,
    )
    it = iter(loader)
    batches = [{k: b[k] for k in ("image", "label")} for b in (next(it), next(it))]
    step_fn = train.make_train_step(comps, config)

    def run(mesh, min_shard_bytes):
        state_sh = sharding.infer_state_sharding(mesh, state0, min_shard_bytes=min_shard_bytes)
        batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl))
        state, losses = jax.device_put(state0, state_sh), []
        for b in batches:
            state, metrics = step(state, jax.device_put(b, batch_sh))
            losses.append(float(metrics["loss"]))
        return state, state_sh, losses

    dp_state, dp_sh, dp_losses = run(sharding.make_mesh(), 0)
    mesh = sharding.make_mesh(fsdp=4)
    fs_state, fs_sh, fs_losses = run(mesh, 0)

    # The split is real: a block's MLP kernel is stored in quarters, and so are its EMA target
    # copy and its LARS momentum (same shape, same rule), and they stay so after the step.
    path = ("backbone", "blocks_0", "mlp", "fc1", "kernel")
    assert "blocks_0" in fs_state.params["backbone"], list(fs_state.params["backbone"])

    def leaf(tree):
        return functools.reduce(lambda t, k: t[k], path, tree)

    for tree in (fs_state.params, fs_state.method_state["target_params"]):
        x = leaf(tree)
        assert x.sharding.spec == P(None, "fsdp"), x.sharding
        assert x.addressable_shards[0].data.shape == (192, 768 // 4)
    momenta = [
        x
        for x in jax.tree.leaves(fs_state.opt_state)
        if hasattr(x, "shape") and x.shape == (192, 768)
    ]
    assert momenta and all(m.sharding.spec == P(None, "fsdp") for m in momenta)
    dp_bytes = sharding.bytes_per_device(state0, dp_sh)
    fs_bytes = sharding.bytes_per_device(state0, fs_sh)
    assert fs_bytes < 0.3 * dp_bytes, (fs_bytes, dp_bytes)

    # Same numbers: the sharding changes where values live, not what is computed.
    np.testing.assert_allclose(fs_losses, dp_losses, rtol=1e-5)
    assert dp_losses[1] != dp_losses[0]
    # The rule shared by every device/process-count comparison (tests/param_compare.py): the
    # reductions (gradient sums, BN and LARS norms) are split differently over devices.
    for tree in ("params", "method_state", "batch_stats", "probe_params"):
        assert_params_close(
            param_compare.flatten(jax.device_get(getattr(fs_state, tree)), tree + "/"),
            param_compare.flatten(jax.device_get(getattr(dp_state, tree)), tree + "/"),
        )
    moved = jax.tree.map(lambda x, y: not np.allclose(x, y), dp_state.params, state0.params)
    assert sum(jax.tree.leaves(moved)) > 10
