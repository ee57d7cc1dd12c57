"""Communication budget of the train step, read from XLA's compiled program (nothing is run).

The step is ``ssljax.train.make_train_step`` jitted as ``train_and_evaluate`` jits it (batch
split over the mesh, state replicated, or FSDP-sharded with ``--fsdp``), lowered against
abstract arguments and compiled for ``N`` simulated CPU devices. XLA's SPMD partitioner then
writes the collectives into the per-device program; this script parses them from its HLO text
(``all-reduce``, ``all-gather``, ``reduce-scatter``, ``all-to-all``, ``collective-permute``),
sums their operand bytes, and sets them beside the step's FLOPs from XLA's cost analysis.

Columns of the table (per step):

* ``all-reduce MiB`` etc.: operand bytes of each kind in one device's program (what each device
  contributes; for an all-gather the shard it sends, for a reduce-scatter its whole input);
* ``sent/dev MiB``: bytes each device sends with bandwidth-optimal (ring) algorithms:
  all-reduce ``2 (g-1)/g S``, all-gather ``(g-1) S``, reduce-scatter and all-to-all
  ``(g-1)/g S``, collective-permute ``S`` (``g`` the group size, ``S`` the operand bytes);
* ``total GiB``: ``sent/dev`` times the device count;
* ``GFLOP/dev`` and ``TFLOP``: XLA's FLOP count of one device's program, and times ``N``;
* ``FLOP/B``: FLOPs per byte sent, per device: the arithmetic intensity the interconnect must
  keep up with.

What XLA:CPU's program can and cannot tell. The SPMD partitioning (which tensors are reduced,
gathered, and how large they are) is the same on every backend; the later collective
optimisations differ. Two seen here: (1) the online network runs once per view, so each weight
gets two gradient contributions, and XLA:CPU all-reduces each before adding them (GPU and TPU
pipelines have an all-reduce reassociation pass that can merge ``AR(a) + AR(b)`` into
``AR(a + b)``; not verifiable without the hardware), so the CPU figure is up to 2x the
gradients; (2) XLA:CPU has no reduce-scatter creation, so FSDP's gradient reduction appears as
all-reduce + slice.

Commands:

    python benchmarks/comm_budget.py --fast                # ResNet-50 BYOL, batch 4096, 8/64/256
    python benchmarks/comm_budget.py --show                # the saved table, no compiling
    python benchmarks/comm_budget.py --global_stats        # VICReg/Barlow Twins at ImageNet size
    python benchmarks/comm_budget.py --devices 8 --method simsiam --preset cifar10 \
        --batch 512 --image_size 32                        # any other point
    python benchmarks/comm_budget.py --fast --devices 64 --backbone vit_base_16 --fsdp 8

Each device count runs in its own process (XLA fixes the CPU device count at start-up).
``--fast`` compiles with ``jax_disable_most_optimizations``: on resnet_tiny at 64 devices the
collectives and the FLOPs were identical with and without it (compile 19 s against 25 s).
Results are merged into ``benchmarks/results/comm_budget.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

from ssljax.hlo_collectives import parse_collectives, summarize

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "comm_budget.json"
RESULT_PREFIX = "COMM_BUDGET_RESULT "
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# The step, compiled for the simulated devices (runs in the child process).
# ----------------------------------------------------------------------------------------------
def build_config(spec: dict[str, Any]):
    """The config of ``configs/<method>.py:<preset>`` with the spec's overrides."""
    from ssljax import config_schema

    c = config_schema.load_config(f"{REPO}/configs/{spec['method']}.py:{spec['preset']}")
    c.global_batch = int(spec["batch"])
    c.num_steps = 100_000
    c.data.crop_in_loader = bool(spec.get("crop_in_loader", c.data.crop_in_loader))
    for key, value in spec.get("overrides", {}).items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return c


def _tree_bytes(tree: Any) -> int:
    import jax
    import numpy as np

    return int(sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _bn_channels(batch_stats: Any) -> int:
    """Channels over all BatchNorm layers (each layer stores a ``mean`` of C entries)."""
    import jax

    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch_stats):
        if str(getattr(path[-1], "key", "")) == "mean":
            total += int(leaf.size)
    return total


def analyze(spec: dict[str, Any]) -> dict[str, Any]:
    """Compiles the step of ``spec`` for the devices of this process and reads its collectives.

    Args:
      spec: ``method``, ``preset``, ``batch``, ``image_size`` (input side), optional
        ``backbone``, ``num_classes``, ``fsdp``, ``min_shard_bytes``, ``overrides`` (config
        fields), ``crop_in_loader``, ``fast``, ``top`` (how many of the largest collectives to
        list).

    Returns:
      A JSON-able dict: sizes of the state, collectives by kind, FLOPs, the expected bytes of a
      data-parallel step, and the largest collectives with their JAX op names.
    """
    import functools
    import types

    import jax
    import jax.numpy as jnp

    from ssljax import sharding, train

    if spec.get("fast"):
        jax.config.update("jax_disable_most_optimizations", True)
    config = build_config(spec)
    if spec.get("backbone"):
        config.model.backbone = spec["backbone"]
    size = int(spec["image_size"])
    config.data.image_size = int(spec.get("crop_size", size))
    info = types.SimpleNamespace(
        name="synthetic",
        num_classes=int(spec.get("num_classes", 1000)),
        split_sizes={"train": 1_281_167, "test": 50_000},
        image_shape=None if config.data.crop_in_loader else (size, size, 3),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=None,
    )
    comps = train.build_components(config, info, num_train_examples=1_281_167)
    mesh = sharding.make_mesh(fsdp=int(spec.get("fsdp", 1)))
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    shapes = jax.eval_shape(
        functools.partial(train.init_state, comps, config), jax.random.PRNGKey(0)
    )
    state_sh = sharding.infer_state_sharding(
        mesh, shapes, min_shard_bytes=int(spec.get("min_shard_bytes", 4 * 2**20))
    )
    b = config.global_batch
    if config.data.crop_in_loader:
        image = jax.ShapeDtypeStruct((b, 2, size, size, 3), jnp.uint8, sharding=batch_sh)
    else:
        image = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=batch_sh)
    batch = {"image": image, "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sh)}
    state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_sh
    )
    step = jax.jit(
        train.make_train_step(comps, config),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    collectives = parse_collectives(compiled.as_text(), jax.device_count())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops_per_device = float(cost.get("flops", 0.0)) if cost else 0.0

    param_bytes = _tree_bytes(shapes.params)
    grad_bytes = param_bytes + _tree_bytes(shapes.probe_params)
    c_online, c_target = (
        _bn_channels(shapes.batch_stats),
        _bn_channels(shapes.method_state.get("target_batch_stats", {})),
    )
    views = 2
    # Global-batch BatchNorm in float32: forward mean and mean of squares (2 C) per layer and
    # view, online and target; backward sum(dy) and sum(dy * x_hat) (2 C) per online layer and
    # view (XLA may share the latter with the scale/bias gradients).
    bn_forward_bytes = 4 * 2 * views * (c_online + c_target)
    bn_backward_bytes = 4 * 2 * views * c_online
    top = sorted(collectives, key=lambda c: -c.operand_bytes)[: int(spec.get("top", 8))]
    return {
        "spec": spec,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "global_batch": b,
        "param_bytes": param_bytes,
        "grad_bytes": grad_bytes,
        "state_bytes": _tree_bytes(shapes),
        "bn_channels_online": c_online,
        "bn_channels_target": c_target,
        "bn_forward_bytes": bn_forward_bytes,
        "bn_backward_bytes": bn_backward_bytes,
        "collectives": summarize(collectives),
        "num_collectives": len(collectives),
        "flops_per_device": flops_per_device,
        "flops_total": flops_per_device * jax.device_count(),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "largest": [
            {
                "kind": c.kind,
                "operand_bytes": c.operand_bytes,
                "group_size": c.group_size,
                "shapes": c.shapes[:200],
                "op_name": c.op_name[-160:],
            }
            for c in top
        ],
    }


def analyze_loss(spec: dict[str, Any]) -> dict[str, Any]:
    """Collectives of a batch-statistics loss alone (forward and backward), batch sharded.

    VICReg's variance/covariance and Barlow Twins' cross-correlation span the global batch, so
    under data parallelism they must communicate embeddings or ``d x d`` statistics; this
    isolates that cost from the network's gradients.

    Args:
      spec: ``loss`` ('vicreg' or 'barlow_twins'), ``batch``, ``dim``, ``gram`` (None: the
        loss's own choice; True: the ``n x n`` Gram form; False: the ``d x d`` form).

    Returns:
      A JSON-able dict with the collectives by kind and the largest ones.
    """
    import jax
    import jax.numpy as jnp

    from ssljax import losses, sharding

    loss_fn = {"vicreg": losses.vicreg_loss, "barlow_twins": losses.barlow_twins_loss}[spec["loss"]]
    mesh = sharding.make_mesh()
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    n, d = int(spec["batch"]), int(spec["dim"])

    def value_and_grads(za, zb):
        return jax.value_and_grad(
            lambda a, b: loss_fn(a, b, gram=spec.get("gram"))[0], argnums=(0, 1)
        )(za, zb)

    z = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=batch_sh)
    fn = jax.jit(value_and_grads, out_shardings=(repl, (batch_sh, batch_sh)))
    t0 = time.perf_counter()
    compiled = fn.lower(z, z).compile()
    collectives = parse_collectives(compiled.as_text(), jax.device_count())
    top = sorted(collectives, key=lambda c: -c.operand_bytes)[:6]
    return {
        "spec": spec,
        "devices": jax.device_count(),
        "embedding_bytes": n * d * 4,
        "collectives": summarize(collectives),
        "compile_s": time.perf_counter() - t0,
        "largest": [
            {"kind": c.kind, "operand_bytes": c.operand_bytes, "shapes": c.shapes[:120]}
            for c in top
        ],
    }


# ----------------------------------------------------------------------------------------------
# Parent: one child process per device count.
# ----------------------------------------------------------------------------------------------
def run_child(spec: dict[str, Any], devices: int, *, timeout: float = 7200) -> dict[str, Any]:
    """Runs :func:`analyze` in a fresh process with ``devices`` simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(
        f"comm_budget child ({devices} devices, {spec}) failed with status {proc.returncode}:\n"
        f"{proc.stderr[-4000:]}"
    )


def _mb(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The scaling table (Markdown)."""
    head = (
        "| devices | batch/dev | all-reduce MiB | all-gather MiB | reduce-scatter MiB | "
        "other MiB | sent/dev MiB | total GiB | GFLOP/dev | TFLOP | FLOP/B | compile s |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    out = [head]
    for r in rows:
        c = r["collectives"]
        sent = sum(v["sent_bytes"] for v in c.values())
        other = c["all-to-all"]["operand_bytes"] + c["collective-permute"]["operand_bytes"]
        out.append(
            f"| {r['devices']} | {r['global_batch'] // r['devices']} | "
            f"{_mb(c['all-reduce']['operand_bytes'])} | {_mb(c['all-gather']['operand_bytes'])} | "
            f"{_mb(c['reduce-scatter']['operand_bytes'])} | {_mb(other)} | {_mb(sent)} | "
            f"{sent * r['devices'] / 2**30:,.1f} | {r['flops_per_device'] / 1e9:,.0f} | "
            f"{r['flops_total'] / 1e12:,.1f} | "
            f"{r['flops_per_device'] / max(sent, 1):,.0f} | {r['compile_s']:.0f} |"
        )
    return "\n".join(out)


def budget_lines(r: dict[str, Any]) -> list[str]:
    """The all-reduce bytes against the data-parallel model: gradients + BN statistics."""
    c = r["collectives"]
    ar, ag = c["all-reduce"]["operand_bytes"], c["all-gather"]["operand_bytes"]
    return [
        f"{r['devices']} devices (mesh {r['mesh']}): all-reduce {_mb(ar)} MiB per device and "
        f"step = {ar / r['param_bytes']:.3f} x the {_mb(r['param_bytes'])} MiB of online params "
        f"(gradients with the probe's: {_mb(r['grad_bytes'])} MiB; global BatchNorm statistics: "
        f"{_mb(r['bn_forward_bytes'])} MiB forward, <= {_mb(r['bn_backward_bytes'])} MiB "
        f"backward); all-gather {_mb(ag)} MiB sent per device."
    ]


SCALING_SPEC = {
    "method": "byol",
    "preset": "imagenet",
    "batch": 4096,
    "image_size": 224,
    "crop_in_loader": True,
    "num_classes": 1000,
}
# Global batch statistics at the ImageNet settings of VICReg (batch 2048, expander 8192-d;
# Bardes et al. 2022, sec. 4.1), for Barlow Twins at the same size (its paper: batch 2048, 8192).
GLOBAL_STATS = {"batch": 2048, "dim": 8192, "devices": 64}


def _merge_results(key: str, value: Any) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--devices", default="8,64,256", help="comma-separated device counts")
    parser.add_argument("--method", default=SCALING_SPEC["method"])
    parser.add_argument("--preset", default=SCALING_SPEC["preset"])
    parser.add_argument("--batch", type=int, default=SCALING_SPEC["batch"])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--image_size", type=int, default=SCALING_SPEC["image_size"])
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--fast", action="store_true", help="jax_disable_most_optimizations")
    parser.add_argument("--global_stats", action="store_true", help="VICReg/BT at ImageNet size")
    parser.add_argument("--no_save", action="store_true")
    parser.add_argument("--show", action="store_true", help="print the saved results' tables")
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        result = analyze_loss(spec) if "loss" in spec else analyze(spec)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    if args.show:
        saved = json.loads(RESULTS.read_text())
        groups: dict[str, list[dict[str, Any]]] = {}
        for key, r in saved.items():
            if not key.startswith("global_stats/"):
                groups.setdefault(key.rsplit("/", 1)[0], []).append(r)
        for name, rows in sorted(groups.items()):
            print(f"\n{name} (measured {rows[0]['date']}):")
            print(table(sorted(rows, key=lambda r: r["devices"])))
        return

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
    }
    if args.global_stats:
        n, d, devices = (GLOBAL_STATS[k] for k in ("batch", "dim", "devices"))
        print(
            f"Global batch statistics: batch {n}, dim {d}, {devices} devices; one embedding "
            f"[n, d] is {_mb(n * d * 4)} MiB, a d x d matrix {_mb(d * d * 4)} MiB. Per step:"
        )
        print("| loss | form | gathered MiB/dev | all-reduce MiB | sent/dev MiB | total GiB |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for loss in ("vicreg", "barlow_twins"):
            for gram in (None, False):
                spec = {"loss": loss, "batch": n, "dim": d, "gram": gram}
                r = run_child(spec, devices)
                c = r["collectives"]
                sent = sum(v["sent_bytes"] for v in c.values())
                form = "default (n x n Gram)" if gram is None else "d x d covariance"
                print(
                    f"| {loss} | {form} | {_mb(c['all-gather']['operand_bytes'] * devices)} | "
                    f"{_mb(c['all-reduce']['operand_bytes'])} | {_mb(sent)} | "
                    f"{sent * devices / 2**30:,.1f} |",
                    flush=True,
                )
                if not args.no_save:
                    _merge_results(f"global_stats/{loss}/gram={gram}", {**meta, **r})
        return

    spec = {
        "method": args.method,
        "preset": args.preset,
        "batch": args.batch,
        "image_size": args.image_size,
        "fsdp": args.fsdp,
        "fast": args.fast,
        "crop_in_loader": args.preset == "imagenet",
        "num_classes": 1000 if args.preset == "imagenet" else 10,
    }
    if args.backbone:
        spec["backbone"] = args.backbone
    rows = []
    for n in (int(d) for d in args.devices.split(",")):
        start = time.perf_counter()
        r = run_child(spec, n)
        r["wall_s"] = time.perf_counter() - start
        rows.append(r)
        print("\n".join(budget_lines(r)), flush=True)
        if not args.no_save:
            key = f"{args.method}/{spec.get('backbone', args.preset)}/b{args.batch}/fsdp{args.fsdp}"
            _merge_results(f"{key}/{n}", {**meta, **r})
    print(table(rows))
    print(json.dumps([{k: v for k, v in r.items() if k != "largest"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
