"""Digests that let a checkpoint prove it is the state that was saved.

`array_digests` runs where the arrays live (one jitted pass over the device memory, no copy to the
host; for a small state on the CPU backend of a single process, where device memory is host memory, the
same integer arithmetic in NumPy, which needs no compilation for each state's shapes): each element's
bits, mixed with its position by a murmur3-style finaliser, summed modulo 2**32 in two independent lanes,
give a 64-bit digest per array. A sum does not depend on the order it is taken in, so the digest is the
same on any mesh and any sharding (a run restored on another topology verifies as well), and any change
of one element, or two elements swapped, changes it. Integer arithmetic, so it is exact on every backend.
`iterator_digest` is a SHA-256 of the data iterator's state.
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


def _mix(h, c2: int, c3: int, xp=jnp):
    """murmur3's finaliser on uint32 words (`xp`: jax.numpy or numpy, whose uint32 arithmetic wraps alike)."""
    h = h ^ (h >> 16)
    h = h * xp.uint32(c2)
    h = h ^ (h >> 13)
    h = h * xp.uint32(c3)
    return h ^ (h >> 16)


def _lanes(words, position, xp=jnp):
    return [xp.sum(_mix(words ^ (position * xp.uint32(c1)) ^ xp.uint32(c2), c2, c3, xp), dtype=xp.uint32)
            for c1, c2, c3 in _LANES]


def _digest(x: jax.Array) -> jax.Array:
    words = _words(x)
    return jnp.stack(_lanes(words, _position(words.shape)))


def _host_digest(x: np.ndarray) -> np.ndarray:
    """`_digest` in NumPy: the same words, positions and lanes, so the same 64 bits."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        words = x.astype(np.uint32)
    elif x.dtype.itemsize == 4:
        words = x.view(np.uint32)
    elif x.dtype.itemsize < 4:
        words = x.view({1: np.uint8, 2: np.uint16}[x.dtype.itemsize]).astype(np.uint32)
    else:  # (..., 2) for 8-byte types, as lax.bitcast_convert_type splits them
        words = x.reshape(x.shape + (1,)).view(np.uint32)
    size = words.size
    position = (np.arange(size, dtype=np.uint32) if size <= 2**32 else
                (np.arange(size, dtype=np.uint64) % 2**32).astype(np.uint32)).reshape(words.shape)
    with np.errstate(over="ignore"):
        return np.stack(_lanes(words, position, np))


@jax.jit
def _digests(flat: dict) -> dict:
    return {k: _digest(v) for k, v in flat.items()}


# Up to this many bytes in all, on the host, NumPy hashes a state faster than XLA compiles the jitted pass for
# its shapes (1.5-3 s on 2 CPU cores for a tiny model); beyond, the compiled pass (multi-threaded, fused) wins.
HOST_DIGEST_BYTES = 64 << 20


def _on_host(arrays: dict) -> bool:
    """Whether every array is in this process's host memory (NumPy, or jax arrays on the CPU backend that this
    process holds whole: a multi-process run's arrays are not) and the state is small (`HOST_DIGEST_BYTES`)."""
    small = sum(np.asarray(v).nbytes if not isinstance(v, jax.Array) else v.nbytes
                for v in arrays.values()) <= HOST_DIGEST_BYTES
    return small and all(not isinstance(v, jax.Array) or (v.is_fully_addressable and all(
        d.platform == "cpu" for d in v.sharding.device_set)) for v in arrays.values())


def array_digests(flat: dict) -> dict[str, str]:
    """{path: 64-bit hex digest} of a flat {path: array} dict, computed where the arrays live."""
    if _on_host(flat):
        out = {k: _host_digest(np.asarray(v)) for k, v in flat.items()}
    else:
        out = jax.device_get(_digests({k: jnp.asarray(v) for k, v in flat.items()}))
    return {k: "".join(f"{int(w):08x}" for w in np.asarray(v)) for k, v in sorted(out.items())}


def iterator_digest(state) -> str:
    """SHA-256 of a data iterator's state (grain's get_state()), canonically serialised."""
    text = json.dumps(state, sort_keys=True, default=lambda o: o.decode("latin-1") if isinstance(o, bytes) else str(o))
    return hashlib.sha256(text.encode()).hexdigest()


def differing(recorded: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The paths whose digests differ, are missing, or were not recorded."""
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
