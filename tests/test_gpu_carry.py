"""benchmarks/gpu_carry.py: which packages must travel to the GPU host as wheels."""

import gpu_carry


def test_carries_what_the_host_lacks_and_nothing_it_has():
    needed = gpu_carry.closure(gpu_carry.project_requirements())
    present = gpu_carry.host_packages()
    missing = {n for n in needed if n not in present}
    # The loader's stack is absent from the host's image; the numerical stack is there and must
    # not travel (a second jax or numpy would replace the host's CUDA build).
    assert {"grain", "tensorflow-datasets", "ml-collections", "array-record"} <= missing
    assert not {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"} & missing
    # Everything in the closure is pinned to what is installed here.
    assert all(needed[n] for n in missing)
    assert "tensorflow" not in needed  # the loader reads ArrayRecord without TensorFlow


def test_closure_follows_requirements_transitively_and_evaluates_markers(monkeypatch):
    class Dist:
        def __init__(self, version, requires):
            self.version, self.requires = version, requires

    fake = {
        "top": Dist(
            "1.0", ["mid>=2", "old-backport; python_version < '3.10'", "dev; extra == 'test'"]
        ),
        "mid": Dist("2.1", ["leaf", "winonly; sys_platform == 'win32'"]),
        "leaf": Dist("0.3", None),
    }

    def distribution(name):
        if name not in fake:  # an uninstalled requirement that the walk should not reach
            raise gpu_carry.metadata.PackageNotFoundError(name)
        return fake[name]

    monkeypatch.setattr(gpu_carry.metadata, "distribution", distribution)
    # Two levels down, at the installed versions; the backport (Python < 3.10), the Windows-only
    # and the extra's requirements are not followed on the host (Python 3.12, Linux).
    assert gpu_carry.closure(["top"]) == {"top": "1.0", "mid": "2.1", "leaf": "0.3"}


def test_host_list_skips_comments_and_normalises_names():
    names = gpu_carry.host_packages()
    assert "orbax-checkpoint" in names and "opt-einsum" in names
    assert not any(n.startswith("#") or " " in n for n in names)
