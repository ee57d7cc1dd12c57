"""The commands' help and user errors (issue 20, items 3 and 4).

``--help`` exits 0 and teaches (methods, presets per config file, override syntax, where the
fields are); a user's mistake is one ``error:`` line and exit status 2, not a traceback.
Each command is run as a user runs it, in a subprocess (about 2-3 s each: the imports).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from ssljax import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_train_help_lists_methods_presets_overrides_and_fields():
    text = cli.train_help()
    for method in ("byol", "simsiam", "vicreg", "barlow_twins", "dino"):
        assert f"configs/{method}.py" in text
    assert "configs/byol.py          digits, cifar10, cifar10_cpu, random_target, imagenet" in text
    assert text.count("--config.") >= 3, "two override examples and the syntax"
    assert "ssljax/config_schema.py" in text and "--print_config" in text


def test_ssljax_train_entry_point_help_exits_0(monkeypatch, capsys):
    from ssljax import main

    monkeypatch.setattr(sys, "argv", ["ssljax-train", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main.run()
    assert exit_info.value.code == 0
    assert "configs/vicreg.py" in capsys.readouterr().out


@pytest.mark.parametrize(
    "module, expected",
    [
        ("ssljax.main", "--config.global_batch=512"),
        ("ssljax.evaluate", "--protocol=knn"),
        ("ssljax.export", "--format=torch"),
        ("ssljax.data.prepare", "--dataset=image_folder --root=~/data/cifar10"),
    ],
)
def test_help_exits_0_with_examples(module, expected):
    proc = _run(module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert "Traceback" not in proc.stderr


def test_mistyped_config_path_lists_the_config_files():
    proc = _run("ssljax.main", "--config=configs/byl.py", "--workdir=/tmp/unused")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no file 'configs/byl.py'" in lines[0]
    assert "configs/byol.py, configs/dino.py, configs/simsiam.py" in lines[0]
    assert "config_config" not in proc.stderr


def test_unknown_preset_and_unknown_field_are_one_line(tmp_path):
    proc = _run("ssljax.main", "--config=configs/byol.py:cifar", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: flag --config=configs/byol.py:cifar: Unknown preset 'cifar'; valid: "
        "['digits', 'cifar10', 'cifar10_cpu', 'random_target', 'imagenet']."
    ]
    proc = _run("ssljax.main", "--config=configs/byol.py", "--config.optimiser.lr=1")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no field 'optimiser'" in proc.stderr
    assert 'Did you mean "optimizer"' in proc.stderr
    # A misspelt leaf (the KeyError arrives inside an AttributeError): the same one clean line.
    proc = _run("ssljax.main", "--config=configs/byol.py", "--config.tau_bse=0.9")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --config.tau_bse: the config configs/byol.py has no field 'tau_bse'. "
        'Did you mean "tau_base" instead of "tau_bse"? --print_config lists every field '
        "(definitions: ssljax/config_schema.py)."
    ], proc.stderr


def test_validation_error_is_one_line_exit_2(tmp_path):
    proc = _run(
        "ssljax.main",
        "--config=configs/byol.py",
        f"--workdir={tmp_path / 'run'}",
        "--config.global_batch=127",
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert re.fullmatch(
        r"error: config.global_batch: 127 is not divisible by the (\d+) devices; "
        r"use a multiple of \1.",
        errors[0],
    )
    assert "Traceback" not in proc.stderr


def test_print_config_shows_expanded_paths(tmp_path):
    proc = _run(
        "ssljax.main",
        "--config=configs/byol.py:cifar10",
        "--print_config",
        "--config.data.root=~/data/cifar10",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"root: {os.path.expanduser('~/data/cifar10')}" in proc.stdout
    assert "global_batch: 256" in proc.stdout


def test_evaluate_and_export_user_errors_exit_2(tmp_path):
    proc = _run("ssljax.evaluate", f"--workdir={tmp_path / 'none'}", "--protocol=knn")
    assert (proc.returncode, proc.stderr.strip()) == (
        2,
        f"error: --workdir={tmp_path / 'none'} does not exist.",
    )
    proc = _run("ssljax.export", f"--workdir={tmp_path}", "--format=onnx")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --format='onnx' does not exist; valid formats: ['torch', 'flax']."
    )


def test_check_config_spec_accepts_existing_files(monkeypatch):
    monkeypatch.chdir(REPO)
    cli.check_config_spec("configs/byol.py:cifar10")  # no exit
    cli.check_config_spec(None)
    with pytest.raises(SystemExit) as exit_info:
        cli.check_config_spec("configs/nope.py")
    assert exit_info.value.code == 2
