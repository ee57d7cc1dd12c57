"""The communication budget of the train step, read from XLA's compiled HLO.

Pure data parallelism must all-reduce the gradients and the (global) BatchNorm statistics and
nothing that grows with the batch: compiled for 64 simulated devices at two batch sizes, the
step's collective bytes must not change, except for the documented feature gather of the RankMe
metric. The HLO parser, ``ssljax.hlo_collectives``, is checked on hand-written HLO and on
programs whose collectives are known.
"""

from __future__ import annotations

import concurrent.futures

import comm_budget as cb  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import hlo_collectives, sharding

P = jax.sharding.PartitionSpec

SYNTHETIC_HLO = """\
HloModule jit_f, entry_computation_layout={(f32[16,8]{1,0})->f32[16,8]{1,0}}

%region_0.1 (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.0 = f32[] add(%a, %b)
}

ENTRY %main.9 (p0: f32[16,8], p1: bf16[4,128], x: f32[8]) -> f32[16,8] {
  %p0 = f32[16,8]{1,0} parameter(0)
  %p1 = bf16[4,128]{1,0} parameter(1)
  %x = f32[8]{0} parameter(2)
  %all-reduce.3 = (f32[16,8]{1,0}, f32[8]{0}) all-reduce(%p0, %x), channel_id=1, \
replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, use_global_device_ids=true, \
to_apply=%region_0.1, metadata={op_name="jit(f)/transpose(jvp(net))/dot_general"}
  %all-gather.1 = bf16[32,128]{1,0} all-gather(%p1), channel_id=2, replica_groups=[1,8]<=[8], \
dimensions={0}, use_global_device_ids=true
  %reduce-scatter = f32[2,8]{1,0} reduce-scatter(%p0), channel_id=3, \
replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%region_0.1
  %ars = f32[16,8]{1,0} all-reduce-start(%p0), channel_id=4, replica_groups={{0,1},{2,3}}, \
to_apply=%region_0.1
  %ard = f32[16,8]{1,0} all-reduce-done(%ars)
  %ag2 = f32[64,8]{1,0} all-gather(%p0), channel_id=6, \
replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_1'}, \
dimensions={0}, use_global_device_ids=true
  ROOT %cp = f32[16,8]{1,0} collective-permute(%ard), channel_id=5, \
source_target_pairs={{0,1},{1,0}}
}
""".replace("\\\n", "")


def test_parse_collectives_on_handwritten_hlo():
    got = hlo_collectives.parse_collectives(SYNTHETIC_HLO, num_devices=8)
    assert [c.kind for c in got] == [
        "all-reduce",
        "all-gather",
        "reduce-scatter",
        "all-reduce",  # the -start; its -done is the same transfer
        "all-gather",
        "collective-permute",
    ]
    ar, ag, rs, ars, ag2, cp = got
    # Operand bytes looked up from the definitions: 16*8*4 + 8*4; bf16 4*128*2; f32 16*8*4.
    assert (ar.operand_bytes, ar.group_size) == (544, 4)
    assert ar.op_name.endswith("dot_general")
    assert (ag.operand_bytes, ag.result_bytes, ag.group_size) == (1024, 8192, 8)
    assert (rs.operand_bytes, rs.result_bytes, rs.group_size) == (512, 64, 8)
    assert (ars.operand_bytes, ars.group_size) == (512, 2)
    # A group over one axis of a mesh whose devices are permuted (FSDP meshes print so).
    assert (ag2.operand_bytes, ag2.result_bytes, ag2.group_size) == (512, 2048, 4)
    assert (cp.operand_bytes, cp.group_size) == (512, 2)
    # Ring algorithms: 2 (g-1)/g S, (g-1) S, (g-1)/g S, and S for a permute.
    assert [c.sent_bytes for c in got] == [816.0, 7168.0, 448.0, 512.0, 1536.0, 512.0]
    summary = hlo_collectives.summarize(got)
    assert summary["all-reduce"] == {"count": 2, "operand_bytes": 1056, "sent_bytes": 1328.0}
    assert summary["all-to-all"]["count"] == 0


def test_parse_collectives_of_compiled_programs():
    """Programs with known collectives, compiled on conftest's 8 devices."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    rows = jax.sharding.NamedSharding(mesh, P("data"))
    repl = jax.sharding.NamedSharding(mesh, P())
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=repl)
    x = jax.ShapeDtypeStruct((128, 64), jnp.float32, sharding=rows)

    # Data parallelism: the gradient of replicated weights is one all-reduce of their size.
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))), out_shardings=repl)
    got = hlo_collectives.parse_collectives(grad.lower(w, x).compile().as_text(), 8)
    assert [(c.kind, c.operand_bytes, c.group_size) for c in got] == [
        ("all-reduce", 64 * 32 * 4, 8)
    ]

    # FSDP (mesh data=2 x fsdp=4, weights split on fsdp): the forward gathers the weights
    # within each fsdp group of 4 devices, from quarters.
    fsdp_mesh = sharding.make_mesh(fsdp=4)
    w_fsdp = jax.ShapeDtypeStruct(
        (64, 32), jnp.float32, sharding=jax.sharding.NamedSharding(fsdp_mesh, P(None, "fsdp"))
    )
    x_fsdp = jax.ShapeDtypeStruct(
        (128, 64), jnp.float32, sharding=sharding.batch_sharding(fsdp_mesh)
    )
    grad_fsdp = jax.jit(
        jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))), out_shardings=w_fsdp.sharding
    )
    got = hlo_collectives.parse_collectives(grad_fsdp.lower(w_fsdp, x_fsdp).compile().as_text(), 8)
    gathers = [
        (c.operand_bytes, c.result_bytes, c.group_size) for c in got if c.kind == "all-gather"
    ]
    assert gathers == [(64 * 32, 64 * 32 * 4, 4)]

    # Replicating a batch-sharded array gathers it: each device sends its 16 rows.
    gather = jax.jit(lambda x: 2.0 * x, out_shardings=repl)
    got = hlo_collectives.parse_collectives(gather.lower(x).compile().as_text(), 8)
    assert [(c.kind, c.operand_bytes, c.result_bytes) for c in got] == [
        ("all-gather", 16 * 64 * 4, 128 * 64 * 4)
    ]


# ----------------------------------------------------------------------------------------------
# The data-parallel train step on 64 simulated devices.
# ----------------------------------------------------------------------------------------------
DEVICES = 64
BATCHES = (256, 512)  # 4 and 8 examples per device


def small_spec(batch: int) -> dict:
    return {
        "method": "byol",
        "preset": "digits",
        "batch": batch,
        "image_size": 16,
        "num_classes": 10,
        "fast": True,  # no XLA optimisation passes: same collectives, half the compile time
        "top": 10_000,  # every collective, with its op name
    }


@pytest.fixture(scope="module")
def byol_budgets():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(cb.run_child, small_spec(b), DEVICES, timeout=900) for b in BATCHES]
        return [r.result() for r in runs]


@pytest.mark.slow  # two compiles of the whole step for 64 devices: ~40-90 s on 2 cores
def test_data_parallel_step_communicates_gradients_not_activations(byol_budgets):
    small, large = byol_budgets
    for r in (small, large):
        assert r["devices"] == DEVICES and r["mesh"] == {"data": DEVICES}
        c = r["collectives"]
        # Replicated state: no parameter is scattered or permuted.
        for kind in ("reduce-scatter", "all-to-all", "collective-permute"):
            assert c[kind]["count"] == 0, (kind, [x for x in r["largest"] if x["kind"] == kind])

    # Nothing all-reduced grows with the batch: doubling it leaves the bytes unchanged.
    ar = small["collectives"]["all-reduce"]["operand_bytes"]
    assert large["collectives"]["all-reduce"]["operand_bytes"] == ar

    # All-reduced: every gradient (backbone, heads, probe) and the global BatchNorm statistics.
    # On XLA:CPU each view's contribution to a gradient is reduced on its own (the network is
    # applied once per view and the compiler does not reassociate add(AR(a), AR(b)) into
    # AR(a + b)), so the measured figure lies between 1x and 2x the gradients: ~1.99x here.
    grads, params = small["grad_bytes"], small["param_bytes"]
    bn = small["bn_forward_bytes"] + small["bn_backward_bytes"]
    metrics_slack = 64 * 1024  # std of the projection, losses, probe accuracy: a few vectors
    assert grads <= ar <= 2 * grads + bn + metrics_slack, (ar / params, grads, bn)

    # Gathered: only what the RankMe metric needs (the singular values of the [B, D] features
    # of one view), at most the features' bytes. Anything else gathered would be activations.
    feature_dim = 128  # resnet_tiny
    for r, batch in ((small, BATCHES[0]), (large, BATCHES[1])):
        gathers = [x for x in r["largest"] if x["kind"] == "all-gather"]
        for g in gathers:
            assert "svd" in g["op_name"] or "eigh" in g["op_name"], g
            assert g["operand_bytes"] <= batch // DEVICES * feature_dim * 4, g
        assert r["collectives"]["all-gather"]["operand_bytes"] <= batch // DEVICES * 128 * 4


def test_budget_child_rejects_nothing_silently():
    """A failing child reports its error instead of returning a partial result."""
    with pytest.raises(RuntimeError, match="comm_budget child"):
        cb.run_child({"method": "no_such_method", "preset": "digits", "batch": 8}, 1, timeout=120)
