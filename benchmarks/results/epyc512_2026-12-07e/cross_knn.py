"""The reference's kNN on ssljax's final weights: is part of the gap in the evaluation?

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python cross_knn.py SEED...

For each seed, ssljax's final online backbone (``ssljax.eval.restore.load_run`` of the run's
newest checkpoint) is loaded into the reference's torch backbone (``export.resnet_to_torchvision``
names) and evaluated with the reference's kNN (its JPEG decoding, normalisation, eval-mode
features, weighted kNN k=200, T=0.07), beside ssljax's own end-of-run kNN of the same weights.
With ``UNBIASED=1`` the running variances are first put in PyTorch's convention (unbiased batch
variance), to measure what that convention alone changes in the kNN figure.
"""

import json
import os
import sys
import time

import jax
import numpy as np
import torch

sys.path.insert(0, "benchmarks")
import torch_reference as tr  # noqa: E402
import torch_yardstick as yardstick  # noqa: E402

from ssljax import export  # noqa: E402
from ssljax.eval.restore import load_run  # noqa: E402

O = "/work/fid/out"
ROOT = "/work/fid/table/cifar10"
torch.set_num_threads(2)
config = tr.load_config(
    "configs/simsiam.py:cifar10_cpu",
    ["global_batch=64", "optimizer.base_lr=1.0", "optimizer.weight_decay=1e-5"],
)
t0 = time.perf_counter()
train_x, train_y = tr.load_split(tr.pathlib.Path(ROOT), "train", 2)
test_x, test_y = tr.load_split(tr.pathlib.Path(ROOT), "test", 2)
mean, std = tr.channel_stats(train_x)
print(f"data: {len(train_x)} / {len(test_x)} images ({time.perf_counter() - t0:.0f} s)", flush=True)
ytr, yte = torch.from_numpy(train_y), torch.from_numpy(test_y)
# UNBIASED=1: PyTorch's running-variance convention instead of Flax's: each BatchNorm's running
# variance times n / (n - 1), n = batch (64) x the layer input's height x width (after
# thousands of updates the initial variance's weight 0.9^updates is 0).
UNBIASED = os.environ.get("UNBIASED") == "1"


def scale_to_unbiased(backbone) -> None:
    sizes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.__setitem__(m, i[0].shape))
        for m in backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    backbone.eval()
    with torch.no_grad():
        backbone(torch.zeros(config.global_batch, 3, 32, 32))
    for h in hooks:
        h.remove()
    for m, (b, _, h, w) in sizes.items():
        n = b * h * w
        m.running_var.mul_(n / (n - 1))


results = []
for seed in sys.argv[1:]:
    workdir = f"{O}/ssljax.simsiam_b64_lr1_4ep.s{seed}"
    summary = json.load(open(f"{workdir}/summary.json"))
    run = load_run(workdir, with_data=False)
    online, _, _ = yardstick.build_torch_modules(config, 10)
    backbone = online["backbone"]
    state = export.resnet_to_torchvision(
        jax.device_get(run.params), jax.device_get(run.batch_stats)
    )
    backbone.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    if UNBIASED:
        scale_to_unbiased(backbone)
    t0 = time.perf_counter()
    feats = (
        tr.extract_features(
            backbone, train_x, mean, std, torch.device("cpu"), torch.contiguous_format
        ),
        tr.extract_features(
            backbone, test_x, mean, std, torch.device("cpu"), torch.contiguous_format
        ),
    )
    acc = tr.knn_top1(
        feats[0],
        ytr,
        feats[1],
        yte,
        k=config.knn.k,
        temperature=config.knn.temperature,
        num_classes=10,
    )
    row = {
        "seed": int(seed),
        "step": run.step,
        "ssljax_knn": summary["knn_top1"],
        "reference_knn_of_ssljax_weights": acc,
        "running_var": "unbiased (torch)" if UNBIASED else "biased (flax)",
    }
    results.append(row)
    print(
        f"seed {seed} step {run.step}: ssljax's kNN {100 * summary['knn_top1']:.2f}%, the "
        f"reference's kNN of the same weights{' (unbiased var)' if UNBIASED else ''} "
        f"{100 * acc:.2f}% "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
print(json.dumps(results))
