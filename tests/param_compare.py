"""One rule for "these parameters are the same computation, up to reduction order".

Used by every test that compares a run split over devices or processes with a reference run
(8 simulated devices against one, 2 processes against 1, FSDP against data parallelism).

Float32 sums over the batch taken in another order (per-device partial sums, then an
all-reduce) round differently, and the difference grows with the steps taken. A tensor is
compared in norm, per tensor: ``||a - b|| <= rtol * ||b|| + atol``. A sharding bug (a
statistic or loss computed per device instead of over the global batch) moves a tensor by far
more than that. The absolute term is for tensors that are still tiny after a few warm-up steps
and whose gradient is a sum with heavy cancellation (the biases of BatchNorm layers: 1e-3 in
norm, moved by up to 6e-6 by rounding on 8 devices).

One kind of parameter is exempt from the relative rule: the bias of a layer whose output goes
straight into a BatchNorm (``dense_i/bias`` beside ``bn_i`` in the heads). BatchNorm subtracts
the batch mean, so that bias has a zero gradient in exact arithmetic; its value after a few
steps (1e-9 to 1e-6) is rounding noise alone, of either sign and any relative size. For those
only an absolute bound holds, and it is checked.
"""

import re
from collections.abc import Iterable, Mapping

import numpy as np

from ssljax import tree_paths

# Per-tensor bounds in norm. Measured noise after two steps on 8 simulated devices (AVX-512
# x86_64): 2.6e-5 of a tensor's norm (VICReg); up to 1.4e-4 of the norm and 1.1e-5 absolute
# for the biases of a ViT's MLP under FSDP; 5.9e-6 absolute for a BatchNorm bias of norm 9e-4.
RTOL = 1e-4
ATOL = 2e-5
# Absolute bound for the parameters whose gradient is zero analytically (see module docstring);
# measured up to 6e-6 in norm on 8 devices.
ZERO_GRAD_ATOL = 2e-5

_DENSE_BIAS = re.compile(r"(.*)\bdense_(\d+)/bias$")


def gradient_is_zero_analytically(name: str, names: Iterable[str]) -> bool:
    """Whether ``name`` is the bias of a Dense layer whose output feeds a BatchNorm.

    Args:
      name: A ``/``-joined parameter path, e.g. ``params/predictor/dense_0/bias``.
      names: Every parameter path of the tree (to find the sibling ``bn_i``).

    Returns:
      True when ``.../dense_i/bias`` has a sibling ``.../bn_i/...`` (the heads' hidden layers:
      ``Dense -> BatchNorm -> ReLU``).
    """
    match = _DENSE_BIAS.match(name)
    if not match:
        return False
    sibling = f"{match.group(1)}bn_{match.group(2)}/"
    return any(n.startswith(sibling) for n in names)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested mappings of arrays -> ``{'<prefix>a/b/c': float64 array}``."""
    return tree_paths.flatten(
        tree, sep="/", prefix=prefix, leaf=lambda v: np.asarray(v, np.float64)
    )


def assert_params_close(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    zero_grad_atol: float = ZERO_GRAD_ATOL,
) -> float:
    """Asserts two flat parameter dicts are the same computation up to reduction order.

    Args:
      actual: ``{path: array}`` of the run under test (e.g. sharded).
      expected: ``{path: array}`` of the reference run, same keys.
      rtol: Per-tensor bound relative to ``||expected||``, for every tensor with a gradient.
      atol: Absolute per-tensor bound added to the relative one for those tensors.
      zero_grad_atol: Absolute per-tensor bound in norm for the biases that feed a BatchNorm,
        whose gradient is zero analytically (they get no relative bound).

    Returns:
      The largest ratio of a tensor's difference to its bound (<= 1), to report the margin.

    Raises:
      AssertionError: Naming every tensor outside its bound, with the difference and scale.
    """
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    failures, worst = [], 0.0
    for name in sorted(expected):
        a = np.asarray(actual[name], np.float64)
        b = np.asarray(expected[name], np.float64)
        assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
        diff, scale = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
        if gradient_is_zero_analytically(name, expected):
            bound = zero_grad_atol
        else:
            bound = rtol * scale + atol
        worst = max(worst, diff / bound if bound else float(diff > 0) * float("inf"))
        if not diff <= bound:
            failures.append(
                f"{name}: ||diff|| {diff:.3g} > bound {bound:.3g} (||ref|| {scale:.3g})"
            )
    assert not failures, "Parameters differ beyond reduction-order noise:\n" + "\n".join(failures)
    return worst
