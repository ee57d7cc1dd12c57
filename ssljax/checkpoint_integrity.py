"""Fingerprints of a checkpointed state: a checksum per array and the finiteness of each.

A checkpoint whose bytes were changed on disk (a flipped bit, a bad sector, a copy gone wrong)
can still decode, into values that are silently wrong. So every checkpoint stores, beside the
state, a checksum of each array's bits computed on device when it is saved; a restore
recomputes them and refuses the checkpoint when any differs. Both sides run the same jitted
reduction on the arrays where they live (sharded or not, on any number of hosts), so only one
32-bit number per array crosses to the host, never the arrays themselves.

The checksum is a position-weighted sum of the array's words modulo 2**32, with an odd weight
per position: changing any one word always changes it, and independent random changes leave it
equal with probability 2**-32. It guards against accidents, not against an adversary.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
# Knuth's multiplicative-hash constant: spreads consecutive positions over the 32-bit range.
_GOLDEN = np.uint32(0x9E3779B1)


def path_name(key_path: tuple) -> str:
    """``'params/backbone/conv/kernel'`` for a pytree key path (dict keys or attribute names)."""
    parts = []
    for key in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (narrower types widened, 64-bit ones split in two)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    # 8 bytes: bitcast adds a trailing dimension of two words.
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
    words = _as_words(x)
    # Linear position of each word, from iotas (no reshape, so a sharded array stays sharded).
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(words.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, dim)
        position = position + iota * np.uint32(stride % 2**32)
        stride *= words.shape[dim]
    weight = (position * _GOLDEN) | np.uint32(1)
    return jnp.sum(words * weight, dtype=jnp.uint32)


def _finite(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.ones((), jnp.bool_)


@functools.partial(jax.jit)
def _summaries(tree: PyTree) -> tuple[PyTree, PyTree]:
    return jax.tree.map(_checksum, tree), jax.tree.map(_finite, tree)


def _arrays_only(tree: PyTree) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        path_name(path): leaf
        for path, leaf in leaves
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic))
    }


def summarize(tree: PyTree) -> tuple[dict[str, int], list[str]]:
    """Checksums and non-finite arrays of ``tree`` (leaves that are not arrays are ignored).

    Args:
      tree: a pytree of arrays (a train state, or the part of one that was restored).

    Returns:
      ``(checksums, nonfinite)``: ``{path: uint32 checksum}`` and the paths of floating-point
      arrays holding a NaN or an infinity.
    """
    arrays = _arrays_only(tree)
    if not arrays:
        return {}, []
    sums, finite = jax.device_get(_summaries(arrays))
    checksums = {k: int(v) for k, v in sums.items()}
    nonfinite = sorted(k for k, ok in finite.items() if not bool(ok))
    return checksums, nonfinite


def mismatched(checksums: dict[str, int], expected: dict[str, int]) -> list[str]:
    """Paths whose checksum differs from the one stored at save time.

    Arrays the checkpoint stored no checksum for are not compared (a partial restore passes a
    subset of the stored arrays; older checkpoints store none).
    """
    return sorted(k for k, v in checksums.items() if k in expected and int(expected[k]) != v)
