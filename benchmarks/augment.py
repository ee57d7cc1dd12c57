"""Throughput of the jitted two-view augmentation (ssljax.augment) on this machine.

Reports, per case, source images per second (each image yields two augmented views), the
median over repeated runs of one jitted call, and the compile time measured separately.
Also compares the two vectorisations of the random-order colour jitter.

    python benchmarks/augment.py                      # one CPU device
    python benchmarks/augment.py --devices=2          # one simulated device per core
    python benchmarks/augment.py --out=/tmp/aug.json --repeats=20
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=str(pathlib.Path(__file__).resolve().parent / "results" / "augment.json"),
        help="where to write the JSON results (default: benchmarks/results/augment.json)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case")
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="simulated CPU devices; >1 shards the batch over them (set before JAX starts)",
    )
    parser.add_argument("--skip_jitter_compare", action="store_true")
    return parser.parse_args()


ARGS = _parse_args()
if ARGS.devices > 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssljax import augment  # noqa: E402

P = jax.sharding.PartitionSpec
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _two_view_fn(views, output_size, crop, jitter_impl):
    """As build_augment's function, but with the jitter implementation selectable."""
    if jitter_impl is None:
        return augment.build_augment(views, output_size=output_size, mean=MEAN, std=STD, crop=crop)

    def fn(rng, images):
        x = images.astype(jnp.float32) / 255.0
        outs = []
        for v, cfg in enumerate(views):
            src = x if crop else x[:, v]
            params = augment.sample_view_params(
                jax.random.fold_in(rng, v), x.shape[0], cfg, image_hw=src.shape[1:3], crop=crop
            )
            outs.append(
                augment.apply_view(
                    src,
                    params,
                    cfg,
                    output_size=output_size,
                    mean=MEAN,
                    std=STD,
                    crop=crop,
                    jitter_impl=jitter_impl,
                )
            )
        return tuple(outs)

    return fn


def run_case(name, views, *, batch, in_shape, output_size, crop, repeats, jitter_impl=None):
    images = np.random.default_rng(0).integers(0, 256, (batch, *in_shape), dtype=np.uint8)
    images = jnp.asarray(images)
    if jax.device_count() > 1:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        images = jax.device_put(images, jax.sharding.NamedSharding(mesh, P("data")))
    fn = jax.jit(_two_view_fn(views, output_size, crop, jitter_impl))
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = fn.lower(rng, images).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(rng, images))  # warm-up
    times = []
    for step in range(repeats):
        key = jax.random.fold_in(rng, step)
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(key, images))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "case": name,
        "batch": batch,
        "input_shape": list(in_shape),
        "output_size": output_size,
        "crop_in_jit": crop,
        "jitter_impl": jitter_impl or "hue_once (build_augment)",
        "compile_s": round(compile_s, 3),
        "median_step_s": round(median, 5),
        "min_step_s": round(min(times), 5),
        "images_per_s": round(batch / median, 1),
        "views_per_s": round(2 * batch / median, 1),
    }


def main():
    r = ARGS.repeats
    cases = [
        ("cifar 32 byol views", augment.byol_views(), 512, (32, 32, 3), 32, True),
        ("cifar 32 cifar views (no blur)", augment.cifar_views(), 512, (32, 32, 3), 32, True),
        ("224 byol views, loader crops", augment.byol_views(), 64, (2, 224, 224, 3), 224, False),
        ("224 byol views, RRC from 256", augment.byol_views(), 64, (256, 256, 3), 224, True),
    ]
    results = []
    for name, views, batch, shape, size, crop in cases:
        results.append(
            run_case(
                name, views, batch=batch, in_shape=shape, output_size=size, crop=crop, repeats=r
            )
        )
        print(f"done: {name}", flush=True)
    if not ARGS.skip_jitter_compare:
        for impl in ("hue_once", "switch"):
            for name, batch, shape, size, crop in (
                ("jitter impl, 32", 512, (32, 32, 3), 32, True),
                ("jitter impl, 224", 64, (2, 224, 224, 3), 224, False),
            ):
                views = [dict(v, jitter_prob=1.0) for v in augment.byol_views()]
                results.append(
                    run_case(
                        f"{name}: {impl}",
                        views,
                        batch=batch,
                        in_shape=shape,
                        output_size=size,
                        crop=crop,
                        repeats=r,
                        jitter_impl=impl,
                    )
                )
                print(f"done: {name} {impl}", flush=True)

    header = f"{'case':40s} {'batch':>5s} {'compile s':>9s} {'step ms':>9s} {'images/s':>9s}"
    print(f"\njax {jax.__version__}, {jax.device_count()} device(s), {platform.processor()}")
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['case']:40s} {row['batch']:5d} {row['compile_s']:9.2f} "
            f"{1e3 * row['median_step_s']:9.1f} {row['images_per_s']:9.0f}"
        )
    out = pathlib.Path(ARGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "repeats": r,
        "note": "images_per_s counts source images; each yields two augmented views",
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
