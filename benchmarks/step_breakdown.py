"""Where the train step's time goes: the backbone's passes against the whole step.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/step_breakdown.py \
        --method byol

Builds the step exactly as ``benchmarks/step.py`` does (ResNet-18 with the CIFAR stem,
batch 256, no augmentation, the state replicated and the batch sharded over every device) and
times, as separate jitted programs on the same mesh and inputs: the backbone's forward pass in
train mode on one view, its forward + backward pass on one view, and the full step. For BYOL the
step is expected to cost ``2 x (forward + backward) + 2 x forward`` (the online network on both
views, the target network on both); whatever the step costs beyond that is the heads, the
losses, the optimizer, the EMA and the metrics.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import step as step_bench

from ssljax.models import create_backbone


def median_seconds(fn, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` after compiling and one warm-up call."""
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="byol", choices=step_bench.METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    spec = {"method": args.method, "model": "resnet18_cifar", "dtype": "float32"}
    step_fn, state, batch, config = step_bench.build_step({**spec, "augment": "none"})
    backbone = create_backbone(config.model.backbone, **config.model.backbone_kwargs)
    params, stats = state.params["backbone"], state.batch_stats["backbone"]
    view = batch["image"][:, 0]

    def forward(p, s, x):
        out, _ = backbone.apply(
            {"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"]
        )
        return out

    fwd = median_seconds(jax.jit(forward), params, stats, view, repeats=args.repeats)
    grad = jax.jit(jax.grad(lambda p, s, x: jnp.mean(forward(p, s, x) ** 2)))
    fwd_bwd = median_seconds(grad, params, stats, view, repeats=args.repeats)

    compiled = step_fn.lower(state, batch).compile()
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    full = statistics.median(times)

    target_passes = 2 if args.method == "byol" else 0
    expected = 2 * fwd_bwd + target_passes * fwd
    batch_size = config.global_batch
    print(
        f"{args.method}, ResNet-18 (CIFAR stem), batch {batch_size}, {jax.device_count()} devices"
    )
    print(f"  backbone forward, one view (train mode)  {fwd:7.2f} s")
    print(
        f"  backbone forward + backward, one view    {fwd_bwd:7.2f} s  (backward = "
        f"{(fwd_bwd - fwd) / fwd:.1f} x forward)"
    )
    print(f"  2 x fwd+bwd + {target_passes} x fwd (backbone only)     {expected:7.2f} s")
    print(
        f"  full train step                          {full:7.2f} s  "
        f"({batch_size / full:.1f} img/s; {full - expected:+.2f} s beyond the backbone)"
    )


if __name__ == "__main__":
    main()
