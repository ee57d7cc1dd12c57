"""~ and $VARS in every path (issue 20, item 1), and the README's Data commands as written.

The README's commands are run by bash exactly as they stand in README.md, in a folder laid out
like a checkout (``configs/``, and ``../shared/data/cifar10-jpg.tar.gz``: here a tiny archive of
the same layout), with HOME pointed at a temporary folder so that ``~`` resolves there.
"""

import pathlib
import re
import subprocess

import ml_collections
import pytest

from ssljax import paths
from ssljax.data import info

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_expand_handles_tilde_and_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SSLJAX_TEST_ROOT", "/data/x")
    assert paths.expand("~/data") == f"{tmp_path}/data"
    assert paths.expand("$SSLJAX_TEST_ROOT/cifar") == "/data/x/cifar"
    assert paths.expand("${SSLJAX_TEST_ROOT}") == "/data/x"
    assert paths.expand("relative/dir") == "relative/dir"
    assert paths.expand("a~b") == "a~b", "a ~ inside a name is no home folder"
    assert paths.expand(None) is None and paths.expand("") == ""
    assert paths.expand(pathlib.Path("~/p")) == f"{tmp_path}/p"


def test_config_path_fields_expand_in_place_even_locked(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    c = ml_collections.ConfigDict(
        {"data": {"root": "~/r", "data_dir": "$HOME/d", "name": "x"}, "init_from": "~/w"}
    )
    c.lock()
    assert paths.expand_config_paths(c) is c
    assert (c.data.root, c.data.data_dir, c.init_from) == (
        f"{tmp_path}/r",
        f"{tmp_path}/d",
        f"{tmp_path}/w",
    )
    assert c.data.name == "x"
    # The data layer reads config paths through the same rule (notebooks pass dicts).
    assert info.config_value({"data_dir": "$HOME/d2"}, "data_dir") == f"{tmp_path}/d2"


def _readme_data_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Data\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [c.split("   #")[0].strip() for c in block.replace("\\\n", " ").splitlines()]


def _bash(command: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_readme_data_commands_prepare_as_written(checkout):
    repo, home, env = checkout
    unpack, prepare, train_cmd = _readme_data_commands()
    assert prepare == (
        "python -m ssljax.data.prepare --dataset=image_folder --root=~/data/cifar10 "
        "--data_dir=~/ssljax_data"
    )
    assert "--config.data.root=~/data/cifar10 --config.data.data_dir=~/ssljax_data" in train_cmd
    proc = _bash(f"{unpack} && {prepare}", repo, env)
    assert proc.returncode == 0, proc.stderr
    assert (home / "ssljax_data" / "image_folder" / "1.0.0" / "dataset_info.json").is_file()
    assert not (repo / "~").exists(), "a folder named '~' in the checkout"
    assert '"train": 16' in proc.stdout and '"test": 8' in proc.stdout
    # Quiet: no runpy warning, no TFDS banner, no progress-bar escape codes.
    for noise in ("RuntimeWarning", "Downloading and preparing", "\x1b["):
        assert noise not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_readme_train_command_runs_on_the_prepared_folder(checkout, tmp_path):
    repo, home, env = checkout
    unpack, prepare, train_cmd = _readme_data_commands()
    assert _bash(f"{unpack} && {prepare}", repo, env).returncode == 0
    # As written, but a workdir of this test's and a tiny network for two steps.
    workdir = tmp_path / "byol_cifar10"
    command = train_cmd.replace("/tmp/byol_cifar10", str(workdir)) + (
        " --config.model.backbone=resnet_tiny --config.global_batch=8 --config.num_steps=2"
        " --config.warmup_epochs=0 --config.log_every_steps=1 --config.knn.k=3"
        " '--config.heads.projector_hidden=(16,)' '--config.heads.predictor_hidden=(16,)'"
    )
    proc = _bash(command, repo, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2/2" in proc.stderr and "Finished at step 2" in proc.stderr
    config = (workdir / "config.json").read_text()
    assert f'"root": "{home}/data/cifar10"' in config
    assert f'"data_dir": "{home}/ssljax_data"' in config
