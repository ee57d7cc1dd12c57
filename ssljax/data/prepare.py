"""Prepares a dataset for ssljax's loader.

Usage::

    python -m ssljax.data.prepare --dataset=image_folder --root=ROOT --data_dir=DIR [--skip_corrupt]
    python -m ssljax.data.prepare --dataset=cifar10 --data_dir=DIR
    python -m ssljax.data.prepare --dataset=imagenet2012 --data_dir=DIR --manual_dir=TARS

``image_folder`` needs neither TensorFlow nor the network. Catalogue datasets are downloaded and
prepared as ArrayRecord by TFDS; most TFDS builders need TensorFlow for that
(``pip install 'ssljax[prepare]'``), and the command says so when it is missing. ``digits`` needs
no preparation (it is built in memory).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ssljax import cli, paths, strict_json
from ssljax.data import digits, image_folder, tfds_source

EXAMPLES = """examples:
  python -m ssljax.data.prepare --dataset=image_folder --root=~/data/cifar10 \\
      --data_dir=~/ssljax_data
  python -m ssljax.data.prepare --dataset=imagenet2012 --data_dir=~/tensorflow_datasets \\
      --manual_dir=~/imagenet_tars

~ and $VARS in paths are expanded. Train on the result with --config.data.root=ROOT
--config.data.data_dir=DIR (image_folder) or --config.data.data_dir=DIR (catalogue datasets).
"""


def prepare(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    skip_corrupt: bool = False,
    num_workers: int = 0,
    manual_dir: str | None = None,
) -> dict[str, Any]:
    """Prepares ``dataset`` into ``data_dir``.

    Args:
      dataset: 'image_folder', 'digits' or a TFDS catalogue name.
      data_dir: destination folder.
      root: the image folder (``image_folder`` only).
      skip_corrupt: leave out undecodable images instead of stopping (``image_folder``).
      num_workers: processes validating images (``image_folder``).
      manual_dir: manually downloaded archives (catalogue datasets such as imagenet2012).

    Returns:
      A report dict ({'dataset_dir', ...}; for image_folder also split sizes and skipped files).

    Raises:
      ValueError: bad arguments or input (the message says what to do).
    """
    if dataset == digits.NAME:
        return {"dataset_dir": None, "note": "digits is built in memory: nothing to prepare."}
    if dataset == image_folder.NAME:
        if root is None:
            raise ValueError(
                "root is required for image_folder: "
                + tfds_source.prepare_command(dataset, data_dir, "ROOT")
            )
        return image_folder.prepare_image_folder(
            root, data_dir, skip_corrupt=skip_corrupt, num_workers=num_workers
        )
    if root is not None or skip_corrupt:
        raise ValueError(f"--root and --skip_corrupt apply to image_folder only, not {dataset!r}.")
    return {"dataset_dir": tfds_source.prepare_catalogue(dataset, data_dir, manual_dir=manual_dir)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.data.prepare",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="image_folder, digits or a TFDS name")
    parser.add_argument("--data_dir", required=True, help="destination folder")
    parser.add_argument("--root", help="image_folder: root/<split>/<class>/*.jpg|jpeg|png")
    parser.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="image_folder: leave out files that do not decode (they are counted and named)",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=os.cpu_count() or 1,
        help="image_folder: processes decoding the images to validate them",
    )
    parser.add_argument("--manual_dir", help="catalogue datasets: manually downloaded archives")
    parser.add_argument(
        "--verbosity", type=int, default=0, help="1: the libraries' log lines and tracebacks"
    )
    args = parser.parse_args(argv)
    # force: absl (imported by TFDS) has already put its handler on the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    if args.verbosity < 1:
        _quiet_tfds()
    try:
        report = prepare(
            args.dataset,
            paths.expand(args.data_dir),
            root=paths.expand(args.root),
            skip_corrupt=args.skip_corrupt,
            num_workers=args.num_workers,
            manual_dir=paths.expand(args.manual_dir),
        )
    except cli.USER_ERRORS as e:
        if args.verbosity >= 1:
            raise
        print(f"error: {e}", file=sys.stderr)
        return cli.USAGE_EXIT_CODE
    skipped = report.get("skipped") or []
    if skipped:
        print(f"Skipped {len(skipped)} corrupt file(s): " + ", ".join(skipped[:20]))
    print(strict_json.dumps(report, indent=2))
    return 0


def _quiet_tfds() -> None:
    """Turns off TFDS's progress bars (raw escape codes in a log) and its INFO lines."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
