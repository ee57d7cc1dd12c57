"""How far Flax's fast BatchNorm variance (E[x^2] - E[x]^2) is from the two-pass one in ssljax.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python fast_variance.py SEED

ssljax's BatchNorm layers use Flax's default ``use_fast_variance=True``; PyTorch (the reference,
the official SimSiam code) computes the batch variance in a numerically stable way. On ssljax's
final online backbone of a seed and the first 64 CIFAR-10 test images (normalised, no augmentation),
in training mode: the backbone's output with the fast and with the two-pass variance, and each
BatchNorm's batch variance both ways against a float64 two-pass reference (NumPy).
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "benchmarks")
import torch_reference as tr  # noqa: E402

from ssljax.eval.restore import load_run  # noqa: E402

seed = sys.argv[1]
run = load_run(f"/work/fid/out/ssljax.simsiam_b64_lr1_4ep.s{seed}", with_data=False)
images, _ = tr.load_split(tr.pathlib.Path("/work/fid/table/cifar10"), "test", 1)
mean, std = tr.channel_stats(images)
x = ((images[:64] / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
params = jax.device_get(run.params)
stats = jax.device_get(run.batch_stats)

inputs = {}


def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
        inputs[context.module.path] = np.asarray(args[0], np.float64)
    return next_fun(*args, **kwargs)


outs = {}
ORIGINAL = nn.BatchNorm.__call__
for fast in (True, False):

    def call(self, x, *a, _fast=fast, **k):
        object.__setattr__(self, "use_fast_variance", _fast)
        return ORIGINAL(self, x, *a, **k)

    nn.BatchNorm.__call__ = call
    try:
        with nn.intercept_methods(record):
            y, _ = run.backbone.apply(
                {"params": params, "batch_stats": stats},
                jnp.asarray(x),
                train=True,
                mutable=["batch_stats"],
            )
    finally:
        nn.BatchNorm.__call__ = ORIGINAL
    outs[fast] = np.asarray(y, np.float64)

d = np.linalg.norm(outs[True] - outs[False]) / np.linalg.norm(outs[False])
print(f"seed {seed}: backbone output, fast vs two-pass variance: relative difference {d:.2e}")
worst = []
for path, z in inputs.items():
    axes = tuple(range(z.ndim - 1))
    z32 = z.astype(np.float32)
    exact = z.var(axis=axes)
    fast = (
        np.mean(z32 * z32, axis=axes, dtype=np.float32)
        - np.mean(z32, axis=axes, dtype=np.float32) ** 2
    )
    two = np.mean((z32 - z32.mean(axis=axes, dtype=np.float32)) ** 2, axis=axes, dtype=np.float32)
    ratio = np.abs(z.mean(axis=axes)) / np.sqrt(exact + 1e-12)
    worst.append(
        (
            np.max(np.abs(fast - exact) / (exact + 1e-5)),
            np.max(np.abs(two - exact) / (exact + 1e-5)),
            np.max(ratio),
            "/".join(path),
        )
    )
worst.sort(reverse=True)
print("BatchNorm layers by worst relative error of the float32 batch variance (vs float64):")
print("  fast E[x^2]-E[x]^2   two-pass   max |mean|/std   layer")
for f, t, r, name in worst[:8]:
    print(f"  {f:.2e}            {t:.2e}   {r:8.2f}         {name}")
fast_median = np.median([w[0] for w in worst])
two_median = np.median([w[1] for w in worst])
print(f"  median over {len(worst)} layers: fast {fast_median:.2e}, two-pass {two_median:.2e}")
