"""Time of the full jitted train step of every method, and the fraction of the machine it uses.

The step is ``ssljax.train.make_train_step``, built exactly as ``train_and_evaluate`` builds it
(``build_components``, ``init_state``, ``jax.jit`` with the batch sharded over a ``data`` mesh,
the state replicated and donated): both views augmented on device, the target branch, the
method's loss, the online probe, the optimizer, the EMA of the target and the metrics. Two
networks, from each method's config presets:

* ``resnet18_cifar``: ``configs/<method>.py:cifar10`` (ResNet-18, CIFAR stem, the preset's
  heads), 32x32 images, batch 256 (SimSiam's preset has 512; it is set to 256 like the others);
* ``resnet50``: ``configs/<method>.py:imagenet`` with the batch set to 32, 224x224 uint8 images
  given whole to the step (``crop_in_loader=False``: the random-resized crop runs on device).

Images are random but fixed uint8 arrays; the dataset is described by a ``SimpleNamespace``, so
nothing is read from disk. Each configuration (method, network, compute dtype, device count)
runs in a fresh process (benchmarks/_timing.py says why), which reports: trace and compile
time, median/min/max of ``--steps`` step times after ``--warmup`` steps, images/s, the peak
resident memory (VmHWM) of the process, and the FLOPs of one step from XLA's cost analysis of
the compiled step. FLOPs / step time / the machine's peak (``benchmarks/peak_flops.py``, read
from ``benchmarks/results/peak_flops.json``) is the utilisation.

    python benchmarks/peak_flops.py            # first, once: the machine's peak
    python benchmarks/step.py                  # the whole grid (hours on 2 cores)
    python benchmarks/step.py --methods byol --models resnet18_cifar --dtypes float32 \
        --devices 1,2 --steps 10               # one cell, one device vs one per core

Results are merged into ``benchmarks/results/step.json`` by configuration, each row with its
own date and load average (the machine is shared: compare rows measured side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import _timing

METHODS = ("byol", "simsiam", "vicreg", "barlow_twins", "dino")
MODELS = {
    # name: (config preset, image size, global batch, num_classes)
    "resnet18_cifar": ("cifar10", 32, 256, 10),
    "resnet50": ("imagenet", 224, 32, 1000),
    # A smoke test of the script itself (the digits preset's network), not part of the grid.
    "resnet_tiny": ("digits", 16, 16, 10),
}
GRID_MODELS = ("resnet18_cifar", "resnet50")
DTYPES = ("float32", "bfloat16")
KEY = ("method", "model", "dtype", "devices", "augment", "malloc", "variant")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Child: one configuration, in its own process.
# ----------------------------------------------------------------------------------------------
def build_config(method: str, model: str, dtype: str, *, batch: int | None = None):
    """The config of ``configs/<method>.py`` at the preset of ``model``, ready for one step.

    Args:
      method: one of :data:`METHODS`.
      model: a key of :data:`MODELS`.
      dtype: compute dtype, ``'float32'`` or ``'bfloat16'``.
      batch: global batch; default the one of :data:`MODELS`.

    Returns:
      The ``ml_collections.ConfigDict``.
    """
    from ssljax import config_schema

    preset, size, default_batch, _ = MODELS[model]
    config = config_schema.load_config(str(_timing.REPO / "configs" / f"{method}.py:{preset}"))
    config.global_batch = batch or default_batch
    config.model.dtype = dtype
    config.data.image_size = size
    config.data.crop_in_loader = False
    # A long run, so the step is measured in its steady state (past the warm-up's first steps
    # is irrelevant to speed, but warmup_steps < total_steps is required).
    config.num_steps = 100_000
    return config


def dataset_info(model: str):
    """A ``DatasetInfo``-like namespace: all the step needs, with no data on disk."""
    import types

    _, size, _, num_classes = MODELS[model]
    return types.SimpleNamespace(
        name=f"synthetic_{size}",
        num_classes=num_classes,
        image_shape=(size, size, 3),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        split_sizes={"train": 50_000, "test": 10_000},
        class_names=[str(i) for i in range(num_classes)],
    )


def make_batch(model: str, batch: int, *, augment: str, seed: int = 0) -> dict:
    """Random but fixed host batch of the shape the step takes.

    With ``augment='device'``: uint8 images ``[B, H, W, 3]`` (the step augments them). With
    ``augment='none'``: two pre-normalised float32 views ``[B, 2, H, W, 3]`` (the step only
    splits them), for the comparison with the PyTorch yardstick, which has no augmentation.
    """
    import numpy as np

    _, size, _, num_classes = MODELS[model]
    rng = np.random.default_rng(seed)
    if augment == "device":
        image = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    else:
        image = rng.standard_normal((batch, 2, size, size, 3), dtype=np.float32)
    label = rng.integers(0, num_classes, (batch,), dtype=np.int32)
    return {"image": image, "label": label}


def split_views(rng, images):
    """The identity augmentation: the two views are given, pre-normalised, in axis 1."""
    del rng
    return images[:, 0], images[:, 1]


def flops_of(compiled) -> float | None:
    """FLOPs of one execution from XLA's cost analysis (summed over the returned entries)."""
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        return None
    if isinstance(cost, dict):
        cost = [cost]
    total = sum(float(c.get("flops", 0.0)) for c in cost or [])
    return total or None


def build_step(spec: dict):
    """Builds config, components, sharded state and batch, and the jitted step of ``spec``.

    Returns:
      ``(step_fn, state, batch, config)`` with ``step_fn`` the ``jax.jit`` of
      ``make_train_step`` exactly as ``train_and_evaluate`` wraps it.
    """
    import dataclasses
    import functools

    import jax

    from ssljax import sharding, train

    config = build_config(spec["method"], spec["model"], spec["dtype"], batch=spec.get("batch"))
    info = dataset_info(spec["model"])
    comps = train.build_components(config, info, num_train_examples=info.split_sizes["train"])
    if spec["augment"] == "none":
        comps = dataclasses.replace(comps, augment_fn=split_views)

    mesh = sharding.make_mesh()
    data_sharding = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    rng = jax.random.PRNGKey(config.seed)
    state_shapes = jax.eval_shape(functools.partial(train.init_state, comps, config), rng)
    state_sharding = jax.tree.map(lambda _: repl, state_shapes)
    state = jax.jit(
        functools.partial(train.init_state, comps, config), out_shardings=state_sharding
    )(rng)
    host_batch = make_batch(spec["model"], config.global_batch, augment=spec["augment"])
    batch = jax.device_put(host_batch, data_sharding)
    step_fn = jax.jit(
        train.make_train_step(comps, config),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )
    return step_fn, state, batch, config


def child(spec: dict) -> dict:
    """Measures one configuration (runs in its own process; see :func:`_timing.run_child`)."""
    import time

    # Before JAX allocates anything, so that every buffer is served under the setting.
    mallopt_applied = _timing.apply_mallopt() if spec.get("malloc") == "mallopt" else None

    import jax

    start = time.perf_counter()
    step_fn, state, batch, config = build_step(spec)
    jax.block_until_ready(state)
    setup_s = time.perf_counter() - start

    start = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # Under SPMD partitioning the cost analysis is that of one device's program: the work of
    # the step is that times the device count (the replicated optimizer and EMA updates are
    # then counted once per device, as they are executed).
    flops_per_device = flops_of(compiled)
    flops = flops_per_device * jax.device_count() if flops_per_device else None

    holder = {"state": state}

    def one_step():
        # The state is donated: each step consumes the previous one's buffers.
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    load_before = _timing.load_average()
    cpu_times: list[float] = []
    times = _timing.time_calls(
        one_step, steps=spec["steps"], warmup=spec["warmup"], cpu_times=cpu_times
    )
    stats = _timing.summarize(times, config.global_batch, cpu_times)
    metrics = jax.device_get(compiled(holder["state"], batch)[1])
    return {
        **spec,
        "batch": config.global_batch,
        "image_size": config.data.image_size,
        "jax_devices": jax.device_count(),
        "setup_s": round(setup_s, 2),
        "trace_s": round(trace_s, 2),
        "compile_s": round(compile_s, 2),
        **stats,
        "step_times_s": [round(t, 4) for t in times],
        "flops_per_device": flops_per_device,
        "flops_per_step": flops,
        "achieved_gflops": round(flops / stats["median_step_s"] / 1e9, 2) if flops else None,
        "peak_rss_mb": round(_timing.peak_rss_mb(), 1),
        "mallopt_applied": mallopt_applied,
        "loss_finite": bool(metrics["step_finite"] > 0),
        "loadavg_start": load_before,
        "loadavg_end": _timing.load_average(),
        "date": _timing.machine_info()["date"],
    }


# ----------------------------------------------------------------------------------------------
# Parent: the grid, one child per configuration.
# ----------------------------------------------------------------------------------------------
def machine_peak_gflops(path: pathlib.Path) -> dict[str, float]:
    """Peak GFLOP/s by device count from peak_flops.json, and the best of all as ``'best'``."""
    if not path.exists():
        return {}
    rows = [r for r in json.loads(path.read_text())["results"] if r.get("backend") == "jax"]
    peaks = {str(r["devices"]): r["best_gflops"] for r in rows}
    if peaks:
        peaks["best"] = max(peaks.values())
    return peaks


def add_utilisation(row: dict, peaks: dict[str, float]) -> dict:
    """Adds achieved / machine peak (the best measured matmul on any device count)."""
    if row.get("achieved_gflops") and peaks.get("best"):
        row["peak_gflops"] = peaks["best"]
        row["utilisation"] = round(row["achieved_gflops"] / peaks["best"], 3)
    return row


def _csv(value: str, allowed) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {bad}; choose from {list(allowed)}")
    return items


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--models", default=",".join(GRID_MODELS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument(
        "--devices",
        default=f"1,{os.cpu_count() or 1}",
        help="XLA CPU device counts to run",
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="global batch (0: the model's, 256 / 32 / 16)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument(
        "--augment",
        default="device",
        choices=("device", "none"),
        help="'none' feeds two pre-normalised views and skips augmentation",
    )
    parser.add_argument("--malloc", default="default", choices=sorted(_timing.MALLOC_SETTINGS))
    parser.add_argument("--out", default=str(_timing.RESULTS_DIR / "step.json"))
    parser.add_argument(
        "--peak",
        default=str(_timing.RESULTS_DIR / "peak_flops.json"),
        help="peak FLOPs JSON",
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="only recompute the utilisation of --out's rows from --peak and print them",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


COLUMNS = (
    "method",
    "model",
    "dtype",
    "devices",
    "compile_s",
    "median_step_s",
    "images_per_s",
    "peak_rss_mb",
    "flops_per_step",
    "achieved_gflops",
    "utilisation",
    "loadavg_start",
)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        _timing.emit_result(child(json.loads(args.child)))
        return
    peaks = machine_peak_gflops(pathlib.Path(args.peak))
    if args.summarize:
        # Utilisation against the current peak file, and the table of every stored row.
        data = json.loads(pathlib.Path(args.out).read_text())
        data["results"] = [add_utilisation(r, peaks) for r in data["results"]]
        pathlib.Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
        _timing.print_table(data["results"], (*COLUMNS[:4], "malloc", *COLUMNS[4:]))
        return
    if not peaks:
        print(f"note: {args.peak} missing; run benchmarks/peak_flops.py for utilisation.")
    if args.augment == "none" and "dino" in _csv(args.methods, METHODS):
        # DINO's local crops are made by the augmentation at their own size: two given views
        # are not the step it trains.
        raise SystemExit("dino's step needs --augment=device (its multi-crop views)")
    rows = []
    for model in _csv(args.models, MODELS):
        for method in _csv(args.methods, METHODS):
            for dtype in _csv(args.dtypes, DTYPES):
                for devices in (int(d) for d in _csv(args.devices, None)):
                    spec = {
                        "method": method,
                        "model": model,
                        "dtype": dtype,
                        "devices": devices,
                        "augment": args.augment,
                        "malloc": args.malloc,
                        "variant": "train.make_train_step",
                        "steps": args.steps,
                        "warmup": args.warmup,
                    }
                    if args.batch:
                        spec["batch"] = args.batch
                    row = _timing.run_child(__file__, spec, devices=devices, malloc=args.malloc)
                    rows.append(add_utilisation(row, peaks))
                    _timing.print_table([row], COLUMNS)
                    if "error" in row:
                        print(row["error"], file=sys.stderr)
                    meta = {**_timing.machine_info(), "script": "benchmarks/step.py"}
                    _timing.write_results(args.out, meta, rows, key=KEY)
    print()
    _timing.print_table(rows, COLUMNS)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
