"""Tests of the image_folder builder, the loader's crops and worker processes, on real CIFAR-10."""

import io
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ssljax.data import get_dataset_info, loader, make_loader, prepare

CLASSES = ("ship", "airplane", "cat")  # copied out of order on purpose
SORTED = tuple(sorted(CLASSES))
N_TRAIN, N_TEST = 20, 10


def _copy_subset(cifar10_dir: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for c in CLASSES:
            (dst / split / c).mkdir(parents=True)
            for f in sorted((cifar10_dir / split / c).glob("*.jpg"))[:n]:
                shutil.copy(f, dst / split / c / f.name)
    return dst


def _pil_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def prepared(cifar10_dir, tmp_path_factory):
    root = _copy_subset(cifar10_dir, tmp_path_factory.mktemp("subset"))
    data_dir = tmp_path_factory.mktemp("data_dir")
    report = prepare("image_folder", data_dir, root=root)
    return root, data_dir, report


def _config(root, data_dir, **kwargs):
    return {"name": "image_folder", "root": str(root), "data_dir": str(data_dir), **kwargs}


def test_info_counts_labels_and_statistics(prepared):
    root, data_dir, report = prepared
    info = get_dataset_info(_config(root, data_dir))
    assert info.class_names == SORTED and info.num_classes == 3
    assert info.split_sizes == {"train": 3 * N_TRAIN, "test": 3 * N_TEST}
    assert info.image_shape == (32, 32, 3)
    assert report["skipped"] == []
    # Channel statistics: every pixel of the train split, decoded by PIL, on the [0, 1] scale.
    pixels = np.stack([_pil_rgb(f) for f in sorted(root.glob("train/*/*.jpg"))]) / 255.0
    np.testing.assert_allclose(info.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(info.std, pixels.std(axis=(0, 1, 2)), rtol=1e-9)


@pytest.mark.parametrize("split, per_class", [("train", N_TRAIN), ("test", N_TEST)])
def test_pixels_equal_pil_and_labels_follow_sorted_names(prepared, split, per_class):
    root, data_dir, _ = prepared
    it = make_loader(
        _config(root, data_dir),
        split=split,
        global_batch=16,
        seed=0,
        shuffle=False,
        drop_remainder=False,
        num_epochs=1,
    )
    batches = list(it)
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    images = np.concatenate([b["image"] for b in batches])[mask]
    np.testing.assert_array_equal(index, np.arange(3 * per_class))
    np.testing.assert_array_equal(np.bincount(labels), [per_class] * 3)
    # Which file each record came from: the TFDS dataset stores it, read here with TFDS itself.
    records = tfds.data_source("image_folder", split=split, data_dir=str(data_dir))
    for i in range(len(index)):
        rel = records[int(index[i])]["file_name"].decode()
        _, class_name, _ = rel.split("/")
        assert labels[i] == SORTED.index(class_name)
        np.testing.assert_array_equal(images[i], _pil_rgb(root / rel))


def test_random_crops_reproducible_and_independent_of_batching(prepared):
    root, data_dir, _ = prepared
    config = _config(root, data_dir, crop_in_loader=True, image_size=24)

    def crops(global_batch, process_index=0, process_count=1):
        it = make_loader(
            config,
            split="train",
            global_batch=global_batch,
            seed=5,
            shuffle=True,
            drop_remainder=True,
            num_views=3,
            process_index=process_index,
            process_count=process_count,
        )
        out = {}
        for _ in range(it.steps_per_epoch):
            b = next(it)
            assert b["image"].shape == (global_batch // process_count, 3, 24, 24, 3)
            out.update({int(i): img for i, img in zip(b["index"], b["image"], strict=True)})
        return out

    a = crops(20)
    b = crops(12)
    halves = {**crops(20, 0, 2), **crops(20, 1, 2)}
    assert len(a) == 60 and len(b) == 60 and len(halves) == 60
    for i in a:
        np.testing.assert_array_equal(a[i], b[i])
        np.testing.assert_array_equal(a[i], halves[i])
        assert not np.array_equal(a[i][0], a[i][1])  # views differ

    # Each view is a box of the decoded image, resized: recompute with the same generator.
    index = 7
    records = tfds.data_source("image_folder", split="train", data_dir=str(data_dir))
    rel = records[index]["file_name"].decode()
    image = Image.fromarray(_pil_rgb(root / rel))
    rng = loader.crop_rng(5, 0, index)
    for v in range(3):
        box = loader.random_resized_crop_box(rng, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
        top, left, h, w = box
        want = np.asarray(
            image.crop((left, top, left + w, top + h)).resize((24, 24), Image.BILINEAR)
        )
        np.testing.assert_array_equal(a[index][v], want)


def test_crop_box_bounds_and_fallback():
    rng = np.random.default_rng(0)
    fractions, ratios = [], []
    for _ in range(4096):
        top, left, h, w = loader.random_resized_crop_box(rng, 224, 300, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 300
        fractions.append(h * w / (224 * 300))
        ratios.append(w / h)
    fractions, ratios = np.array(fractions), np.array(ratios)
    # Rounding the sides to integers moves the area and ratio by under 1 %.
    assert fractions.min() >= 0.08 * 0.98 and fractions.max() <= 1.0
    assert ratios.min() >= 0.75 * 0.98 and ratios.max() <= 4 / 3 * 1.02
    # A 10 x 1000 strip admits no box of the ratio range: torchvision's fallback, the widest
    # centred box with ratio 4/3.
    assert loader.random_resized_crop_box(rng, 10, 1000, (0.08, 1.0), (3 / 4, 4 / 3)) == (
        0,
        (1000 - 13) // 2,
        10,
        13,
    )


def test_center_crop_protocol():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 40, 3), np.uint8))
    out = loader.center_crop(image, 32)
    # Shorter side 40 -> round(32 / 0.875) = 37, longer 60 -> int(37 * 60 / 40) = 55, then the
    # central 32 x 32: rows round((55 - 32) / 2) = 12 (11.5 rounds to even), columns 2.
    resized = np.asarray(image.resize((37, 55), Image.BILINEAR))
    np.testing.assert_array_equal(out, resized[12:44, 2:34])


def _variable_folder(base: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(1)
    shapes = [(40, 30), (25, 50), (33, 33)]
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = base / split / c
            d.mkdir(parents=True)
            for k, (h, w) in enumerate(shapes):
                arr = rng.integers(0, 256, (h, w, 3), np.uint8)
                img = Image.fromarray(arr)
                if k == 1:
                    img = img.convert("L")  # grayscale PNG
                if k == 2:
                    img = img.convert("RGBA")
                img.save(d / f"{k}.png")
    return base


def test_variable_sizes_need_crop_in_loader(tmp_path):
    root = _variable_folder(tmp_path / "root")
    data_dir = tmp_path / "data"
    report = prepare("image_folder", data_dir, root=root)
    assert report["image_shape"] is None
    info = get_dataset_info(_config(root, data_dir))
    assert info.image_shape is None
    kwargs = dict(split="train", global_batch=2, seed=0, shuffle=True, drop_remainder=True)
    with pytest.raises(ValueError, match="crop_in_loader=True"):
        make_loader(_config(root, data_dir), **kwargs)
    it = make_loader(_config(root, data_dir, crop_in_loader=True, image_size=16), **kwargs)
    assert next(it)["image"].shape == (2, 2, 16, 16, 3)
    it = make_loader(
        _config(root, data_dir, crop_in_loader=True, image_size=16), **{**kwargs, "split": "test"}
    )
    assert next(it)["image"].shape == (2, 16, 16, 3)  # centre crop for the eval split
    # Grayscale and RGBA files were stored as RGB.
    records = tfds.data_source("image_folder", split="train", data_dir=str(data_dir))
    for i in range(len(records)):
        r = records[i]
        want = _pil_rgb(root / r["file_name"].decode())
        np.testing.assert_array_equal(r["image"], want)


# ---------------------------------------------------------------------------------------------
# bad input


def test_not_prepared_names_the_command(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    config = _config(images, tmp_path)
    want = f"python -m ssljax.data.prepare --dataset=image_folder --data_dir={tmp_path}"
    for call in (
        lambda: get_dataset_info(config),
        lambda: make_loader(
            config, split="train", global_batch=2, seed=0, shuffle=True, drop_remainder=True
        ),
    ):
        with pytest.raises(ValueError) as e:
            call()
        assert want + f" --root={images}" in str(e.value)


def test_missing_root_is_reported_as_missing_first(prepared, tmp_path):
    # Not prepared: the folder's absence, not a prepare command that would fail on it.
    with pytest.raises(ValueError) as e:
        get_dataset_info(_config("/some/images", tmp_path))
    assert str(e.value).startswith("data.root='/some/images' does not exist")
    assert "ssljax.data.prepare" not in str(e.value)
    # Prepared from another folder: say so, and name the root that data_dir does hold.
    root, data_dir, _ = prepared
    with pytest.raises(ValueError) as e:
        get_dataset_info(_config("/some/images", data_dir))
    assert str(e.value).startswith("data.root='/some/images' does not exist")
    assert f"--config.data.root={root.resolve()} reads it" in str(e.value)
    # The prepare command too: the missing root before the taken data_dir.
    with pytest.raises(ValueError, match="root='/some/images' does not exist"):
        prepare("image_folder", data_dir, root="/some/images")


def test_other_root_than_prepared_suggests_a_command_that_works(prepared, tmp_path):
    root, data_dir, _ = prepared
    other = tmp_path / "other"
    shutil.copytree(root, other)
    with pytest.raises(ValueError, match="holds the image folder") as e:
        get_dataset_info(_config(other, data_dir))
    new_dir = f"{data_dir}_other"
    command = (
        f"python -m ssljax.data.prepare --dataset=image_folder --data_dir={new_dir} --root={other}"
    )
    assert command in str(e.value) and f"--config.data.data_dir={new_dir}" in str(e.value)
    with pytest.raises(ValueError, match="already holds") as e:
        prepare("image_folder", data_dir, root=other)
    assert command in str(e.value)
    # The suggested command works, and training then finds the folder.
    prepare("image_folder", new_dir, root=other)
    assert get_dataset_info(_config(other, new_dir)).split_sizes["train"] == 3 * N_TRAIN


def _corrupt_folder(cifar10_dir, base):
    root = _copy_subset(cifar10_dir, base)
    (root / "train" / "cat" / "garbage.jpg").write_bytes(b"this is not an image" * 10)
    good = (root / "train" / "ship" / "0000.jpg").read_bytes()
    (root / "test" / "airplane" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_corrupt_files_stop_or_are_skipped(cifar10_dir, tmp_path):
    root = _corrupt_folder(cifar10_dir, tmp_path / "root")
    with pytest.raises(ValueError) as e:
        prepare("image_folder", tmp_path / "data", root=root)
    msg = str(e.value)
    assert "2 corrupt" in msg and "--skip_corrupt" in msg
    assert "train/cat/garbage.jpg" in msg and "test/airplane/truncated.jpg" in msg
    assert not (tmp_path / "data" / "image_folder").exists()  # nothing written

    report = prepare("image_folder", tmp_path / "data", root=root, skip_corrupt=True)
    assert sorted(report["skipped"]) == ["test/airplane/truncated.jpg", "train/cat/garbage.jpg"]
    info = get_dataset_info(_config(root, tmp_path / "data"))
    assert info.split_sizes == {"train": 3 * N_TRAIN, "test": 3 * N_TEST}


def test_cli_reports_corrupt_files(cifar10_dir, tmp_path):
    root = _corrupt_folder(cifar10_dir, tmp_path / "root")
    cmd = [sys.executable, "-m", "ssljax.data.prepare", "--dataset=image_folder"]
    cmd += [f"--root={root}", f"--data_dir={tmp_path / 'data'}", "--num_workers=0"]
    cwd = pathlib.Path(__file__).resolve().parent.parent
    failed = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert failed.returncode == 2
    assert "train/cat/garbage.jpg" in failed.stderr and "Traceback" not in failed.stderr
    done = subprocess.run(cmd + ["--skip_corrupt"], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "Skipped 2 corrupt" in done.stdout
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["split_sizes"] == {"train": 3 * N_TRAIN, "test": 3 * N_TEST}


def test_empty_class_folder_and_empty_split(cifar10_dir, tmp_path):
    root = _copy_subset(cifar10_dir, tmp_path / "a")
    (root / "train" / "dog").mkdir()
    (root / "test" / "dog").mkdir()
    with pytest.raises(ValueError, match="dog.*holds no"):
        prepare("image_folder", tmp_path / "data", root=root)

    root = _copy_subset(cifar10_dir, tmp_path / "b")
    (root / "validation").mkdir()
    with pytest.raises(ValueError, match="validation.*no class folders"):
        prepare("image_folder", tmp_path / "data", root=root)

    root = _copy_subset(cifar10_dir, tmp_path / "c")
    shutil.rmtree(root / "test" / "cat")
    with pytest.raises(ValueError, match="same class folders"):
        prepare("image_folder", tmp_path / "data", root=root)

    with pytest.raises(ValueError, match="no split folders"):
        (tmp_path / "empty").mkdir()
        prepare("image_folder", tmp_path / "data", root=tmp_path / "empty")


def test_wrong_size_or_undecodable_record_is_named():
    # A dataset whose metadata says one shape but holds another (e.g. hand-edited folder) fails
    # with a message naming the remedy, not deep inside NumPy.
    reader = loader.BatchReader(
        _ListSource([_png(np.zeros((8, 8, 3), np.uint8)), _png(np.zeros((9, 8, 3), np.uint8))]),
        global_batch=2,
        process_index=0,
        process_count=1,
        seed=0,
        shuffle=False,
        drop_remainder=True,
        mode="array",
        image_shape=(8, 8, 3),
        image_size=8,
        num_views=1,
        crop_scale=(0.08, 1.0),
        crop_ratio=(0.75, 4 / 3),
    )
    with pytest.raises(ValueError, match="crop_in_loader=True"):
        reader(0)
    reader.source = _ListSource([_png(np.zeros((8, 8, 3), np.uint8)), b"damaged record"])
    with pytest.raises(ValueError, match="Example 1 of .* cannot be decoded"):
        reader(0)


class _ListSource:
    def __init__(self, payloads):
        self.payloads = payloads

    def __len__(self):
        return len(self.payloads)

    def read(self, indices):
        return [(self.payloads[i], 0) for i in indices]


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# worker processes


def test_workers_give_the_same_batches_and_resume_across_worker_counts(prepared):
    root, data_dir, _ = prepared
    config = _config(root, data_dir, crop_in_loader=True, image_size=16)
    kwargs = dict(split="train", global_batch=8, seed=1, shuffle=True, drop_remainder=True)
    inline = make_loader(config, **kwargs)
    want = [next(inline) for _ in range(10)]  # crosses the epoch boundary (7 steps)
    with make_loader({**config, "num_workers": 2}, **kwargs) as workers:
        for i in range(4):
            b = next(workers)
            for key in b:
                np.testing.assert_array_equal(b[key], want[i][key])
        state = workers.get_state()
    resumed = make_loader(config, **kwargs)
    resumed.set_state(state)
    for i in range(4, 10):
        b = next(resumed)
        for key in b:
            np.testing.assert_array_equal(b[key], want[i][key])
