"""Tests of TFDS catalogue datasets: the error when not prepared, and reading without TensorFlow.

No network and no TensorFlow here, so a real catalogue dataset cannot be prepared. Instead a tiny
``cifar10`` is written with TFDS's own writer (the real builder's features and version, fake
examples handed over as PNG bytes, which needs no TensorFlow), and read back by name.
"""

import importlib.util
import io
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ssljax.data import get_dataset_info, make_loader, prepare

N_TRAIN, N_TEST = 24, 10
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _fake_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    images = {"train": _fake_images(N_TRAIN, 0), "test": _fake_images(N_TEST, 1)}

    class FakeCifar10(tfds.builder_cls("cifar10"), skip_registration=True):
        name = "cifar10"
        code_path = None  # no checksums file to look up

        def _split_generators(self, dl_manager):
            # The real builder reads the class names from the downloaded archive.
            self.info.features["label"].names = CIFAR10_CLASSES
            return {split: self._generate_examples(split) for split in images}

        def _generate_examples(self, split):
            for i, image in enumerate(images[split]):
                key = f"{split}_{i}"
                yield key, {"id": key, "image": _png(image), "label": i % 10}

    builder = FakeCifar10(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_dir=str(tmp_path_factory.mktemp("dl")))
    return data_dir, images


def test_reads_catalogue_dataset_without_tensorflow(fake_cifar10):
    data_dir, images = fake_cifar10
    config = {"name": "cifar10", "data_dir": str(data_dir)}
    info = get_dataset_info(config)
    assert info.num_classes == 10 and info.class_names == tuple(CIFAR10_CLASSES)
    assert info.split_sizes == {"train": N_TRAIN, "test": N_TEST}
    assert info.image_shape == (32, 32, 3)
    assert info.mean == (0.4914, 0.4822, 0.4465)  # the published CIFAR-10 statistics
    it = make_loader(
        config,
        split="train",
        global_batch=8,
        seed=0,
        shuffle=True,
        drop_remainder=True,
        num_epochs=1,
    )
    seen = []
    for batch in it:
        # The order of records in the files is TFDS's; map indices back through the ids.
        records = tfds.data_source("cifar10", split="train", data_dir=str(data_dir))
        for i, image, label in zip(batch["index"], batch["image"], batch["label"], strict=True):
            k = int(records[int(i)]["id"].decode().split("_")[1])
            np.testing.assert_array_equal(image, images["train"][k])
            assert label == k % 10
            seen.append(k)
    assert sorted(seen) == list(range(N_TRAIN))
    # A slice of a split, in TFDS's syntax.
    it = make_loader(
        config, split="test[:5]", global_batch=5, seed=0, shuffle=False, drop_remainder=True
    )
    assert next(it)["image"].shape == (5, 32, 32, 3)
    assert "tensorflow" not in sys.modules


def test_not_prepared_names_command_and_extra(tmp_path):
    config = {"name": "cifar10", "data_dir": str(tmp_path)}
    with pytest.raises(ValueError) as e:
        get_dataset_info(config)
    msg = str(e.value)
    assert f"python -m ssljax.data.prepare --dataset=cifar10 --data_dir={tmp_path}" in msg
    assert "pip install 'ssljax[prepare]'" in msg
    with pytest.raises(ValueError, match="--dataset=cifar10"):
        make_loader(
            config, split="train", global_batch=8, seed=0, shuffle=True, drop_remainder=True
        )
    with pytest.raises(ValueError, match="data_dir is not set"):
        get_dataset_info({"name": "cifar10"})


def test_unknown_split_and_features(fake_cifar10):
    data_dir, _ = fake_cifar10
    config = {"name": "cifar10", "data_dir": str(data_dir)}
    with pytest.raises(ValueError, match="'train', 'test'|'test', 'train'"):
        make_loader(
            config, split="validation", global_batch=8, seed=0, shuffle=True, drop_remainder=True
        )
    with pytest.raises(ValueError, match="label_key"):
        get_dataset_info({**config, "label_key": "id"})


def test_prepare_options_for_other_datasets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="image_folder only"):
        prepare("cifar10", tmp_path, root=tmp_path)
    with pytest.raises(ValueError, match="root is required"):
        prepare("image_folder", tmp_path)
    assert prepare("digits", tmp_path)["dataset_dir"] is None


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="tests the missing-TensorFlow path"
)
def test_prepare_says_when_the_builder_needs_tensorflow(tmp_path, monkeypatch):
    # The real CIFAR-10 builder hands NumPy images to TFDS, which encodes them with TensorFlow.
    # Same here, minus the download: a builder yielding arrays.
    class ArrayCifar10(tfds.builder_cls("cifar10"), skip_registration=True):
        name = "cifar10"
        code_path = None

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield "0", {"id": "0", "image": np.zeros((32, 32, 3), np.uint8), "label": 0}

    monkeypatch.setattr(tfds, "builder", lambda name, **kwargs: ArrayCifar10(**kwargs))
    with pytest.raises(ValueError) as e:
        prepare("cifar10", tmp_path)
    msg = str(e.value)
    assert "pip install 'ssljax[prepare]'" in msg
    assert f"python -m ssljax.data.prepare --dataset=cifar10 --data_dir={tmp_path}" in msg
