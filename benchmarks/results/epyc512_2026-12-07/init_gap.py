"""Is the gap in BN-calibrated kNN at initialisation in the weights or in the measurement?

ssljax's BYOL ResNet-18/4 measured 27.1-27.6% at initialisation, the PyTorch reference's
25.6-26.2%. This script (2026-12-07, run from the repository root with the venv) draws ssljax's
initial network (``train.init_state``, PRNGKey(0)) and the reference's (``torch.manual_seed(0)``),
prints the per-tensor statistics of both backbones, then with ``--knn`` measures both with the
reference's own code (``benchmarks/torch_reference.py``: kNN as initialised and after 50
training batches in train mode). Its output is ``init_gap.txt`` beside it.

``--seeds=0,1,2`` (added in the next session, 2026-12-07b) repeats the draw for each seed (ssljax
``PRNGKey(s)``, reference ``torch.manual_seed(s)``) and measures only the BN-calibrated kNN, so
that the gap can be told from the spread of independent draws; without it the script does what
produced ``init_gap.txt``.
"""

import os
import pathlib
import sys
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_reference as tr  # noqa: E402
import torch_yardstick as ys  # noqa: E402

from ssljax import train  # noqa: E402

ROOT = pathlib.Path(os.environ.get("CIFAR_ROOT", "/work/fid/table/cifar10"))


def main() -> None:
    torch.set_num_threads(1)
    seed_arg = [a for a in sys.argv if a.startswith("--seeds=")]
    seeds = [int(s) for s in seed_arg[0].split("=", 1)[1].split(",")] if seed_arg else [0]
    config = tr.load_config("configs/byol.py:cifar10_cpu", ["global_batch=64"])
    info = types.SimpleNamespace(
        name="x",
        num_classes=10,
        split_sizes={"train": 50000, "test": 10000},
        image_shape=(32, 32, 3),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        class_names=None,
    )
    comps = train.build_components(config, info, num_train_examples=50000)

    def draw(seed: int):
        """The two initial networks of ``seed`` as torch modules: (ssljax's, the reference's)."""
        state = train.init_state(comps, config, jax.random.PRNGKey(seed))
        params, stats = jax.device_get(state.params), jax.device_get(state.batch_stats)
        sd = tr.state_dict_from_ssljax(params, stats)
        torch.manual_seed(seed)
        online_t, _, _ = ys.build_torch_modules(config, 10)
        online_j, _, _ = ys.build_torch_modules(config, 10)
        online_j.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
        return online_j, online_t

    online_j, online_t = draw(seeds[0])
    sd, tsd = online_j.state_dict(), online_t.state_dict()
    print(f"{'tensor':<45}{'ssljax std':>12}{'torch std':>12}")
    for k, v in sd.items():
        if k.startswith("backbone") and k.endswith("conv1.weight"):
            print(f"{k:<45}{v.float().numpy().std():12.4f}{tsd[k].float().numpy().std():12.4f}")
    if "--knn" not in sys.argv:
        return
    tri, trl = tr.load_split(ROOT, "train", 1)
    tei, tel = tr.load_split(ROOT, "test", 1)
    mean, std = tr.channel_stats(tri)
    views = [
        tr.ViewTransform(v, 32, mean, std) for v in (config.augment.view1, config.augment.view2)
    ]
    ds = tr.TwoViewDataset(tri, trl, views)
    ytr, yte = torch.from_numpy(trl), torch.from_numpy(tel)
    fmt, dev = torch.contiguous_format, torch.device("cpu")

    def knn(backbone) -> float:
        f = [tr.extract_features(backbone, x, mean, std, dev, fmt) for x in (tri, tei)]
        return tr.knn_top1(f[0], ytr, f[1], yte, k=200, temperature=0.07, num_classes=10)

    def calibrated(net) -> float:
        torch.manual_seed(1)
        batches = tr.endless(tr.make_loader(ds, 64, workers=0, seed=1, pin=False))
        return knn(tr.calibrated_backbone(net["backbone"], batches, 50, dev, fmt))

    if not seed_arg:
        for name, net in (("ssljax init", online_j), ("torch init", online_t)):
            raw = knn(net["backbone"])
            cal = calibrated(net)
            print(f"{name}: kNN as initialised {100 * raw:.2f}%, BN-calibrated {100 * cal:.2f}%")
        return
    results = {"ssljax": [], "torch": []}
    for seed in seeds:
        online_j, online_t = draw(seed)
        for name, net in (("ssljax", online_j), ("torch", online_t)):
            results[name].append(100 * calibrated(net))
            print(f"seed {seed} {name} init: calibrated kNN {results[name][-1]:.2f}%", flush=True)
    for name, values in results.items():
        print(f"{name}: mean {np.mean(values):.2f}%, std {np.std(values, ddof=1):.2f} over {seeds}")


if __name__ == "__main__":
    main()
