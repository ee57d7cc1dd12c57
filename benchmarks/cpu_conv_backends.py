"""ResNet-18 (CIFAR stem) forward + backward: XLA:CPU's convolution options against PyTorch's.

    python benchmarks/cpu_conv_backends.py             # every setting, batch 64
    python benchmarks/cpu_conv_backends.py --batch 128 --steps 7

The train step's time on a CPU is the backbone's convolutions (forward, input gradient, weight
gradient). This measures the backbone alone -- ``grad(mean(backbone(x) ** 2))`` in train mode,
one batch of random images -- under each XLA:CPU option that routes convolutions or matrix
products to another library (oneDNN, XNNPACK, YNNPACK), on one XLA device and on one device
per core (the batch split), and the same network in PyTorch (oneDNN) at 1 and 2 threads,
contiguous and channels-last. Each setting runs in its own process (XLA reads its flags at
start-up); the table gives images/s at the median step time and the ratio to the fastest
PyTorch setting.
"""

from __future__ import annotations

import argparse
import os
import sys

import _timing

# XLA:CPU debug options of jaxlib 0.10 that select a library for convolutions or dots; their
# help strings are in jaxlib's libjax_common.so (``strings | grep xla_cpu_``).
XLA_SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": (
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
    ),
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_conv": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "xnn_conv_dot": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
    "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
}
TORCH_SETTINGS = ((1, "contiguous"), (2, "contiguous"), (2, "channels_last"))


def jax_child(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from ssljax.models import create_backbone

    batch = spec["batch"]
    model = create_backbone("resnet18_cifar")
    x = np.random.default_rng(0).standard_normal((batch, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))

    def loss(params, stats, x):
        out, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(out**2)

    grad = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"], x)
    compiled = grad.compile()
    times = _timing.time_calls(
        lambda: jax.block_until_ready(compiled(variables["params"], variables["batch_stats"], x)),
        steps=spec["steps"],
        warmup=1,
    )
    return {**spec, "devices": jax.device_count(), **_timing.summarize(times, batch)}


def torch_child(spec: dict) -> dict:
    import step as step_bench
    import torch
    import torch_yardstick

    torch.set_num_threads(spec["threads"])
    config = step_bench.build_config("byol", "resnet18_cifar", "float32")
    online, _, _ = torch_yardstick.build_torch_modules(config, 10)
    fmt = torch.channels_last if spec["format"] == "channels_last" else torch.contiguous_format
    net = online["backbone"].to(memory_format=fmt)
    x = torch.randn(spec["batch"], 3, 32, 32).to(memory_format=fmt)

    def one_step():
        net.zero_grad(set_to_none=True)
        (net(x) ** 2).mean().backward()

    times = _timing.time_calls(one_step, steps=spec["steps"], warmup=1)
    return {**spec, **_timing.summarize(times, spec["batch"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--settings", default=",".join(XLA_SETTINGS))
    parser.add_argument("--out", default=str(_timing.RESULTS_DIR / "cpu_conv_backends.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import json

        spec = json.loads(args.child)
        _timing.emit_result(torch_child(spec) if spec["side"] == "pytorch" else jax_child(spec))
        return
    cores = os.cpu_count() or 1
    rows = []
    common = {"batch": args.batch, "steps": args.steps}
    for name in args.settings.split(","):
        for devices in sorted({1, cores}):
            spec = {**common, "side": "jax", "setting": name, "xla_flags": XLA_SETTINGS[name]}
            os.environ["XLA_FLAGS"] = XLA_SETTINGS[name]
            rows.append(_timing.run_child(__file__, spec, devices=devices))
            print(rows[-1].get("setting"), devices, rows[-1].get("images_per_s"), flush=True)
    os.environ["XLA_FLAGS"] = ""
    for threads, fmt in TORCH_SETTINGS:
        spec = {**common, "side": "pytorch", "threads": threads, "format": fmt}
        rows.append(_timing.run_child(__file__, spec, devices=None))
        print("pytorch", threads, fmt, rows[-1].get("images_per_s"), flush=True)
    best_torch = max((r.get("images_per_s", 0) for r in rows if r["side"] == "pytorch"), default=0)
    for r in rows:
        if "images_per_s" in r and best_torch:
            r["vs_best_pytorch"] = round(r["images_per_s"] / best_torch, 3)
    _timing.print_table(
        rows,
        (
            "side",
            "setting",
            "devices",
            "threads",
            "format",
            "median_step_s",
            "images_per_s",
            "vs_best_pytorch",
        ),
    )
    _timing.write_results(args.out, _timing.machine_info(), rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
