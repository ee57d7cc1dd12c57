"""Every command in README.md, pasted into bash, works (issue 20).

The commands are read from README.md's ``bash`` blocks, not copied here: a test runs each one as
it stands, changing only what a test must change, and says so --

* paths a user would pick (``/tmp/ssljax_digits``, ``DIR``, ``OUT``) become this test's own;
* training commands get a tiny network and two steps appended (the full jobs are the README's
  own claims, measured by the benchmarks), benchmarks their smallest sizes and a results file
  of the test's (so that the committed results are not overwritten);
* CIFAR-10 is a tiny archive of the same layout, ``~`` a temporary HOME;
* commands for machines this one is not (``gcloud``, ``sbatch``/``srun``) run against stand-ins
  that record what they were asked to do, and the test checks the recorded command.

``test_every_readme_command_is_run_by_a_test`` fails when the README gains a command that no
rule here covers, or a rule no longer matches any command: a new command cannot go untested.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# Appended to training commands: a network and run small enough for seconds on one core.
TINY_RUN = (
    " --config.model.backbone=resnet_tiny --config.global_batch=8 --config.num_steps=2"
    " --config.warmup_epochs=0 --config.log_every_steps=1 --config.knn.k=3"
    " '--config.heads.projector_hidden=(16,)' '--config.heads.predictor_hidden=(16,)'"
)

# rule -> the README commands it covers (regex on the command without its trailing comment),
# and where the test is. Every README command must match exactly one rule.
RULES: dict[str, str] = {
    # tests/test_readme_commands.py::test_readme_first_command_in_a_fresh_venv (slow)
    "fresh_venv_job": r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install \. && ",
    # .ci/run runs it (test_ci_runs_the_readme_test_command)
    "fresh_venv_tests": r"^python3 -m venv \.venv && .*pip install '\.\[test\]' && "
    r"python -m pytest",
    # tests/test_paths.py: prepare as written (fast), the training command (slow)
    "data": r"^(mkdir -p ~/data/cifar10 && tar|python -m ssljax\.data\.prepare |"
    r"python -m ssljax\.main --config=configs/byol\.py:cifar10 --workdir=/tmp/byol_cifar10 )",
    "evaluate_export": r"^python -m ssljax\.(evaluate|export) --workdir=/tmp/ssljax_digits ",
    "launch_local": r"^(NUM_PROCESSES=2 )?launch/local\.sh ",
    "launch_tpu": r"^(DETACH=1 )?launch/tpu_pod\.sh ",
    "launch_slurm": r"^sbatch ",
    "comm_budget": r"^python benchmarks/comm_budget\.py ",
    "cifar_table": r"^python benchmarks/cifar_table\.py ",
    "benchmarks": r"^(python benchmarks/(step|torch_yardstick|step_breakdown|cpu_conv_backends"
    r"|augment|input|resume)\.py|bash benchmarks/gpu(_session)?\.sh)( |$)",
}


def readme_commands() -> list[str]:
    """Every command of README.md's bash blocks, continuation lines joined, comments kept."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(re.sub(r" {2,}(?!#)", " ", line.strip()))
    return commands


def without_comment(command: str) -> str:
    return command.split(" #")[0].strip()


def commands_of(rule: str) -> list[str]:
    found = [c for c in readme_commands() if re.search(RULES[rule], without_comment(c))]
    assert found, f"README.md has no command for rule {rule!r} any more: update RULES"
    return found


def replace_checked(command: str, old: str, new: str) -> str:
    """``command`` with ``old`` replaced; fails if the README no longer has ``old``."""
    assert old in command, f"{old!r} is no longer in the README command {command!r}"
    return command.replace(old, new)


def bash(command: str, cwd, env, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc


def assert_ok(proc: subprocess.CompletedProcess, command: str) -> None:
    assert proc.returncode == 0, (
        f"README command failed (exit {proc.returncode}): {command}\n"
        f"--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The environment of a user's shell: this interpreter first on PATH, HOME a temp folder."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
        # launch/local.sh takes the repo's .venv when PYTHON is unset; the test's interpreter
        # is the one with ssljax installed.
        "PYTHON": sys.executable,
    }


# ------------------------------------------------------------------------------------------------
# Coverage, and the commands that need no training.
# ------------------------------------------------------------------------------------------------
def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    assert len(commands) >= 20, "README.md's bash blocks were not found"
    for command in commands:
        rules = [r for r, pattern in RULES.items() if re.search(pattern, without_comment(command))]
        assert len(rules) == 1, f"README command {command!r} matches rules {rules}: want one"
    for rule in RULES:
        commands_of(rule)


def test_the_coverage_rule_notices_a_new_command():
    new = "python -m ssljax.something_new --flag"
    assert not any(re.search(p, new) for p in RULES.values())


def test_ci_runs_the_readme_test_command():
    (command,) = commands_of("fresh_venv_tests")
    ci = (REPO / ".ci" / "run").read_text()
    install = re.search(r"pip install '\.\[test\]'", command).group(0)
    run_tests = command.split(" && ")[-1]
    assert install in ci and run_tests in ci, f".ci/run does not run {command!r} as written"


def _stand_in(bin_dir: pathlib.Path, name: str, log: pathlib.Path, body: str = "") -> None:
    """An executable ``name`` that appends its arguments, one line per call, to ``log``."""
    script = bin_dir / name
    script.write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\n" "{name} $*" >> {shlex.quote(str(log))}\n{body}\n'
    )
    script.chmod(0o755)


def test_readme_tpu_pod_commands_issue_the_right_gcloud_calls(tmp_path, env):
    commands = commands_of("launch_tpu")
    first = without_comment(commands[0])
    bin_dir, log = tmp_path / "bin", tmp_path / "gcloud.log"
    bin_dir.mkdir()
    _stand_in(bin_dir, "gcloud", log)
    env = {**env, "PATH": f"{bin_dir}:{env['PATH']}"}
    for command in commands:
        # "..." stands for the arguments of the command above it.
        args_above = first.split("launch/tpu_pod.sh", 1)[1]
        command = command.replace("launch/tpu_pod.sh ...", "launch/tpu_pod.sh" + args_above)
        log.unlink(missing_ok=True)
        assert_ok(bash(command, REPO, env, timeout=120), command)
        calls = log.read_text().splitlines()
        assert calls[0].startswith("gcloud compute tpus tpu-vm scp "), calls
        assert "my-v4-32:" in calls[0] and "--zone=us-central2-b" in calls[0]
        # The remote command arrives shell-quoted (printf %q); read it unquoted.
        train = calls[-1].replace("\\", "")
        assert "--worker=all" in train and "python -m ssljax.main" in train, train
        # gs:// paths become the gcsfuse mount every worker sees.
        assert "--workdir=/gcs/my-bucket/byol_r50" in train, train
        assert "--config.data.data_dir=/gcs/my-bucket/tensorflow_datasets" in train, train
        assert "gcsfuse" in " ".join(calls) and "my-bucket" in " ".join(calls)
        assert ("nohup" in train) == command.startswith("DETACH=1"), train


def test_readme_slurm_commands_start_one_training_per_task(tmp_path, env):
    commands = commands_of("launch_slurm")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    # sbatch stand-in: runs the batch script as Slurm would, on "4 nodes"; srun records.
    sbatch_body = (
        'opts=(); while [[ $1 == --* ]]; do opts+=("$1"); shift; done\n'
        "SLURM_JOB_NUM_NODES=4 SLURM_JOB_NODELIST='node[1-4]' SLURM_NTASKS=4 "
        f'SLURM_SUBMIT_DIR={shlex.quote(str(REPO))} bash "$@"'
    )
    _stand_in(bin_dir, "sbatch", log, sbatch_body)
    _stand_in(bin_dir, "srun", log)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    runs = tmp_path / "shared_runs"
    env = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "VENV": str(venv)}
    first = without_comment(commands[0])
    for command in commands:
        args_above = first.split("/shared/runs/byol_r50", 1)[1]
        # "..." stands for the arguments of the command above it.
        command = command.replace("/shared/runs/byol_r50 ...", "/shared/runs/byol_r50" + args_above)
        command = command.replace("/shared/runs/", f"{runs}/")
        log.unlink(missing_ok=True)
        assert_ok(bash(command, REPO, env, timeout=120), command)
        srun = log.read_text().splitlines()[-1]
        assert srun.startswith(f"srun --kill-on-bad-exit=1 {venv}/bin/python -m ssljax.main"), srun
        assert "--config=configs/byol.py:imagenet" in srun and f"--workdir={runs}/byol_r50" in srun
        assert "--config.data.data_dir=/shared/tensorflow_datasets" in srun, srun


def test_readme_comm_budget_show_prints_the_saved_table(env):
    (command,) = [c for c in commands_of("comm_budget") if "--show" in c][:1]
    proc = bash(command, REPO, env, timeout=300)
    assert_ok(proc, command)
    assert "devices" in proc.stdout and re.search(r"\d", proc.stdout), proc.stdout[-2000:]


# ------------------------------------------------------------------------------------------------
# Commands that train or benchmark: slow.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_readme_first_command_in_a_fresh_venv(tmp_path, env):
    """Command 1 as written in a copy of the checkout: a fresh venv, ``pip install .``, the job."""
    (command,) = commands_of("fresh_venv_job")
    clone = tmp_path / "clone" / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    (clone.parent / "shared").symlink_to(REPO.parent / "shared")
    workdir = tmp_path / "digits"
    command = replace_checked(command, "/tmp/ssljax_digits", str(workdir))
    user_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHON")}
    user_env["PATH"] = os.environ["PATH"]
    proc = bash(command, clone, user_env, timeout=1800)
    assert_ok(proc, command)
    assert (workdir / "summary.json").is_file()
    assert "Finished at step" in proc.stderr + proc.stdout


@pytest.fixture
def digits_workdir(tmp_path, env) -> pathlib.Path:
    """A finished tiny digits run at a path of the test's, as README command 1 leaves one."""
    workdir = tmp_path / "ssljax_digits"
    command = f"python -m ssljax.main --config=configs/byol.py --workdir={workdir}" + TINY_RUN
    assert_ok(bash(command, REPO, env, timeout=600), command)
    return workdir


def _with_alternatives(command: str) -> list[str]:
    """The command, and each ``# or --flag=value`` alternative its comment gives."""
    runs = [without_comment(command)]
    for alternative in re.findall(r"# or (--[\w.]+=\S+)", command):
        flag = alternative.split("=")[0]
        runs.append(re.sub(rf"{flag}=\S+", alternative, runs[0]))
    return runs


@pytest.mark.slow
def test_readme_evaluate_and_export_commands(digits_workdir, env):
    ran = []
    for command in commands_of("evaluate_export"):
        for variant in _with_alternatives(command):
            variant = replace_checked(variant, "/tmp/ssljax_digits", str(digits_workdir))
            assert_ok(bash(variant, REPO, env, timeout=600), variant)
            ran.append(variant)
    assert len(ran) == 4, ran  # kNN, linear, torch, flax
    assert (digits_workdir / "eval_knn.json").is_file()
    assert (digits_workdir / "eval_linear.json").is_file()
    assert list(digits_workdir.glob("export*/*.safetensors")) or list(
        digits_workdir.glob("**/*.safetensors")
    )


@pytest.mark.slow
def test_readme_local_launcher_commands(checkout, tmp_path):
    repo, home, env = checkout
    env = {**env, "PYTHON": sys.executable, "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
    # The Data section, as written and in the README's order, before the CIFAR-10 command.
    unpack = next(c for c in commands_of("data") if c.startswith("mkdir -p ~/data/cifar10"))
    prepare = next(c for c in commands_of("data") if "ssljax.data.prepare" in c)
    assert_ok(bash(f"{without_comment(unpack)} && {prepare}", repo, env), prepare)
    for command in commands_of("launch_local"):
        command = without_comment(command)
        workdir = re.search(r" (/tmp/\S+)", command).group(1)
        mine = tmp_path / pathlib.Path(workdir).name
        run = replace_checked(command, workdir, str(mine)) + TINY_RUN
        run = run.replace("launch/local.sh", f"{REPO}/launch/local.sh")
        proc = bash(run, repo, env, timeout=900)
        assert_ok(proc, run)
        assert (mine / "summary.json").is_file(), run


@pytest.mark.slow
def test_readme_cifar_table_commands(checkout, tmp_path):
    """Each table command as written, as a dry run (its rows and overrides resolve); one row
    of the first for real on the tiny archive (training, kNN and linear protocols, the table)."""
    repo, home, env = checkout
    env = {
        **env,
        "SSLJAX_TEST_DATA": str(repo.parent / "shared" / "data"),
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
    }
    commands = [without_comment(c) for c in commands_of("cifar_table")]
    for i, command in enumerate(commands):
        run = replace_checked(command, "--root DIR", f"--root {tmp_path / f'dry{i}'}")
        run = run.replace("python benchmarks/", f"python {REPO}/benchmarks/") + " --dry_run"
        proc = bash(run, repo, env, timeout=900)
        assert_ok(proc, run)
        assert "nothing was trained" in proc.stdout and "would run:" in proc.stdout
    tiny = " ".join(shlex.quote(f"--override={flag}") for flag in shlex.split(TINY_RUN))
    root = tmp_path / "table"
    run = replace_checked(commands[0], "--root DIR", f"--root {root}")
    run = re.sub(r"--rows \S+", "--rows byol", run) + f" {tiny}"
    run = run.replace("python benchmarks/", f"python {REPO}/benchmarks/")
    proc = bash(run, repo, env, timeout=1800)
    assert_ok(proc, run)
    assert (root / "byol" / "eval_knn.json").is_file() and (
        root / "byol" / "eval_linear.json"
    ).is_file()
    assert "| byol" in proc.stdout or "BYOL" in proc.stdout, proc.stdout[-2000:]


# The benchmarks at their smallest: (appended arguments, results file flag or None).
BENCHMARK_SMALL: dict[str, str] = {
    "step.py": "--batch 16 --steps 2 --warmup 1 --out {out}",
    "torch_yardstick.py": "--methods byol --model resnet_tiny --batch 8 --steps 2 --warmup 1 "
    "--repeats 1 --sweep-steps 1 --torch-settings 1/default/contiguous --out {out}",
    "step_breakdown.py": "--repeats 1",
    "cpu_conv_backends.py": "--batch 2 --steps 1 --out {out}",
    "augment.py": "--repeats 1 --skip_jitter_compare --out {out}",
    "input.py": "--seconds 0.2 --n_large 80 --workers 0,1 --out {out}",
    "resume.py": "--batch 8 --steps 2 --every 1 --config configs/byol.py:cifar10_cpu --out {out}",
}


@pytest.mark.slow
def test_readme_benchmark_commands(checkout, tmp_path):
    repo, home, env = checkout
    # One equal-budget pair in the session script's dry run: every pair runs the same code, and
    # sixteen pairs of start-ups on 2 cores outlast any sensible timeout.
    env = {
        **env,
        "DRY": "1",
        "FID_RUNS": "byol:0",
        "SSLJAX_TEST_DATA": str(repo.parent / "shared" / "data"),
    }
    unpack = next(c for c in commands_of("data") if c.startswith("mkdir -p ~/data/cifar10"))
    prepare = next(c for c in commands_of("data") if "ssljax.data.prepare" in c)
    assert_ok(bash(f"{without_comment(unpack)} && {prepare}", repo, env), prepare)
    ran = 0
    for command in commands_of("benchmarks"):
        command = without_comment(command)
        out = tmp_path / f"result{ran}"
        if command.startswith("bash "):
            run = replace_checked(command, " OUT", f" {out}")
        else:
            script = re.search(r"benchmarks/(\w+\.py)", command).group(1)
            run = command.replace("--data_dir=DIR", f"--data_dir={home}/ssljax_data")
            run = run.replace("--root=CIFAR_FOLDER", f"--root={home}/data/cifar10")
            run += " " + BENCHMARK_SMALL[script].format(out=f"{out}.json")
        run = re.sub(r"(python|bash) benchmarks/", rf"\1 {REPO}/benchmarks/", run)
        proc = bash(run, REPO, {**env, "WORK": str(tmp_path / f"work{ran}")}, timeout=1800)
        assert_ok(proc, run)
        if command.startswith("bash "):
            # The session scripts go on past a failed phase (the others still measure): each
            # phase's status is in its log.
            for log in pathlib.Path(out).glob("**/session.log"):
                failed = re.findall(r".*(?:ended with status [1-9]|failed).*", log.read_text())
                assert not failed, f"{run}: {failed}"
        ran += 1
    assert ran == len(commands_of("benchmarks"))
