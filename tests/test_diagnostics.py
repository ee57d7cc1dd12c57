"""Representation diagnostics against NumPy references written from the papers' formulas.

RankMe: Garrido et al. 2023, eq. 1. Alignment and uniformity: Wang & Isola 2020, eqs. 4-5 (their
PyTorch code: ``(x - y).norm(dim=1).pow(alpha).mean()`` and
``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``). Normalised std: Chen & He 2021, sec. 4.1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import diagnostics

P = jax.sharding.PartitionSpec


def np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_rankme(z, eps=1e-7):
    sigma = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
    p = sigma / sigma.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def np_alignment(a, b, alpha=2.0):
    return float((np.linalg.norm(np_normalize(a) - np_normalize(b), axis=1) ** alpha).mean())


def np_uniformity(z, t=2.0):
    z = np_normalize(z)
    i, j = np.triu_indices(z.shape[0], k=1)  # torch.pdist: the n(n-1)/2 unordered pairs
    sq = ((z[i] - z[j]) ** 2).sum(1)
    return float(np.log(np.mean(np.exp(-t * sq))))


def test_rankme_of_an_isotropic_gaussian_is_close_to_the_dimension():
    z = np.random.default_rng(0).normal(size=(8192, 32)).astype(np.float32)
    got = float(diagnostics.rankme(jnp.asarray(z)))
    assert got == pytest.approx(np_rankme(z), rel=1e-4)
    assert 31.5 < got <= 32.0  # n = 256 d: the singular values spread only slightly


@pytest.mark.parametrize("k", [1, 5, 20])
def test_rankme_of_a_rank_k_sample_is_close_to_k(k):
    rng = np.random.default_rng(k)
    z = (rng.normal(size=(1024, k)) @ rng.normal(size=(k, 128))).astype(np.float32)
    got = float(diagnostics.rankme(jnp.asarray(z)))
    # The float64 reference of the paper's formula, and k itself up to the spread of the k
    # non-zero singular values; a Gram-matrix route in float32 gives 5.16 for k = 5.
    assert got == pytest.approx(np_rankme(z), rel=2e-3)
    assert k * 0.93 < got < k + 0.05


def test_rankme_wide_matrix_and_collapse():
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(64, 512)).astype(np.float32)
    assert float(diagnostics.rankme(jnp.asarray(wide))) == pytest.approx(np_rankme(wide), rel=1e-4)
    collapsed = np.tile(rng.normal(size=(1, 16)), (100, 1)).astype(np.float32)
    assert float(diagnostics.rankme(jnp.asarray(collapsed))) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_alignment_equals_the_reference(alpha):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(100, 16)).astype(np.float32)
    b = (a + 0.3 * rng.normal(size=a.shape)).astype(np.float32)
    got = float(diagnostics.alignment(jnp.asarray(a), jnp.asarray(b), alpha=alpha))
    assert got == pytest.approx(np_alignment(a, b, alpha), rel=1e-5)
    assert float(diagnostics.alignment(jnp.asarray(a), jnp.asarray(a))) == pytest.approx(0.0)
    assert float(diagnostics.alignment(jnp.asarray(a), -jnp.asarray(a))) == pytest.approx(4.0)


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_equals_the_reference(t):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 8)).astype(np.float32)
    got = float(diagnostics.uniformity(jnp.asarray(z), t=t))
    assert got == pytest.approx(np_uniformity(z, t), rel=1e-5, abs=1e-6)
    collapsed = np.tile(z[:1], (50, 1))
    assert float(diagnostics.uniformity(jnp.asarray(collapsed))) == pytest.approx(0.0, abs=1e-6)


def test_per_dimension_std_and_normalized_std():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(4000, 64)).astype(np.float32)
    want = np_normalize(z).std(axis=0)  # population std, as the docstring states
    np.testing.assert_allclose(diagnostics.per_dimension_std(jnp.asarray(z)), want, rtol=1e-4)
    std = float(diagnostics.normalized_std(jnp.asarray(z)))
    assert std == pytest.approx(want.mean(), rel=1e-4)
    assert std * np.sqrt(64) == pytest.approx(1.0, abs=0.02)  # healthy: 1 / sqrt(d)
    collapsed = np.tile(z[:1], (100, 1))
    assert float(diagnostics.normalized_std(jnp.asarray(collapsed))) == pytest.approx(0, abs=1e-6)


def test_sharded_batch_equals_unsharded():
    # The train step computes these on a batch sharded over the mesh.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    batch = jax.sharding.NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(5)
    a = rng.normal(size=(64, 24)).astype(np.float32)
    b = (a + 0.5 * rng.normal(size=a.shape)).astype(np.float32)

    def all_metrics(a, b):
        return jnp.stack(
            [
                diagnostics.rankme(a),
                diagnostics.normalized_std(a),
                diagnostics.alignment(a, b),
                diagnostics.uniformity(a),
            ]
        )

    plain = jax.jit(all_metrics)(a, b)
    sharded = jax.jit(all_metrics)(jax.device_put(a, batch), jax.device_put(b, batch))
    np.testing.assert_allclose(sharded, plain, rtol=1e-5)


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (diagnostics.rankme, (jnp.zeros(5),), r"\[batch, dim\]"),
        (diagnostics.normalized_std, (jnp.zeros((1, 4)),), "at least 2 rows"),
        (diagnostics.alignment, (jnp.zeros((3, 4)), jnp.zeros((3, 5))), "same shape"),
        (diagnostics.uniformity, (jnp.ones((3, 4)), 0.0), "t must be > 0"),
    ],
)
def test_bad_input_raises(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)
