"""Shared pytest set-up: 8 simulated CPU devices and the location of the real test data.

The XLA flag must be set before JAX initialises its backends, hence at import time here.
Tests that want one device place their arrays on ``jax.devices()[0]`` (the default).
"""

import os
import pathlib
import shutil
import sys
import tarfile
import tempfile

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
# LLVM at -O1 instead of XLA's default: compiling a test's small train step takes about as long
# as with optimisations off (jax_disable_most_optimizations, i.e. -O0) and 20% less than at the
# default, while the compiled step runs as fast as at the default -- at -O0 it runs ten times
# slower (ResNet-tiny BYOL step, 16 px, batch 32, 2-core CPU, 2026-12-06: compile 14.4 s /
# 14.0 s / 17.6 s, 30 steps 2.7 s / 25.0 s / 2.4 s at -O1 / -O0 / default). Subprocesses inherit
# it through the environment (keep it when replacing XLA_FLAGS: benchmarks/_timing.child_env).
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=1"

# One persistent JAX compilation cache for the whole session, the training subprocesses
# included (they inherit the environment): many tests compile the same small train steps (main
# on digits, resume, preemption, the README's commands), and on 2 cores compiling is a large
# share of their time. A fresh folder per session, removed at its end, so nothing stale is read;
# a JAX_COMPILATION_CACHE_DIR set by the caller is used (and kept) instead.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ssljax-test-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session, exitstatus):
    """Removes the session's own compilation cache."""
    del session, exitstatus
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


DATA_ENV = "SSLJAX_TEST_DATA"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def _missing(what: str) -> None:
    """Skips a test whose data is absent, or fails it under CI=true."""
    msg = (
        f"{what} not found. Point {DATA_ENV} at a folder holding cifar10-jpg.tar.gz and "
        f"mnist-t10k/ (default: {DEFAULT_DATA_DIR}, i.e. ../shared/data beside the repo)."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " Under CI=true missing test data is a failure.")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The folder of real test data (``$SSLJAX_TEST_DATA``, default ``../shared/data``)."""
    path = pathlib.Path(os.environ.get(DATA_ENV, str(DEFAULT_DATA_DIR)))
    if not path.is_dir():
        _missing(f"Test data folder {path}")
    return path


@pytest.fixture(scope="session")
def cifar10_dir(shared_data_dir: pathlib.Path) -> pathlib.Path:
    """CIFAR-10 JPEG folders: ``<dir>/{train,test}/<class>/*.jpg``, unpacked once and cached.

    Unpacking 60,000 files costs seconds, and pytest's own clean-up of old temporary folders
    holding such copies costs more; so the archive is unpacked once into a cache folder
    (``$SSLJAX_CACHE``, default ``~/.cache/ssljax``) keyed by the archive's size and mtime,
    with a marker written only after a complete extraction.
    """
    archive = shared_data_dir / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        _missing(f"CIFAR-10 archive {archive}")
    stat = archive.stat()
    cache = pathlib.Path(os.environ.get("SSLJAX_CACHE", "~/.cache/ssljax")).expanduser()
    out = cache / f"cifar10-jpg-{stat.st_size}-{int(stat.st_mtime)}"
    marker = out / ".complete"
    if not marker.exists():
        tmp = pathlib.Path(tempfile.mkdtemp(dir=cache.mkdir(parents=True, exist_ok=True) or cache))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        marker.touch()
    # The archive may hold a top-level folder; return the one that contains train/ and test/.
    for candidate in [out, *out.iterdir()]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise RuntimeError(
        f"{archive} does not unpack to train/ and test/ folders: {list(out.iterdir())}"
    )


@pytest.fixture(scope="session")
def mnist_t10k_dir(shared_data_dir: pathlib.Path) -> pathlib.Path:
    """The folder with the original MNIST test-set IDX files."""
    path = shared_data_dir / "mnist-t10k"
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        _missing(f"MNIST test set in {path}")
    return path


@pytest.fixture
def checkout(tmp_path):
    """A checkout-like folder, its ../shared/data archive of tiny images, and a HOME.

    Returns ``(repo, home, env)``: ``repo/configs`` links to the real configs, ``repo/../shared/
    data/cifar10-jpg.tar.gz`` holds 16 train and 8 test 32x32 JPEGs in two classes, and ``env``
    runs this interpreter with ``HOME=home`` so that ``~`` resolves there.
    """
    work = tmp_path / "clone"
    (work / "repo").mkdir(parents=True)
    (work / "repo" / "configs").symlink_to(REPO_ROOT / "configs")
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for name in ("cat", "dog"):
            (images / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(images / split / name / f"{i:04d}.jpg")
    (work / "shared" / "data").mkdir(parents=True)
    with tarfile.open(work / "shared" / "data" / "cifar10-jpg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(images / split, arcname=split)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(REPO_ROOT),
        "JAX_PLATFORMS": "cpu",
        "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return work / "repo", home, env
