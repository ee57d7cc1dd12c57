"""Tests of ssljax.losses against NumPy float64 references written from the papers' equations.

The references below use the straightforward d x d formulas of the papers (np.cov, explicit
off-diagonal masks), in float64, on the exact values the loss sees (bfloat16 inputs are rounded
first, so only the loss's own float32 arithmetic is measured). Gradients: analytic for the cosine
losses, central finite differences of the float64 reference for VICReg and Barlow Twins.

`python tests/test_losses.py` runs the reference comparisons and prints each loss's largest
error against its reference.
"""

from __future__ import annotations

import collections
import doctest
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import losses

P = jax.sharding.PartitionSpec

DTYPES = [jnp.float32, jnp.bfloat16]
# Batch x dim: the smallest batch VICReg/Barlow Twins accept, n < d, n > d. With gram=None these
# take VICReg's Gram form for (2, 5), (6, 16), (24, 40), its d x d form for (16, 6), and Barlow
# Twins' Gram form for (2, 5), (6, 16), its d x d form for the others (see
# test_auto_form_is_chosen_from_static_shapes); the forms are also compared with each other below.
SHAPES = [(2, 5), (6, 16), (16, 6), (24, 40)]

# Largest errors seen against the references: {(loss, dtype, quantity): [max_abs, max_rel]}.
ERRORS: dict[tuple[str, str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])


# --------------------------------------------------------------------------------------------
# NumPy float64 references, from the equations.
# --------------------------------------------------------------------------------------------
def ref_cosine(q: np.ndarray, z: np.ndarray) -> np.ndarray:
    """cos(q_b, z_b) = <q_b, z_b> / (||q_b|| ||z_b||) for every row b."""
    return np.sum(q * z, axis=1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(z, axis=1))


def ref_cosine_grad(q: np.ndarray, z: np.ndarray) -> np.ndarray:
    """d cos(q_b, z_b) / d q_b = (z_hat - cos q_hat) / ||q||, row by row."""
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    zn = np.linalg.norm(z, axis=1, keepdims=True)
    cos = ref_cosine(q, z)[:, None]
    return (z / zn - cos * q / qn) / qn


def ref_byol(q: np.ndarray, z: np.ndarray) -> float:
    """Grill et al. 2020, eq. 2: mean over the batch of 2 - 2 cos(q, z')."""
    return float(np.mean(2.0 - 2.0 * ref_cosine(q, z)))


def ref_byol_grad(q: np.ndarray, z: np.ndarray) -> np.ndarray:
    return -2.0 * ref_cosine_grad(q, z) / q.shape[0]


def ref_simsiam(p: np.ndarray, z: np.ndarray) -> float:
    """Chen & He 2021, eq. 1: D(p, z) = -cos(p, z), averaged over the batch."""
    return float(-np.mean(ref_cosine(p, z)))


def ref_simsiam_grad(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    return -ref_cosine_grad(p, z) / p.shape[0]


def ref_vicreg(
    za: np.ndarray,
    zb: np.ndarray,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[float, dict[str, float]]:
    """Bardes et al. 2022, eqs. 1-6, with the official code's MSE and halved variance term."""
    d = za.shape[1]

    def v(z):  # eqs. 1-2, unbiased variance
        return np.mean(np.maximum(0.0, gamma - np.sqrt(np.var(z, axis=0, ddof=1) + eps)))

    def c(z):  # eqs. 3-4, C(Z) with 1/(n-1)
        cov = np.cov(z, rowvar=False, ddof=1).reshape(d, d)
        off = cov[~np.eye(d, dtype=bool)]
        return np.sum(off**2) / d

    terms = {
        "invariance": float(np.mean((za - zb) ** 2)),
        "variance": float(v(za) / 2 + v(zb) / 2),
        "covariance": float(c(za) + c(zb)),
    }
    total = (
        sim_coeff * terms["invariance"]
        + std_coeff * terms["variance"]
        + cov_coeff * terms["covariance"]
    )
    return float(total), terms


def ref_barlow(
    za: np.ndarray, zb: np.ndarray, lambd: float = 5e-3, eps: float = 1e-5
) -> tuple[float, dict[str, float]]:
    """Zbontar et al. 2021, eq. 1, on BatchNorm-standardised (biased variance) embeddings."""
    n, d = za.shape

    def bn(z):
        return (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0, ddof=0) + eps)

    c = bn(za).T @ bn(zb) / n
    terms = {
        "on_diagonal": float(np.sum((1.0 - np.diag(c)) ** 2)),
        "off_diagonal": float(np.sum(c[~np.eye(d, dtype=bool)] ** 2)),
    }
    return terms["on_diagonal"] + lambd * terms["off_diagonal"], terms


def finite_difference_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a float64 scalar function, entry by entry."""
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


# --------------------------------------------------------------------------------------------
# Inputs and comparisons.
# --------------------------------------------------------------------------------------------
def _seed(*parts) -> int:
    """A seed per test case, stable across processes (unlike hash() of a str)."""
    return zlib.crc32(repr(parts).encode())


def _controlled(rng: np.random.Generator, x: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Rescales the columns of x to exactly the given unbiased stds and adds random means."""
    x = x - x.mean(axis=0)
    x = x / x.std(axis=0, ddof=1) * stds
    return x + rng.normal(size=(1, x.shape[1])) * 3.0


def _embedding_pair(shape, dtype, seed):
    """Two correlated views; per-column stds 0.3..2.5, away from VICReg's hinge at gamma = 1.

    Returns the jax inputs in `dtype` and their exact values in float64.
    """
    rng = np.random.default_rng(seed)
    n, d = shape
    stds = np.resize([0.3, 2.5, 0.6, 1.6], d) * rng.choice([1.0, 1.15], size=d)
    base = rng.normal(size=shape)
    za = _controlled(rng, base, stds)
    zb = _controlled(rng, base + 0.8 * rng.normal(size=shape), rng.permutation(stds))
    ja, jb = jnp.asarray(za, dtype), jnp.asarray(zb, dtype)
    return ja, jb, np.asarray(ja, np.float64), np.asarray(jb, np.float64)


def _prediction_pair(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=shape) * rng.uniform(0.1, 10.0, size=(shape[0], 1))
    z = q + rng.normal(size=shape) * 1.5
    jq, jz = jnp.asarray(q, dtype), jnp.asarray(z, dtype)
    return jq, jz, np.asarray(jq, np.float64), np.asarray(jz, np.float64)


def _check(loss, dtype, quantity, actual, expected, *, rtol, atol=0.0, scale=None):
    """Asserts |actual - expected| <= atol + rtol * scale and records the error.

    `scale` defaults to |expected| (elementwise). The recorded relative error is
    max |actual - expected| / max |expected|: the plain relative error of a scalar, the max-norm
    relative error of a gradient.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.abs(actual - expected)
    key = (loss, jnp.dtype(dtype).name, quantity)
    ERRORS[key][0] = max(ERRORS[key][0], float(np.max(err)))
    if np.max(np.abs(expected)) > 0:
        ERRORS[key][1] = max(ERRORS[key][1], float(np.max(err) / np.max(np.abs(expected))))
    scale = np.abs(expected) if scale is None else scale
    bound = np.broadcast_to(atol + rtol * scale + 1e-300, err.shape)
    np.testing.assert_array_less(err, bound, err_msg=f"{key}")


# float32 arithmetic on O(1) values: values to 2e-5 relative. Gradients of bfloat16 inputs come
# back in bfloat16, rounded to 2^-8 relative.
VALUE_RTOL = 2e-5
GRAD_RTOL = {jnp.float32: 1e-4, jnp.bfloat16: 2.0**-8 + 1e-4}


# --------------------------------------------------------------------------------------------
# Values and gradients against the references.
# --------------------------------------------------------------------------------------------
COSINE_LOSSES = {
    "byol": (losses.byol_loss, ref_byol, ref_byol_grad),
    "simsiam": (losses.simsiam_loss, ref_simsiam, ref_simsiam_grad),
}
BATCH_LOSSES = {"vicreg": losses.vicreg_loss, "barlow_twins": losses.barlow_twins_loss}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(COSINE_LOSSES))
def test_cosine_loss_matches_reference(name, shape, dtype):
    loss_fn, ref, ref_grad = COSINE_LOSSES[name]
    q, z, q64, z64 = _prediction_pair(shape, dtype, _seed(name, shape))
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(q, z)
    assert value.dtype == jnp.float32 and value.shape == ()
    assert grad.dtype == dtype
    _check(name, dtype, "value", value, ref(q64, z64), rtol=VALUE_RTOL, atol=1e-6)
    g_ref = ref_grad(q64, z64)
    # Elementwise relative to the gradient's rows: cos's gradient cancels in some entries.
    _check(
        name,
        dtype,
        "grad",
        grad,
        g_ref,
        rtol=GRAD_RTOL[dtype],
        scale=np.max(np.abs(g_ref), axis=1, keepdims=True),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_vicreg_matches_reference(shape, dtype, gram=None):
    za, zb, za64, zb64 = _embedding_pair(shape, dtype, _seed("vicreg", shape))
    kw = dict(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, gamma=1.0, eps=1e-4)

    def f(a, b):
        return losses.vicreg_loss(a, b, gram=gram, **kw)

    (total, terms), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(za, zb)
    ref_total, ref_terms = ref_vicreg(za64, zb64, **kw)
    assert set(terms) == {"invariance", "variance", "covariance"}
    _check("vicreg", dtype, "value", total, ref_total, rtol=VALUE_RTOL)
    for k in ref_terms:
        assert terms[k].dtype == jnp.float32 and terms[k].shape == ()
        # The Gram form's covariance is a difference of sums ~ sum_j Var_j^2 / d: its error is
        # relative to the total (which holds that sum) rather than to the term.
        scale = ref_total if k == "covariance" else abs(ref_terms[k])
        _check("vicreg", dtype, k, terms[k], ref_terms[k], rtol=VALUE_RTOL, atol=1e-7, scale=scale)
    for i, (g, x64) in enumerate(zip(grads, (za64, zb64), strict=True)):

        def f_ref(x, i=i):
            return ref_vicreg(x, zb64, **kw)[0] if i == 0 else ref_vicreg(za64, x, **kw)[0]

        g_ref = finite_difference_grad(f_ref, x64)
        assert g.dtype == dtype
        scale = np.max(np.abs(g_ref))
        _check("vicreg", dtype, "grad", g, g_ref, rtol=GRAD_RTOL[dtype], atol=1e-6, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_barlow_twins_matches_reference(shape, dtype, gram=None):
    za, zb, za64, zb64 = _embedding_pair(shape, dtype, _seed("barlow", shape))
    lambd = 5e-3

    def f(a, b):
        return losses.barlow_twins_loss(a, b, lambd=lambd, gram=gram)

    (total, terms), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(za, zb)
    ref_total, ref_terms = ref_barlow(za64, zb64, lambd=lambd)
    assert set(terms) == {"on_diagonal", "off_diagonal"}
    _check("barlow_twins", dtype, "value", total, ref_total, rtol=VALUE_RTOL)
    for k in ref_terms:
        assert terms[k].dtype == jnp.float32 and terms[k].shape == ()
        # Differences of sums ~ d in the Gram form: error relative to d + the term.
        scale = abs(ref_terms[k]) + shape[1]
        _check("barlow_twins", dtype, k, terms[k], ref_terms[k], rtol=VALUE_RTOL, scale=scale)
    for i, (g, x64) in enumerate(zip(grads, (za64, zb64), strict=True)):

        def f_ref(x, i=i):
            return ref_barlow(x, zb64, lambd)[0] if i == 0 else ref_barlow(za64, x, lambd)[0]

        g_ref = finite_difference_grad(f_ref, x64)
        assert g.dtype == dtype
        scale = np.max(np.abs(g_ref))
        # atol: with a batch of 2 the standardised columns are +-1 and the gradient is ~0, so
        # float32 rounding (~1e-7 of the O(1) terms) is all there is to compare.
        _check(
            "barlow_twins", dtype, "grad", g, g_ref, rtol=GRAD_RTOL[dtype], atol=1e-6, scale=scale
        )


def test_non_default_coefficients_reach_every_term():
    za, zb, za64, zb64 = _embedding_pair((8, 6), jnp.float32, 7)
    kw = dict(sim_coeff=3.0, std_coeff=0.5, cov_coeff=7.0, gamma=2.0, eps=1e-3)
    total, terms = jax.jit(functools.partial(losses.vicreg_loss, **kw))(za, zb)
    ref_total, ref_terms = ref_vicreg(za64, zb64, **kw)
    np.testing.assert_allclose(float(total), ref_total, rtol=VALUE_RTOL)
    for k, v in ref_terms.items():
        np.testing.assert_allclose(float(terms[k]), v, rtol=VALUE_RTOL)
    total, terms = jax.jit(functools.partial(losses.barlow_twins_loss, lambd=0.3, eps=1e-2))(za, zb)
    ref_total, ref_terms = ref_barlow(za64, zb64, lambd=0.3, eps=1e-2)
    np.testing.assert_allclose(float(total), ref_total, rtol=VALUE_RTOL)
    for k, v in ref_terms.items():
        np.testing.assert_allclose(float(terms[k]), v, rtol=VALUE_RTOL)


def test_batch_losses_are_symmetric_in_their_arguments():
    za, zb, _, _ = _embedding_pair((8, 6), jnp.float32, 11)
    for name, fn in BATCH_LOSSES.items():
        (t_ab, terms_ab), (t_ba, terms_ba) = jax.jit(lambda a, b, f=fn: (f(a, b), f(b, a)))(za, zb)
        np.testing.assert_allclose(float(t_ab), float(t_ba), rtol=1e-6, err_msg=name)
        for k in terms_ab:
            np.testing.assert_allclose(float(terms_ab[k]), float(terms_ba[k]), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Gram form versus d x d form.
# --------------------------------------------------------------------------------------------
def _values_and_grads(cases):
    """{key: (fn, args)} -> a function of the args computing every ((value, terms), grads).

    Tracing several losses into one program saves compiles, which dominate these tests' time.
    """

    def run(*args):
        out = {}
        for key, (fn, argnums) in cases.items():
            f = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)
            out[key] = f(*(args[i] for i in argnums))
        return out

    return run


@pytest.mark.parametrize("shape", [(4, 32), (32, 6), (12, 12)], ids=str)
def test_gram_and_covariance_forms_agree(shape):
    za, zb, _, _ = _embedding_pair(shape, jnp.float32, _seed("forms", shape))
    cases = {
        f"{name}/{gram}": (functools.partial(fn, gram=gram), (0, 1))
        for name, fn in BATCH_LOSSES.items()
        for gram in (True, False)
    }
    out = jax.jit(_values_and_grads(cases))(za, zb)
    for name in BATCH_LOSSES:
        (t1, terms1), g1 = out[f"{name}/True"]
        (t0, terms0), g0 = out[f"{name}/False"]
        np.testing.assert_allclose(float(t1), float(t0), rtol=1e-5, err_msg=name)
        for k in terms0:
            np.testing.assert_allclose(
                float(terms1[k]), float(terms0[k]), rtol=1e-5, atol=1e-5, err_msg=f"{name} {k}"
            )
        for a, b in zip(g1, g0, strict=True):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), atol=1e-5 * np.abs(b).max(), err_msg=name
            )


def _dot_output_shapes(fn, *args) -> set[tuple[int, ...]]:
    jaxpr = jax.make_jaxpr(fn)(*args)
    return {
        tuple(eqn.outvars[0].aval.shape)
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "dot_general"
    }


@pytest.mark.parametrize(
    "name, shape, gram, expected",
    [
        # VICReg: Gram (n x n) when n < d, else d x d.
        ("vicreg", (4, 16), None, (4, 4)),
        ("vicreg", (16, 4), None, (4, 4)),
        ("vicreg", (6, 10), None, (6, 6)),
        ("vicreg", (16, 4), True, (16, 16)),
        ("vicreg", (4, 16), False, (16, 16)),
        # Barlow Twins: Gram costs two n x n products, so it is chosen when 2n < d.
        ("barlow_twins", (4, 16), None, (4, 4)),
        ("barlow_twins", (6, 10), None, (10, 10)),
        ("barlow_twins", (8, 16), None, (16, 16)),  # equal cost: the exact d x d form
        ("barlow_twins", (16, 4), True, (16, 16)),
    ],
)
def test_auto_form_is_chosen_from_static_shapes(name, shape, gram, expected):
    loss_fn = {"vicreg": losses.vicreg_loss, "barlow_twins": losses.barlow_twins_loss}[name]
    z = jax.ShapeDtypeStruct(shape, jnp.float32)
    assert _dot_output_shapes(lambda a, b: loss_fn(a, b, gram=gram), z, z) == {expected}


# --------------------------------------------------------------------------------------------
# Properties from the issue.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(COSINE_LOSSES))
def test_cosine_losses_invariant_to_positive_rescaling(name):
    loss_fn = COSINE_LOSSES[name][0]
    q, z, _, _ = _prediction_pair((8, 16), jnp.float32, 3)
    rng = np.random.default_rng(0)
    base = float(loss_fn(q, z))
    for scale in (1e-3, 0.37, 4.0, 1e3):
        row_scales = jnp.asarray(scale * rng.uniform(0.5, 2.0, size=(8, 1)), jnp.float32)
        np.testing.assert_allclose(float(loss_fn(q * row_scales, z)), base, rtol=1e-6)
        np.testing.assert_allclose(float(loss_fn(q, z * row_scales)), base, rtol=1e-6)
    # A negative scale flips every cosine: the loss must change (the check above can fail).
    assert abs(float(loss_fn(-q, z)) - base) > 0.1


@pytest.mark.parametrize("name", sorted(COSINE_LOSSES))
def test_no_gradient_reaches_the_stop_gradient_side(name):
    loss_fn = COSINE_LOSSES[name][0]
    q, z, _, _ = _prediction_pair((8, 16), jnp.float32, 4)
    g_target = jax.jit(jax.grad(loss_fn, argnums=1))(q, z)
    assert np.all(np.asarray(g_target) == 0.0)
    g_online = jax.jit(jax.grad(loss_fn, argnums=0))(q, z)
    assert np.abs(np.asarray(g_online)).max() > 1e-3


@pytest.mark.parametrize(
    "name, min_norm, per_row",
    # A row q_0 = r * u against z_0 = u: its cosine is min(r, m) / m for the clamp m; with
    # q_1 = 0 its cosine is 0. per_row(c0) is the loss for that cosine and an exact match in row 2.
    [
        ("byol", 1e-6, lambda c0: (2 - 2 * c0 + 2 + 0) / 3),
        ("simsiam", 1e-8, lambda c0: (-c0 - 0 - 1) / 3),
    ],
)
def test_norm_clamp_matches_official_code_and_zero_rows_are_finite(name, min_norm, per_row):
    loss_fn = COSINE_LOSSES[name][0]
    u = np.array([0.6, 0.8, 0.0])
    for r in (0.1 * min_norm, 10 * min_norm):
        q = jnp.asarray(np.stack([r * u, np.zeros(3), u]), jnp.float32)
        z = jnp.asarray(np.stack([u, u, u]), jnp.float32)
        value, grad = jax.jit(jax.value_and_grad(loss_fn))(q, z)
        np.testing.assert_allclose(float(value), per_row(min(r / min_norm, 1.0)), rtol=1e-5)
        assert np.all(np.isfinite(np.asarray(grad)))
    # Zero rows on the target side too.
    zero = jnp.zeros((2, 3), jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(zero, zero)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("std_coeff, gamma", [(25.0, 1.0), (3.0, 2.0)])
@pytest.mark.parametrize("shape", [(8, 16), (16, 8)], ids=str)
def test_vicreg_variance_term_for_constant_embeddings(shape, std_coeff, gamma):
    row = np.random.default_rng(5).normal(size=(1, shape[1]))
    z = jnp.asarray(np.repeat(row, shape[0], axis=0), jnp.float32)
    for eps in (1e-4, 0.0):
        total, terms = losses.vicreg_loss(z, z, std_coeff=std_coeff, gamma=gamma, eps=eps)
        # Every std is 0, so every hinge is gamma - sqrt(eps): std_coeff * (1 - 0.01) for the
        # defaults (24.75, not 25, because of eps), exactly std_coeff when gamma = 1 and eps = 0.
        hinge = gamma - np.sqrt(eps)
        np.testing.assert_allclose(float(terms["variance"]), hinge, rtol=1e-6)
        np.testing.assert_allclose(float(total), std_coeff * hinge, rtol=1e-6)
        assert float(terms["invariance"]) == 0.0 and abs(float(terms["covariance"])) < 1e-10


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_vicreg_variance_term_zero_when_every_std_reaches_gamma(gamma):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 6))
    stds = gamma * np.array([1.0, 1.0, 1.5, 3.0, 1.0, 10.0])
    za = jnp.asarray(_controlled(rng, x, stds), jnp.float32)
    zb = jnp.asarray(_controlled(rng, x[::-1], stds[::-1]), jnp.float32)
    _, terms = losses.vicreg_loss(za, zb, gamma=gamma)
    assert float(terms["variance"]) == 0.0
    # One dimension below gamma: the hinge is active for it alone (so the check above can fail).
    stds[0] = 0.5 * gamma
    za = _controlled(rng, x, stds)
    _, terms = losses.vicreg_loss(jnp.asarray(za, jnp.float32), zb, gamma=gamma)
    expected = (gamma - np.sqrt((0.5 * gamma) ** 2 + 1e-4)) / 6 / 2
    np.testing.assert_allclose(float(terms["variance"]), expected, rtol=1e-5)


def _decorrelated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """[n, d] with orthogonal centred columns of different norms, plus column means: C diagonal."""
    x = rng.normal(size=(n, d))
    q, _ = np.linalg.qr(x - x.mean(axis=0))  # columns span a subspace orthogonal to ones
    return q * rng.uniform(1.0, 5.0, size=d) * np.sqrt(n) + rng.normal(size=d)


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "dxd"])
def test_vicreg_covariance_zero_for_decorrelated_inputs(gram):
    rng = np.random.default_rng(8)
    za = _decorrelated(rng, 16, 8)
    zb = _decorrelated(rng, 16, 8)
    _, terms = losses.vicreg_loss(jnp.asarray(za), jnp.asarray(zb), gram=gram)
    # Variances here are ~ 1..25; the Gram form's rounding scales with sum_j Var_j^2 / d.
    scale = np.sum(np.var(za, axis=0, ddof=1) ** 2) / 8
    assert abs(float(terms["covariance"])) < (1e-6 * scale if gram else 1e-9 * scale)
    # Mixing the columns correlates them (so the check above can fail).
    mix = rng.normal(size=(8, 8))
    _, terms = losses.vicreg_loss(jnp.asarray(za @ mix), jnp.asarray(zb @ mix), gram=gram)
    assert float(terms["covariance"]) > 1.0


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "dxd"])
def test_barlow_twins_zero_at_identity_cross_correlation(gram):
    rng = np.random.default_rng(9)
    # Orthogonal centred columns of any scale and mean standardise to A with A^T A / n = I.
    za = _decorrelated(rng, 16, 8)
    zb = za * rng.uniform(0.5, 2.0, size=8) + rng.normal(size=8)  # same after standardising
    for eps in (0.0, 1e-5):
        total, terms = losses.barlow_twins_loss(
            jnp.asarray(za), jnp.asarray(zb), gram=gram, eps=eps
        )
        # With eps, C_ii = var / (var + eps) < 1 by ~1e-6 at most here: squared, ~1e-12.
        assert float(total) < 1e-6
        assert abs(float(terms["off_diagonal"])) < 1e-5
    total, terms = losses.barlow_twins_loss(jnp.asarray(za), jnp.asarray(-zb), gram=gram)
    np.testing.assert_allclose(float(terms["on_diagonal"]), 4.0 * 8, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Sharding: statistics over the global batch.
# --------------------------------------------------------------------------------------------
def _no_terms(fn):
    return lambda a, b: (fn(a, b), {})


# Every loss in one program, with each form of the batch losses. For (16, 40) gram=None picks the
# Gram form of both VICReg and Barlow Twins, for (32, 8) the d x d form of both.
SHARDED_CASES = {
    "byol": (_no_terms(losses.byol_loss), (0, 1)),
    "simsiam": (_no_terms(losses.simsiam_loss), (0, 1)),
    **{
        f"{name}/{gram}": (functools.partial(fn, gram=gram), (2, 3))
        for name, fn in BATCH_LOSSES.items()
        for gram in (None, True, False)
    },
}


@pytest.mark.parametrize("shape", [(16, 40), (32, 8)], ids=str)
def test_sharded_batch_equals_single_device(shape):
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, P("data"))
    q, z, _, _ = _prediction_pair(shape, jnp.float32, _seed("shard", shape))
    za, zb, _, _ = _embedding_pair(shape, jnp.float32, _seed("shard", shape))
    f = jax.jit(_values_and_grads(SHARDED_CASES))
    single = f(*(jax.device_put(x, devices[0]) for x in (q, z, za, zb)))
    sharded_args = [jax.device_put(x, sharding) for x in (q, z, za, zb)]
    assert all(
        x.sharding.spec == P("data") and len(x.addressable_shards) == 8 for x in sharded_args
    )
    sharded = f(*sharded_args)
    for key in SHARDED_CASES:
        (total1, terms1), grads1 = single[key]
        (total8, terms8), grads8 = sharded[key]
        np.testing.assert_allclose(float(total8), float(total1), rtol=1e-6, err_msg=key)
        # Terms near 0 (VICReg's variance hinge) compare relative to the total; Barlow Twins' Gram
        # off-diagonal term is a difference of sums ~ d, so its rounding is relative to d.
        term_scale = abs(float(total1)) + (shape[1] if key.startswith("barlow") else 0.0)
        for k in terms1:
            np.testing.assert_allclose(
                float(terms8[k]),
                float(terms1[k]),
                rtol=1e-6,
                atol=1e-6 * term_scale,
                err_msg=f"{key} {k}",
            )
        for g8, g1 in zip(grads8, grads1, strict=True):
            np.testing.assert_allclose(
                np.asarray(g8), np.asarray(g1), atol=1e-5 * np.abs(g1).max(), err_msg=key
            )


# --------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument, at trace time.
# --------------------------------------------------------------------------------------------
ALL_LOSSES = {
    "byol": (losses.byol_loss, ("online_pred", "target_proj")),
    "simsiam": (losses.simsiam_loss, ("p", "z")),
    "vicreg": (losses.vicreg_loss, ("z_a", "z_b")),
    "barlow_twins": (losses.barlow_twins_loss, ("z_a", "z_b")),
}


def _spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_bad_input_raises_value_error_naming_the_argument(name):
    loss_fn, (first, second) = ALL_LOSSES[name]
    good = _spec((4, 8))
    cases = [
        ((_spec((8,)), good), first, "rank 2"),
        ((good, _spec((4, 8, 1))), second, "rank 2"),
        ((good, _spec((4, 9))), f"`{first}` and `{second}`", "same shape"),
        ((_spec((5, 8)), good), f"`{first}` and `{second}`", "same shape"),
        ((good, _spec((4, 8), jnp.int32)), second, "floating-point"),
        ((_spec((0, 8)), _spec((0, 8))), first, "batch"),
        ((_spec((4, 0)), _spec((4, 0))), first, "dimension"),
    ]
    for args, arg_name, what in cases:
        # eval_shape traces without computing: the error comes at trace time.
        with pytest.raises(ValueError, match=f"(?s){arg_name}.*{what}"):
            jax.eval_shape(loss_fn, *args)
    # And under jit, with concrete arrays.
    with pytest.raises(ValueError, match=first):
        jax.jit(loss_fn)(jnp.ones((8,)), jnp.ones((4, 8)))


@pytest.mark.parametrize("name", ["vicreg", "barlow_twins"])
def test_batch_of_one_raises_for_batch_statistics(name):
    loss_fn, _ = ALL_LOSSES[name]
    with pytest.raises(ValueError, match="(?s)`z_a`.*batch of 1.*at least 2"):
        jax.eval_shape(loss_fn, _spec((1, 8)), _spec((1, 8)))
    jax.eval_shape(loss_fn, _spec((2, 8)), _spec((2, 8)))  # the smallest valid batch


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_batch_of_one_is_fine_for_cosine_losses(name):
    loss_fn, _ = ALL_LOSSES[name]
    q = jnp.asarray([[1.0, 2.0]])
    assert np.isfinite(float(loss_fn(q, q)))


def test_docstring_examples():
    result = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


# --------------------------------------------------------------------------------------------
# `python tests/test_losses.py`: the largest error of each loss against its reference.
# --------------------------------------------------------------------------------------------
def _print_error_table() -> None:
    for name in sorted(COSINE_LOSSES):
        for shape in SHAPES:
            for dtype in DTYPES:
                test_cosine_loss_matches_reference(name, shape, dtype)
    for shape in SHAPES:
        for dtype in DTYPES:
            for gram in (True, False):
                test_vicreg_matches_reference(shape, dtype, gram=gram)
                test_barlow_twins_matches_reference(shape, dtype, gram=gram)
    print(f"{'loss':14} {'dtype':9} {'quantity':13} {'max abs err':>12} {'max rel err':>12}")
    for (loss, dtype, quantity), (abs_err, rel_err) in sorted(ERRORS.items()):
        print(f"{loss:14} {dtype:9} {quantity:13} {abs_err:12.3e} {rel_err:12.3e}")


if __name__ == "__main__":
    _print_error_table()
