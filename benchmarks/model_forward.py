"""Forward-pass time of registered backbones: jitted, eval mode, compile time apart.

    python benchmarks/model_forward.py                       # ResNet-50, 224 px, batch 8
    python benchmarks/model_forward.py --models resnet50,resnet18_cifar:32,vit_small_16 \
        --batch 8 --runs 10 --dtype float32

Each model is initialised, its eval-mode forward lowered and compiled (timed: "compile"),
run once to warm up, then run ``--runs`` times; the table gives the median and the spread
(min..max) of the wall time per batch, with ``block_until_ready``. A model may carry its
image size after a colon (default ``--image-size``).
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.models import create_backbone

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bench(name: str, size: int, batch: int, runs: int, dtype) -> dict:
    model = create_backbone(name, dtype=dtype)
    images = jnp.asarray(
        np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32
    )
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), images)
    jax.block_until_ready(variables)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start

    jax.block_until_ready(compiled(variables, images))  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(variables, images))
        times.append(time.perf_counter() - start)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    median = statistics.median(times)
    return {
        "model": name,
        "image": size,
        "batch": batch,
        "params_m": n_params / 1e6,
        "compile_s": compile_s,
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "img_s": batch / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50", help="comma-separated name[:size]")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args()

    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU(s), dtype {args.dtype}, {args.runs} runs after 1 warm-up"
    )
    header = (
        "| model | image | batch | params (M) | compile (s) | median (ms) | min..max (ms) | img/s |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for spec in args.models.split(","):
        name, _, size = spec.partition(":")
        r = bench(name, int(size or args.image_size), args.batch, args.runs, DTYPES[args.dtype])
        print(
            f"| {r['model']} | {r['image']} | {r['batch']} | {r['params_m']:.2f} | "
            f"{r['compile_s']:.1f} | {r['median_ms']:.0f} | {r['min_ms']:.0f}..{r['max_ms']:.0f} | "
            f"{r['img_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
