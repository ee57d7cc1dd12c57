"""Prepares what ``benchmarks/gpu_session.sh`` needs on a GPU host that has no package index.

    python benchmarks/gpu_carry.py            # writes .whl/ and .gpudata/, prints the carry list
    python benchmarks/gpu_carry.py --check    # only lists what is missing there, downloads nothing

The lent GPU hosts run Python 3.12 with jax, flax, optax, orbax, torch and many other packages
(``benchmarks/gpu_host_packages.txt``), but not grain, tensorflow-datasets or ml_collections,
and they can reach no package index and no ``../shared``. This script walks the dependency
closure of ssljax's runtime requirements in the current environment (markers evaluated for
CPython 3.12 on Linux x86-64), removes what the host already holds, and downloads the rest as
CPython 3.12 manylinux wheels -- each at the version installed here, the one the test suite
ran with -- into ``.whl/``; it copies CIFAR-10's JPEG archive into ``.gpudata/``. Both folders
are ignored by git, so a device call must name them in ``carry`` (64 MiB in all per call; the
total is checked here). On the host, ``gpu_session.sh`` installs ``.whl/*.whl`` with
``pip --no-index --no-deps --target /tmp/site``.

Why versions from here: the host's own packages (jax 0.11, flax 0.12, numpy 2.x, protobuf)
are used as they are; only packages it lacks travel, pinned to what ran together here.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import pathlib
import shutil
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST_PACKAGES = REPO / "benchmarks" / "gpu_host_packages.txt"
# The host's interpreter (device KINDS.md: Python 3.12.3 at /opt/torch/.venv/bin/python3).
HOST_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "extra": "",
}
# pip matches manylinux_2_N exactly, so every N a wheel of these packages may carry is named.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# What pip is told about the host, for downloading wheels and for checking they install.
HOST_WHEEL_FLAGS = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    *[flag for p in PLATFORMS for flag in ("--platform", p)],
]  # fmt: skip
CARRY_LIMIT_BYTES = 64 * 2**20


def project_requirements() -> list[str]:
    """The names of ssljax's runtime requirements, read from pyproject.toml."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return [Requirement(d).name for d in deps]


def closure(roots: list[str]) -> dict[str, str]:
    """``{name: installed version}`` of ``roots`` and everything they require on the host.

    Raises:
      SystemExit: a requirement is not installed here (this environment cannot say its version).
    """
    found: dict[str, str] = {}
    stack = list(roots)
    while stack:
        name = canonicalize_name(stack.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(
                f"{name} is required but not installed in this environment ({sys.executable}); "
                "run this script from the project's venv (pip install '.[test]')."
            )
        found[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(HOST_ENV):
                stack.append(req.name)
    return found


def host_packages() -> set[str]:
    """The package names the GPU image holds (comments and blank lines skipped)."""
    names = set()
    for line in HOST_PACKAGES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(line))
    return names


def download(pins: dict[str, str], dest: pathlib.Path) -> None:
    """Fetches ``name==version`` for each pin as a wheel the host can install offline.

    A CPython 3.12 manylinux (or pure-Python) wheel from the index where one exists; otherwise
    (a package published only as source, e.g. promise 2.3) the wheel is built here, and kept
    only if it is pure Python (``py3-none-any``), which installs on any host.

    Raises:
      SystemExit: a package has neither a matching wheel nor a pure-Python build.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    for name, version in sorted(pins.items()):
        pin = f"{name}=={version}"
        cmd = [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", *HOST_WHEEL_FLAGS,
            "-d", str(dest), pin,
        ]  # fmt: skip
        if subprocess.run(cmd, capture_output=True, text=True).returncode == 0:
            continue
        before = set(dest.glob("*.whl"))
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), pin]
        built = subprocess.run(cmd, capture_output=True, text=True)
        new = sorted(set(dest.glob("*.whl")) - before)
        if built.returncode != 0 or len(new) != 1 or not new[0].name.endswith("-py3-none-any.whl"):
            for path in new:
                path.unlink()
            sys.exit(
                f"{pin}: no CPython 3.12 manylinux wheel on the index and no pure-Python build "
                f"here ({built.stderr.strip()[-500:]}); the host cannot install it offline."
            )
        print(f"  {pin}: no wheel on the index; built {new[0].name} here (pure Python)")


def check_installable(dest: pathlib.Path) -> None:
    """Resolves the downloaded wheels for Python 3.12 offline, as the host's install will."""
    with_target = REPO / "build" / "gpu_carry_check"
    shutil.rmtree(with_target, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *HOST_WHEEL_FLAGS,
        "--target", str(with_target), *map(str, sorted(dest.glob("*.whl"))),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    shutil.rmtree(with_target, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list only; download nothing")
    parser.add_argument(
        "--data",
        default=os.environ.get("SSLJAX_DATA", str(REPO.parent / "shared" / "data")),
        help="folder holding cifar10-jpg.tar.gz (default: $SSLJAX_DATA or ../shared/data)",
    )
    args = parser.parse_args()

    needed = closure(project_requirements())
    present = host_packages()
    missing = {n: v for n, v in needed.items() if n not in present}
    print(f"{len(needed)} packages in ssljax's runtime closure; {len(missing)} not on the host:")
    for name, version in sorted(missing.items()):
        print(f"  {name}=={version}")
    if args.check:
        return

    wheels = REPO / ".whl"
    download(missing, wheels)
    check_installable(wheels)
    data = REPO / ".gpudata"
    data.mkdir(exist_ok=True)
    archive = pathlib.Path(args.data) / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        sys.exit(f"{archive} not found: pass --data=FOLDER holding cifar10-jpg.tar.gz")
    shutil.copy2(archive, data / archive.name)

    sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (wheels, data)}
    total = sum(sizes.values())
    for path, size in sizes.items():
        print(f"{path.name}: {size / 2**20:.1f} MiB")
    print(
        f"total {total / 2**20:.1f} MiB of the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB a call carries"
    )
    if total > CARRY_LIMIT_BYTES:
        sys.exit("too large to carry in one device call")
    print('carry: [".whl", ".gpudata"]')


if __name__ == "__main__":
    main()
