"""Throughput of the input pipeline (ssljax.data): decoded and cropped images per second.

Two image folders, both prepared with ``python -m ssljax.data.prepare --dataset=image_folder``:
the CIFAR-10 JPEG folder of ``../shared/data/cifar10-jpg.tar.gz`` (32x32, unpacked to a temporary
folder), and 224x224 JPEGs made by upscaling CIFAR-10 training images (bicubic, quality 90).
For each, and for 0, 1 and 2 worker processes, the loader runs in two modes:

* ``decode``: images as stored (uint8 [b, H, W, 3]), the fixed-size path (augmentation on device);
* ``crop``: ``crop_in_loader=True``, two random-resized crops per image at the stored size,
  the variable-size (ImageNet) path.

Images/s counts source images (each yields two crops in ``crop`` mode); the first batches (worker
start-up) are excluded. The machine is shared, so figures move by 10-20 % between runs.

    python benchmarks/input.py
    python benchmarks/input.py --workers 0,2 --n224 1000 --out /tmp/input.json
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
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--n224", type=int, default=3000, help="number of 224x224 JPEGs to make")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per case")
    return parser.parse_args()


def _make_224_folder(cifar: pathlib.Path, dst: pathlib.Path, n: int) -> None:
    """Upscales the first n/10 training images of each class to 224x224 JPEGs."""
    classes = sorted(p.name for p in (cifar / "train").iterdir())
    per_class = max(1, n // len(classes))
    for c in classes:
        out = dst / "train" / c
        out.mkdir(parents=True)
        for f in sorted((cifar / "train" / c).glob("*.jpg"))[:per_class]:
            with Image.open(f) as im:
                im.convert("RGB").resize((224, 224), Image.BICUBIC).save(out / f.name, quality=90)


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
        _make_224_folder(cifar, tmp / "jpeg224", args.n224)
        results["prepare"]["make_224_s"] = time.perf_counter() - start

        datasets = {}
        for name, root, batch in (("cifar10-32", cifar, 256), ("jpeg-224", tmp / "jpeg224", 64)):
            start = time.perf_counter()
            report = prepare(
                "image_folder", tmp / f"data-{name}", root=root, num_workers=os.cpu_count() or 1
            )
            elapsed = time.perf_counter() - start
            total = sum(report["split_sizes"].values())
            results["prepare"][name] = {"images": total, "seconds": elapsed}
            print(f"prepared {name}: {total} images in {elapsed:.1f} s")
            datasets[name] = (tmp / f"data-{name}", root, batch, report["image_shape"][0])

        print(f"\n{'dataset':<12} {'mode':<7} {'workers':>7} {'images/s':>10} {'first 2 (s)':>12}")
        for name, (data_dir, root, batch, size) in datasets.items():
            for mode in ("decode", "crop"):
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
                        "images_per_s": rate,
                        "first_two_batches_s": first,
                    }
                    results["cases"].append(row)
                    print(f"{name:<12} {mode:<7} {w:>7} {rate:>10.0f} {first:>12.2f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
