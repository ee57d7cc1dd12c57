"""Throughput of the input pipeline (ssljax.data): decoded and cropped images per second.

Two image folders, both prepared with ``python -m ssljax.data.prepare --dataset=image_folder``:
the CIFAR-10 JPEG folder of ``../shared/data/cifar10-jpg.tar.gz`` (32x32, unpacked to a temporary
folder), and ImageNet-like JPEGs: CIFAR-10 training images upscaled (bicubic) to 500x375 or
375x500 (ImageNet's typical size, both orientations, so the folder has no single image shape),
quality 90. For each, and for 0, 1, 2 and N worker processes (N = the cores of the host), the
loader runs in the modes the folder allows:

* ``decode``: images as stored (uint8 [b, H, W, 3]), the fixed-size path (augmentation on device;
  CIFAR-10 only);
* ``crop``: ``crop_in_loader=True``, two random-resized crops per image (to 32 for CIFAR-10, to
  224 for the ImageNet-like folder), the variable-size (ImageNet) path.

Images/s counts source images (each yields two crops in ``crop`` mode), also per worker process
("per core": the rate one core sustains, which sizes ``data.num_workers`` for an accelerator);
the first batches (worker start-up) are excluded. On a shared machine figures move by 10-20 %.

    python benchmarks/input.py
    python benchmarks/input.py --workers 0,2 --n_large 1000 --out /tmp/input.json
"""

import argparse
import json
import logging
import os
import pathlib
import platform
import tarfile
import tempfile
import time

from PIL import Image

from ssljax.data import make_loader, prepare

REPO = pathlib.Path(__file__).resolve().parent.parent


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archive", default=str(REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
    )
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "input.json"), help="JSON results"
    )
    parser.add_argument(
        "--workers",
        default=f"0,1,2,{os.cpu_count() or 1}",
        help="comma-separated worker counts (default 0,1,2 and the host's cores)",
    )
    parser.add_argument(
        "--n_large", type=int, default=3000, help="number of 500x375 / 375x500 JPEGs to make"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per case")
    args = parser.parse_args()
    # The 500x375 set is read in batches of 64: fewer images would give no batch at all.
    if args.n_large < 80:
        parser.error(f"--n_large={args.n_large}: at least 80 (batches of 64 from its train split)")
    return args


def _make_large_folder(cifar: pathlib.Path, dst: pathlib.Path, n: int) -> None:
    """Upscales the first n/10 training images of each class to 500x375 or 375x500 JPEGs."""
    classes = sorted(p.name for p in (cifar / "train").iterdir())
    per_class = max(1, n // len(classes))
    for c in classes:
        out = dst / "train" / c
        out.mkdir(parents=True)
        for i, f in enumerate(sorted((cifar / "train" / c).glob("*.jpg"))[:per_class]):
            size = (500, 375) if i % 2 == 0 else (375, 500)
            with Image.open(f) as im:
                im.convert("RGB").resize(size, Image.BICUBIC).save(out / f.name, quality=90)


def _measure(config, batch, seconds):
    it = make_loader(
        config, split="train", global_batch=batch, seed=0, shuffle=True, drop_remainder=True
    )
    start = time.perf_counter()
    for _ in range(2):  # warm-up: worker start-up and first batches
        next(it)
    first = time.perf_counter() - start
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += len(next(it)["label"])
    elapsed = time.perf_counter() - start
    it.close()
    return n / elapsed, first


def main():
    args = _parse_args()
    logging.basicConfig(level=logging.WARNING)
    workers = [int(w) for w in args.workers.split(",")]
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
        },
        "prepare": {},
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        start = time.perf_counter()
        with tarfile.open(args.archive) as tar:
            tar.extractall(tmp / "cifar", filter="data")
        cifar = tmp / "cifar"
        if not (cifar / "train").is_dir():
            cifar = next(p for p in cifar.iterdir() if (p / "train").is_dir())
        results["prepare"]["unpack_s"] = time.perf_counter() - start
        start = time.perf_counter()
        _make_large_folder(cifar, tmp / "jpeg500x375", args.n_large)
        results["prepare"]["make_large_s"] = time.perf_counter() - start

        datasets = {}
        folders = (("cifar10-32", cifar, 256, 32), ("jpeg-500x375", tmp / "jpeg500x375", 64, 224))
        for name, root, batch, size in folders:
            start = time.perf_counter()
            report = prepare(
                "image_folder", tmp / f"data-{name}", root=root, num_workers=os.cpu_count() or 1
            )
            elapsed = time.perf_counter() - start
            total = sum(report["split_sizes"].values())
            results["prepare"][name] = {"images": total, "seconds": elapsed}
            print(f"prepared {name}: {total} images in {elapsed:.1f} s")
            modes = ("decode", "crop") if report["image_shape"] is not None else ("crop",)
            datasets[name] = (tmp / f"data-{name}", root, batch, size, modes)

        print(
            f"\n{'dataset':<13} {'mode':<7} {'workers':>7} {'images/s':>10} {'per core':>9} "
            f"{'first 2 (s)':>12}"
        )
        for name, (data_dir, root, batch, size, modes) in datasets.items():
            for mode in modes:
                for w in workers:
                    config = {
                        "name": "image_folder",
                        "data_dir": str(data_dir),
                        "root": str(root),
                        "num_workers": w,
                        "crop_in_loader": mode == "crop",
                        "image_size": size,
                    }
                    rate, first = _measure(config, batch, args.seconds)
                    row = {
                        "dataset": name,
                        "mode": mode,
                        "workers": w,
                        "batch": batch,
                        "image_size": size,
                        "images_per_s": rate,
                        # 0 workers: the calling process decodes, one core.
                        "images_per_s_per_core": rate / max(w, 1),
                        "first_two_batches_s": first,
                    }
                    results["cases"].append(row)
                    print(
                        f"{name:<13} {mode:<7} {w:>7} {rate:>10.0f} {rate / max(w, 1):>9.0f} "
                        f"{first:>12.2f}"
                    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
