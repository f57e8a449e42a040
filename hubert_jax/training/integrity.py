"""Digests that let a checkpoint prove it is the state that was saved.

`array_digests` runs where the arrays live (one jitted pass over the device memory, no copy to the
host): each element's bits, mixed with its position by a murmur3-style finaliser, summed modulo 2**32
in two independent lanes, give a 64-bit digest per array. A sum does not depend on the order it is
taken in, so the digest is the same on any mesh and any sharding (a run restored on another topology
verifies as well), and any change of one element, or two elements swapped, changes it. Integer
arithmetic, so it is exact on every backend. `iterator_digest` is a SHA-256 of the data iterator's state.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

_LANES = ((0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35), (0x7FEB352D, 0x846CA68B, 0x27D4EB2F))


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (sub-word types widened, 64-bit types split in two)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize
    if width == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if width < 4:
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[width]).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2) for 8-byte types


def _position(shape) -> jax.Array:
    """Row-major element index modulo 2**32, built from iotas (no reshape, so no resharding)."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


def _mix(h: jax.Array, c2: int, c3: int) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(c2)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(c3)
    return h ^ (h >> 16)


def _digest(x: jax.Array) -> jax.Array:
    words = _words(x)
    position = _position(words.shape)
    lanes = [jnp.sum(_mix(words ^ (position * jnp.uint32(c1)) ^ jnp.uint32(c2), c2, c3), dtype=jnp.uint32)
             for c1, c2, c3 in _LANES]
    return jnp.stack(lanes)


@jax.jit
def _digests(flat: dict) -> dict:
    return {k: _digest(v) for k, v in flat.items()}


def array_digests(flat: dict) -> dict[str, str]:
    """{path: 64-bit hex digest} of a flat {path: array} dict, computed on the arrays' devices."""
    arrays = {k: jnp.asarray(v) for k, v in flat.items()}
    out = jax.device_get(_digests(arrays))
    return {k: "".join(f"{int(w):08x}" for w in np.asarray(v)) for k, v in sorted(out.items())}


def iterator_digest(state) -> str:
    """SHA-256 of a data iterator's state (grain's get_state()), canonically serialised."""
    text = json.dumps(state, sort_keys=True, default=lambda o: o.decode("latin-1") if isinstance(o, bytes) else str(o))
    return hashlib.sha256(text.encode()).hexdigest()


def differing(recorded: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The paths whose digests differ, are missing, or were not recorded."""
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
