"""The train step stays on device: compiled once, state donated, no host callbacks.

No timings are asserted (the machine is shared); these are the structural properties that the
speed of ``ssljax.train`` rests on. Each detector is first shown to fire on a step that has the
defect (a recompiling call, a host callback), so a passing test means something.

The step is the real ``make_train_step`` of the BYOL digits preset, shrunk to ``resnet_tiny``
at 16 pixels and batch 16, jitted as ``train_and_evaluate`` jits it (batch sharded over the
mesh of every device, state replicated and donated).
"""

import functools
import pathlib
import re
import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import config_schema, sharding, train

REPO = pathlib.Path(__file__).resolve().parent.parent
BATCH = 16
SIZE = 16
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# Primitives and HLO that move data between the device and the host during a step.
HOST_PRIMITIVES = ("callback", "infeed", "outfeed", "send", "recv")
HOST_HLO = re.compile(
    r"callback|infeed|outfeed|\bsend\b|\brecv\b|host_compute|xla_python|SendToHost|RecvFromHost",
    re.IGNORECASE,
)


class CompileCounter:
    """Counts XLA backend compilations (``jax.monitoring`` events) while active."""

    def __init__(self):
        self.names: list[str] = []

    def _listener(self, event, duration, **kwargs):
        del duration
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(str(kwargs.get("fun_name", "")))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)

    def count(self, name: str) -> int:
        return sum(name in n for n in self.names)


def host_transfers_in_jaxpr(jaxpr) -> list[str]:
    """Names of host-transfer primitives anywhere in ``jaxpr`` (sub-jaxprs included)."""
    found = []
    for eqn in jaxpr.eqns:
        if any(p in eqn.primitive.name for p in HOST_PRIMITIVES):
            found.append(eqn.primitive.name)
    for sub in jax.extend.core.subjaxprs(jaxpr):
        found += host_transfers_in_jaxpr(sub)
    return found


def host_transfers_in_hlo(text: str) -> list[str]:
    """Lines of (StableHLO or compiled HLO) text that call back to or stream from the host.

    Only instructions count, without their metadata: the compiled module's stack-frame tables
    name the Python functions that traced it (this file's test names say "callbacks").
    """
    found = []
    for line in text.splitlines():
        if "=" not in line:
            continue  # a stack-frame table row, e.g. `20 "test_..._host_callbacks"`
        instruction = re.sub(r"metadata=\{[^}]*\}|loc\(.*\)", "", line)
        if HOST_HLO.search(instruction):
            found.append(line.strip())
    return found


@pytest.fixture(scope="module")
def step_setup():
    config = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":digits")
    config.global_batch = BATCH
    config.num_steps = 100
    # Small heads: the structure of the step is what is tested, not its size.
    config.heads.projector_hidden = (64,)
    config.heads.projector_dim = 32
    config.heads.predictor_hidden = (64,)
    config.heads.predictor_dim = 32
    info = types.SimpleNamespace(
        name="synthetic",
        num_classes=10,
        split_sizes={"train": 1000},
        image_shape=(SIZE, SIZE, 3),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=None,
    )
    comps = train.build_components(config, info, num_train_examples=1000)
    mesh = sharding.make_mesh()
    data_sharding, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    init = functools.partial(train.init_state, comps, config)
    state_sharding = jax.tree.map(lambda _: repl, jax.eval_shape(init, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, (BATCH,), dtype=np.int32),
        },
        data_sharding,
    )
    step_fn = train.make_train_step(comps, config)
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )
    make_state = jax.jit(init, out_shardings=state_sharding)
    yield types.SimpleNamespace(
        step_fn=step_fn, jitted=jitted, make_state=make_state, batch=batch, mesh=mesh
    )


def test_compile_counter_sees_a_recompilation():
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    with CompileCounter() as counter:
        f(jnp.ones(3))
        f(jnp.ones(3))
        f(jnp.ones(4))  # a new shape: a second compilation
    assert counter.count("<lambda>") == 2
    assert f._cache_size() == 2


def test_train_step_compiles_once_over_five_steps_with_donated_state(step_setup):
    s = step_setup
    state = s.make_state(jax.random.PRNGKey(0))
    with CompileCounter() as counter:
        for i in range(5):
            previous = state
            state, metrics = s.jitted(state, s.batch)
            # Donation: the previous state's buffers were handed to the step (reused in place).
            leaf = jax.tree.leaves(previous.params)[0]
            assert leaf.is_deleted(), f"step {i}: the input state was not donated"
        # Metrics stay on device until fetched; fetching all of them once is enough here.
        fetched = jax.device_get(metrics)
    assert counter.count("train_step") == 1, counter.names
    assert s.jitted._cache_size() == 1
    assert int(state.step) == 5
    assert np.isfinite(fetched["loss"])


def test_host_callback_detector_fires_on_a_step_with_a_callback(step_setup):
    s = step_setup

    def step_with_callback(state, batch):
        jax.debug.callback(lambda x: None, state.step)
        return s.step_fn(state, batch)

    state_shapes = jax.eval_shape(s.make_state, jax.random.PRNGKey(0))
    batch_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s.batch)
    jaxpr = jax.make_jaxpr(step_with_callback)(state_shapes, batch_shapes).jaxpr
    assert host_transfers_in_jaxpr(jaxpr) == ["debug_callback"]
    lowered = jax.jit(step_with_callback).lower(state_shapes, batch_shapes)
    assert host_transfers_in_hlo(lowered.as_text())


def test_train_step_has_no_host_callbacks(step_setup):
    s = step_setup
    state_shapes = jax.eval_shape(s.make_state, jax.random.PRNGKey(0))
    batch_shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), s.batch
    )
    jaxpr = jax.make_jaxpr(s.step_fn)(state_shapes, batch_shapes).jaxpr
    assert host_transfers_in_jaxpr(jaxpr) == []
    lowered = s.jitted.lower(state_shapes, batch_shapes)
    assert host_transfers_in_hlo(lowered.as_text()) == []
    # The compiled module too (after XLA's passes); this compilation hits the cache of the
    # compile-count test when both run.
    compiled = lowered.compile().as_text()
    assert host_transfers_in_hlo(compiled) == []
    # The finite-step flag (an `and` over every leaf's flag) is computed once, not fused into
    # each of the state's selects: duplicated, it was most of the HLO and half the compile time.
    num_leaves = len(jax.tree.leaves(state_shapes))
    ands = len(re.findall(r"\band\(", compiled))
    assert ands < 4 * num_leaves, (ands, num_leaves)  # 515 / 199 leaves; 38k duplicated
