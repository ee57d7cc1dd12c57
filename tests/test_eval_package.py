"""The evaluation package: it stands without ``ssljax.train``, and it falls back over damaged
checkpoints with the same loop as training, read-only.
"""

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssljax import checkpointing

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_evaluation_never_imports_train():
    """Evaluation builds the backbone from the config, not through training's components."""
    code = (
        "import json, sys\n"
        "import ssljax.eval, ssljax.eval.config, ssljax.eval.restore, ssljax.eval.features\n"
        "import ssljax.eval.linear, ssljax.eval.knn, ssljax.eval.protocols\n"
        "import ssljax.evaluate, ssljax.export\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ssljax.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ssljax.eval.protocols" in loaded and "ssljax.evaluate" in loaded
    assert "ssljax.train" not in loaded, loaded
    # Nor the methods (heads, losses, target policies): only training needs them.
    assert not any(m.startswith("ssljax.methods") for m in loaded), loaded


# ----------------------------------------------------------------------------------------------
# The one fallback loop, on fake checkpoints: what is tried, renamed, returned.
# ----------------------------------------------------------------------------------------------
def _fake_checkpoints(directory: pathlib.Path, steps) -> None:
    for s in steps:
        (directory / str(s)).mkdir()
        (directory / str(s) / "marker").write_text(str(s))


def _restore_fake(damaged: set[int], tried: list[int]):
    def restore(step: int) -> str:
        tried.append(step)
        if step in damaged:
            raise checkpointing.CheckpointDamagedError(f"step {step} is broken")
        return f"state of step {step}"

    return restore


@pytest.mark.parametrize("rename_damaged", [True, False], ids=["training", "evaluation"])
def test_fallback_skips_damaged_checkpoints_newest_first(tmp_path, rename_damaged):
    _fake_checkpoints(tmp_path, [2, 4, 6, 8])
    tried = []
    found = checkpointing.restore_newest_intact(
        str(tmp_path), [4, 8, 2, 6], _restore_fake({8, 6}, tried), rename_damaged=rename_damaged
    )
    assert (found.step, found.value) == (4, "state of step 4")
    assert tried == [8, 6, 4], "newest first, stopping at the first intact one"
    assert [(d.step, d.reason) for d in found.damaged] == [
        (8, "step 8 is broken"),
        (6, "step 6 is broken"),
    ]
    listing = sorted(p.name for p in tmp_path.iterdir())
    if rename_damaged:
        assert [d.renamed_to for d in found.damaged] == [
            str(tmp_path / "8.damaged"),
            str(tmp_path / "6.damaged"),
        ]
        assert listing == ["2", "4", "6.damaged", "8.damaged"]
        assert (tmp_path / "8.damaged" / "marker").read_text() == "8", "kept, not deleted"
    else:
        assert [d.renamed_to for d in found.damaged] == [None, None]
        assert listing == ["2", "4", "6", "8"]


@pytest.mark.parametrize("rename_damaged", [True, False], ids=["training", "evaluation"])
def test_fallback_with_every_checkpoint_damaged_says_so(tmp_path, rename_damaged, caplog):
    _fake_checkpoints(tmp_path, [3, 5])
    with caplog.at_level(logging.WARNING):
        found = checkpointing.restore_newest_intact(
            str(tmp_path), [3, 5], _restore_fake({3, 5}, []), rename_damaged=rename_damaged
        )
    assert (found.step, found.value) == (None, None)
    assert [d.step for d in found.damaged] == [5, 3]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "None of the 2 checkpoint(s)" in errors[0]
    assert ("renamed *.damaged" in errors[0]) == rename_damaged
    skipped = [r.getMessage() for r in caplog.records if "will be skipped" in r.getMessage()]
    assert len(skipped) == 2 and str(tmp_path / "5") in skipped[0]


def test_fallback_stops_at_a_mismatch_and_renames_nothing(tmp_path):
    """A checkpoint of another model is not damage: older ones would not fit either."""
    _fake_checkpoints(tmp_path, [2, 4])
    tried = []

    def restore(step):
        tried.append(step)
        raise checkpointing.CheckpointMismatchError(f"step {step} is another model")

    with pytest.raises(checkpointing.CheckpointMismatchError, match="step 4 is another model"):
        checkpointing.restore_newest_intact(str(tmp_path), [2, 4], restore, rename_damaged=True)
    assert tried == [4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "4"]


def test_fallback_on_no_checkpoint_returns_nothing_quietly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        found = checkpointing.restore_newest_intact(
            str(tmp_path), [], _restore_fake(set(), []), rename_damaged=True
        )
    assert (found.step, found.value, found.damaged) == (None, None, [])
    assert not caplog.records


# ----------------------------------------------------------------------------------------------
# The same loop on a real run: training renames, evaluation skips, both land on step 4.
# ----------------------------------------------------------------------------------------------
def test_damaged_newest_checkpoint_training_renames_evaluation_skips(tmp_path):
    import test_evaluate
    import test_hostile

    from ssljax import evaluate

    state = test_evaluate.make_workdir(tmp_path, test_evaluate.digits_config())
    ckpt_dir = tmp_path / "checkpoints"
    newer = state.replace(step=state.step + 4)  # step 8, same arrays
    ckpt = checkpointing.Checkpointer(str(ckpt_dir), async_save=False)
    ckpt.save(8, newer, None)
    ckpt.close()
    # Bits flipped in a backbone weight: the files decode, only the checksum tells.
    test_hostile._flip_bits_of(ckpt_dir / "8", "params.backbone.conv1.kernel")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["4", "8"]

    # Evaluation: skips step 8, leaves it where it is.
    run = evaluate.load_run(str(tmp_path), with_data=False)
    assert run.step == 4 and run.checkpoint == str(ckpt_dir / "4")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["4", "8"], "evaluation renamed"
    # Asked for by name, the damaged checkpoint is an error, not a silent fallback.
    with pytest.raises(ValueError, match=r"checkpoints/8 is unusable: .*checksums"):
        evaluate.load_run(str(tmp_path), step=8, with_data=False)

    # Training: the same loop renames step 8 and resumes from step 4.
    shapes = jax.eval_shape(lambda s: s, state)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    ckpt = checkpointing.Checkpointer(str(ckpt_dir), async_save=False)
    try:
        restored, _ = ckpt.restore_latest(shapes, jax.tree.map(lambda _: dev, shapes))
        assert ckpt.latest_step() == 4, "the manager forgot the renamed checkpoint"
    finally:
        ckpt.close()
    assert int(restored.step) == run.step == 4
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["4", "8.damaged"]
    # Both read the same backbone.
    jax.tree.map(np.testing.assert_array_equal, run.params, restored.params["backbone"])
    jax.tree.map(np.testing.assert_array_equal, run.batch_stats, restored.batch_stats["backbone"])
