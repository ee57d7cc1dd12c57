"""A folder of images, ``root/<split>/<class>/*.jpg|jpeg|png``, as a TFDS dataset of our own.

Preparing (``python -m ssljax.data.prepare --dataset=image_folder --root=ROOT --data_dir=DIR``)
decodes every file once with PIL to validate it, then writes a genuine TFDS dataset in ArrayRecord
format to ``DIR/image_folder/1.0.0/`` with TFDS's own writer, which needs no TensorFlow when it is
handed encoded bytes. So the result is read like any catalogue dataset (``tfds.data_source``,
random access, no TensorFlow), and TFDS users can read it too.

What is stored: the original bytes of every RGB image (no re-encoding, so pixels are exactly what
PIL decodes from the file); grayscale, palette, RGBA or CMYK images are converted to RGB (alpha
dropped) and stored as PNG, and 16-bit or floating-point images are scaled to 8 bits
(``ssljax.data.image_modes``), not clipped. Features: ``image`` (any size), ``label`` (class
folders sorted by name give labels 0, 1, ...), ``file_name`` (``<split>/<class>/<file>``). The
dataset's metadata (``metadata.json``) holds the source root, the per-channel mean and standard
deviation on the [0, 1] scale over every pixel of the ``train`` split (of all splits if there is
no ``train``), the common image shape or ``None`` if sizes differ, per-class counts and any
skipped files.

Bad input is refused before anything is written: a corrupt or truncated file is named (and with
``skip_corrupt`` left out and counted instead), an empty class folder, a split with no images,
splits with different class folders, all raise ``ValueError``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import pathlib
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ssljax.data import tfds_source
from ssljax.data.image_modes import to_rgb

logger = logging.getLogger(__name__)

NAME = "image_folder"
VERSION = "1.0.0"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# How many bad files an error message names before summarising the rest.
_MAX_NAMED = 20


def dataset_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    """Returns the folder an image folder is prepared into: ``data_dir/image_folder/1.0.0``."""
    return pathlib.Path(data_dir) / NAME / VERSION


def _visible_dirs(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: str | os.PathLike) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """Lists the images of ``root/<split>/<class>/``.

    Args:
      root: the folder holding one folder per split.

    Returns:
      (class names sorted, {split: [(path relative to root, label), ...] in sorted order}).

    Raises:
      ValueError: missing root, no split folders, an empty split or class folder, a split name
        TFDS cannot use, or splits whose class folders differ.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(
            f"root={os.fspath(root)!r} is not a folder; it must hold <split>/<class>/."
        )
    split_dirs = _visible_dirs(root)
    if not split_dirs:
        raise ValueError(
            f"root={os.fspath(root)!r} holds no split folders; expected root/<split>/<class>/*.jpg "
            "(e.g. root/train/cat/0001.jpg)."
        )
    class_names: tuple[str, ...] | None = None
    files: dict[str, list[tuple[str, int]]] = {}
    other = 0
    for split_dir in split_dirs:
        split = split_dir.name
        if not re.fullmatch(r"[A-Za-z0-9_]+", split):
            raise ValueError(
                f"Split folder {os.fspath(split_dir)!r}: split names may hold only letters, "
                "digits and '_' (TFDS split names); rename it."
            )
        class_dirs = _visible_dirs(split_dir)
        if not class_dirs:
            raise ValueError(
                f"Split folder {os.fspath(split_dir)!r} has no class folders and so no images; "
                "add root/<split>/<class>/ folders of images or remove it."
            )
        names = tuple(d.name for d in class_dirs)
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise ValueError(
                f"Split {split!r} has class folders {list(names)} but the first split has "
                f"{list(class_names)}; every split needs the same class folders so that labels "
                "agree."
            )
        entries = []
        for label, class_dir in enumerate(class_dirs):
            found = 0
            for f in sorted(class_dir.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    other += 1
                    continue
                entries.append((f"{split}/{class_dir.name}/{f.name}", label))
                found += 1
            if not found:
                raise ValueError(
                    f"Class folder {os.fspath(class_dir)!r} holds no {'/'.join(IMAGE_EXTENSIONS)} "
                    "images; add images or remove the folder (a class without examples)."
                )
        files[split] = entries
    if other:
        logger.warning("Ignored %d files under %s without an image extension.", other, root)
    assert class_names is not None
    return class_names, files


def inspect_file(path: str) -> tuple[str | None, str, int, int, np.ndarray | None]:
    """Decodes one image file fully, as a validity check.

    Args:
      path: the file.

    Returns:
      (error message or None, PIL mode, height, width, float64 [2, 3] per-channel sums of the RGB
      pixel values and of their squares).
    """
    try:
        with Image.open(path) as image:
            # load() decodes every byte: a truncated JPEG raises here, not in a loader worker.
            image.load()
            mode = image.mode
            rgb = np.asarray(to_rgb(image), np.float64)
    except Exception as e:  # noqa: BLE001 - any decoding failure makes the file unusable.
        return f"{type(e).__name__}: {e}", "", 0, 0, None
    flat = rgb.reshape(-1, 3)
    sums = np.stack([flat.sum(0), np.square(flat).sum(0)])
    return None, mode, rgb.shape[0], rgb.shape[1], sums


def _inspect_all(paths: list[str], num_workers: int) -> Iterator[tuple]:
    if num_workers <= 0:
        yield from map(inspect_file, paths)
        return
    # 'spawn': forking a process that may hold JAX's threads is unsafe.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
        yield from pool.map(inspect_file, paths, chunksize=256)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes validated image files as a TFDS dataset (no TensorFlow needed: bytes in)."""

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {
        str(VERSION): "ssljax image folder: RGB files stored as-is, others as RGB PNG."
    }
    # No checksums file or code folder to find: TFDS's lookup of them needs the
    # `importlib_resources` backport for a builder inside a package, which may be absent.
    code_path = None

    def __init__(self, *, root: pathlib.Path, plan: dict, metadata: dict, **kwargs: Any):
        self._root = root
        self._plan = plan
        self._metadata = metadata
        super().__init__(**kwargs)

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
    # prepared" for every builder; nothing is downloaded here and prepare_image_folder logs
    # its own report.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Image folder {self._root} prepared by ssljax.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=self._metadata["class_names"]),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(self._metadata),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        return {split: self._generate_examples(entries) for split, entries in self._plan.items()}

    def _generate_examples(self, entries: list) -> Iterator[tuple[str, dict]]:
        for rel, label, mode in entries:
            path = self._root / rel
            if mode == "RGB":
                data = path.read_bytes()
            else:
                with Image.open(path) as image:
                    data = _png_bytes(to_rgb(image))
            yield rel, {"image": data, "label": label, "file_name": rel}


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _format_bad(bad: list[tuple[str, str]]) -> str:
    lines = [f"  {rel}: {err}" for rel, err in bad[:_MAX_NAMED]]
    if len(bad) > _MAX_NAMED:
        lines.append(f"  ... and {len(bad) - _MAX_NAMED} more")
    return "\n".join(lines)


def prepare_image_folder(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    skip_corrupt: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Validates every image under ``root`` and writes them as a TFDS ArrayRecord dataset.

    Args:
      root: ``root/<split>/<class>/*.jpg|jpeg|png``.
      data_dir: the dataset goes to ``data_dir/image_folder/1.0.0``.
      skip_corrupt: leave out files PIL cannot decode (reported) instead of stopping.
      num_workers: processes decoding files for validation (0: this process).

    Returns:
      A report: {'dataset_dir', 'split_sizes', 'skipped' (relative paths), 'image_shape',
      'mean', 'std', 'class_names'}.

    Raises:
      ValueError: bad folder layout (see ``scan``), corrupt files without ``skip_corrupt``, a
        class left empty by skipping, or ``data_dir`` already holding another image folder.
    """
    root = pathlib.Path(root).resolve()
    if not root.is_dir():
        raise ValueError(f"root={os.fspath(root)!r} does not exist or is not a folder.")
    out_dir = dataset_dir(data_dir)
    if (out_dir / "dataset_info.json").exists():
        previous = read_metadata(out_dir)
        if previous.get("root") != os.fspath(root):
            new_dir = sibling_data_dir(data_dir, root)
            raise ValueError(
                f"data_dir={os.fspath(data_dir)!r} already holds an image folder prepared from "
                f"{previous.get('root')!r}. Prepare {os.fspath(root)!r} into its own data_dir: "
                f"{tfds_source.prepare_command(NAME, new_dir, os.fspath(root))}"
            )
        logger.info("%s is already prepared in %s; delete it to prepare again.", root, out_dir)
        return {"dataset_dir": os.fspath(out_dir), **_report(previous)}

    class_names, files = scan(root)
    stats_split = "train" if "train" in files else None
    todo = [(split, rel, label) for split, entries in files.items() for rel, label in entries]
    logger.info("Validating %d images under %s ...", len(todo), root)
    plan: dict[str, list] = {split: [] for split in files}
    bad: list[tuple[str, str]] = []
    sizes: set[tuple[int, int]] = set()
    sums = np.zeros((2, 3), np.float64)
    num_pixels = 0
    results = _inspect_all([os.fspath(root / rel) for _, rel, _ in todo], num_workers)
    for n, ((split, rel, label), (err, mode, h, w, s)) in enumerate(
        zip(todo, results, strict=True), 1
    ):
        if n % 10000 == 0:
            logger.info("  %d / %d files checked", n, len(todo))
        if err is not None:
            bad.append((rel, err))
            continue
        plan[split].append((rel, label, mode))
        sizes.add((h, w))
        if stats_split is None or split == stats_split:
            sums += s
            num_pixels += h * w

    if bad and not skip_corrupt:
        raise ValueError(
            f"{len(bad)} corrupt or unreadable image file(s) under {os.fspath(root)}:\n"
            f"{_format_bad(bad)}\nRepair or delete them, or prepare with --skip_corrupt "
            "(skip_corrupt=True) to leave them out."
        )
    if bad:
        logger.warning(
            "Skipped %d corrupt or unreadable image file(s):\n%s", len(bad), _format_bad(bad)
        )
    counts = {}
    for split, entries in plan.items():
        per_class = np.bincount([e[1] for e in entries], minlength=len(class_names))
        if (per_class == 0).any():
            empty = [class_names[c] for c in np.flatnonzero(per_class == 0)]
            raise ValueError(
                f"After skipping corrupt files, split {split!r} has no images of classes {empty}."
            )
        counts[split] = [int(c) for c in per_class]

    mean = sums[0] / num_pixels
    std = np.sqrt(np.maximum(sums[1] / num_pixels - np.square(mean), 0.0))
    metadata = {
        "format": "ssljax.image_folder",
        "root": os.fspath(root),
        "class_names": list(class_names),
        "mean": [float(m) / 255.0 for m in mean],
        "std": [float(s) / 255.0 for s in std],
        "stats_split": stats_split or "all",
        "image_shape": [*next(iter(sizes)), 3] if len(sizes) == 1 else None,
        "class_counts": counts,
        "skipped": [rel for rel, _ in bad],
    }
    builder = _Builder(
        root=root, plan=plan, metadata=metadata, data_dir=os.fspath(data_dir),
        file_format="array_record",
    )  # fmt: skip
    # TFDS insists on a download folder even with nothing to download: keep it out of data_dir.
    with tempfile.TemporaryDirectory() as tmp:
        builder.download_and_prepare(download_dir=tmp)
    logger.info("Prepared %s into %s: %s", root, out_dir, {k: sum(v) for k, v in counts.items()})
    return {"dataset_dir": os.fspath(out_dir), **_report(metadata)}


def _report(metadata: dict) -> dict[str, Any]:
    return {
        "split_sizes": {k: sum(v) for k, v in metadata["class_counts"].items()},
        "skipped": list(metadata["skipped"]),
        "image_shape": metadata["image_shape"],
        "mean": metadata["mean"],
        "std": metadata["std"],
        "class_names": metadata["class_names"],
    }


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """Returns the ssljax metadata stored with a prepared image folder."""
    return dict(tfds.builder_from_directory(os.fspath(directory)).info.metadata or {})


def sibling_data_dir(data_dir: str | os.PathLike, root: str | os.PathLike) -> str:
    """A data_dir for ``root`` beside a taken one: ``<data_dir>_<root's folder name>``."""
    name = pathlib.Path(root).resolve().name or "images"
    return f"{os.fspath(data_dir).rstrip(os.sep)}_{name}"


def open_builder(data_dir: str | os.PathLike | None, root: str | None) -> Any:
    """Returns the TFDS (read-only) builder of a prepared image folder.

    Args:
      data_dir: the folder it was prepared into.
      root: the image folder the config names, or None; if given it must be the one prepared.

    Raises:
      ValueError: not prepared, or prepared from another root.
    """
    command = tfds_source.prepare_command(NAME, data_dir or "DIR", root or "ROOT")
    missing_root = (
        f"data.root={root!r} does not exist (or is not a folder): point --config.data.root at "
        "the folder holding <split>/<class>/ images."
    )
    if data_dir is None:
        raise ValueError(f"data.data_dir is not set; prepare the image folder first: {command}")
    directory = dataset_dir(data_dir)
    if not (directory / "dataset_info.json").exists():
        if root and not os.path.isdir(root):
            raise ValueError(missing_root)
        raise ValueError(
            f"No image folder is prepared in data.data_dir={os.fspath(data_dir)!r}. "
            f"Prepare it with: {command}"
        )
    builder = tfds.builder_from_directory(os.fspath(directory))
    prepared_root = (builder.info.metadata or {}).get("root")
    if root is not None and prepared_root != os.fspath(pathlib.Path(root).resolve()):
        held = f"data.data_dir={os.fspath(data_dir)!r} holds the image folder {prepared_root!r}"
        if not os.path.isdir(root):
            raise ValueError(
                f"{missing_root} ({held}; --config.data.root={prepared_root} reads it.)"
            )
        # The data_dir is taken: the command must name a new one, used for training too.
        new_dir = sibling_data_dir(data_dir, root)
        raise ValueError(
            f"{held}, not data.root={root!r}. Prepare it into its own data_dir: "
            f"{tfds_source.prepare_command(NAME, new_dir, root)} and train with "
            f"--config.data.data_dir={new_dir}"
        )
    return builder
