"""Mini-batch k-means in JAX (the HuBERT recipe's MiniBatchKMeans: k-means++ init, mini-batch updates).

Assignments and the per-centroid sums of a batch are one jitted step; give it a mesh and the batch is
sharded over the mesh's devices, so the sums become an all-reduce and features from thousands of hours
never need one device (or host). All randomness comes from `seed`: a NumPy Generator for batch order
and JAX keys for the initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from hubert_jax.labels.features import read_rows, release_pages


@dataclasses.dataclass(frozen=True)
class KMeansConfig:
    """Mini-batch k-means settings: scikit-learn's names, fairseq learn_kmeans.py's defaults."""
    n_clusters: int
    batch_size: int = 10000
    max_iter: int = 100  # passes over the data, as scikit-learn counts them
    n_init: int = 20  # k-means++ trials on the init sample; the lowest inertia wins
    init_size: int | None = None  # points for the init trials (default 3 * batch_size, like scikit-learn)
    max_no_improvement: int | None = 100  # stop after this many batches without a better smoothed inertia
    seed: int = 0


def _sq_dists(x, centers):
    return (jnp.sum(x * x, 1, keepdims=True) - 2.0 * x @ centers.T + jnp.sum(centers * centers, 1)[None, :])


def assign(x, centers):
    """(labels, squared distance to the nearest centre) for each row of x."""
    d2 = _sq_dists(x, centers)
    return jnp.argmin(d2, axis=1), jnp.maximum(jnp.min(d2, axis=1), 0.0)


def _kmeans_plus_plus(key, x, x_sq, k: int):
    trials = 2 + int(np.log(k))
    first_key, key = jax.random.split(key)
    first = x[jax.random.randint(first_key, (), 0, x.shape[0])]
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    d2 = jnp.maximum(x_sq - 2.0 * x @ first + jnp.sum(first * first), 0.0)

    def body(i, state):
        centers, d2 = state
        # inverse-CDF sampling (as scikit-learn): a few uniforms instead of Gumbel noise for every point
        cdf = jnp.cumsum(d2)
        u = jax.random.uniform(jax.random.fold_in(key, i), (trials,)) * cdf[-1]
        idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), x.shape[0] - 1)
        cand = x[idx]
        cand_d2 = jnp.maximum(x_sq[:, None] - 2.0 * x @ cand.T + x_sq[idx][None, :], 0.0)
        cand_d2 = jnp.minimum(d2[:, None], cand_d2)  # (m, trials)
        best = jnp.argmin(cand_d2.sum(0))
        return centers.at[i].set(cand[best]), cand_d2[:, best]

    centers, d2 = jax.lax.fori_loop(1, k, body, (centers, d2))
    return centers, d2.sum()


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_plus_plus(keys, x, k: int):
    """Greedy k-means++ seeding on x (m, d), as scikit-learn does it: at each step 2 + log(k) candidates are
    drawn with probability proportional to D(x)^2 and the one that lowers the potential most is kept.
    One run per key, all at once; returns the centres of the run with the lowest inertia on x."""
    x_sq = jnp.sum(x * x, axis=1)
    centers, scores = jax.vmap(_kmeans_plus_plus, in_axes=(0, None, None, None))(keys, x, x_sq, k)
    return centers[jnp.argmin(scores)]


@dataclasses.dataclass
class _State:
    centers: jax.Array
    counts: jax.Array
    smoothed: jax.Array  # exponentially smoothed per-sample batch inertia (scikit-learn's early stop)
    best: jax.Array
    stale: jax.Array  # batches since `best` last improved
    stopped: jax.Array


jax.tree_util.register_dataclass(_State, data_fields=[f.name for f in dataclasses.fields(_State)], meta_fields=[])


@functools.partial(jax.jit, static_argnames=("max_no_improvement",), donate_argnums=(0,))
def minibatch_step(state: _State, batch, weights, alpha, max_no_improvement: int | None):
    """One scikit-learn-style mini-batch update; rows with weight 0 are padding.

    Each centre moves to the running mean of every point ever assigned to it,
    c <- (c * n + sum_batch) / (n + n_batch). Once the smoothed inertia has not improved for
    `max_no_improvement` batches the state freezes, so the host need not check after every step."""
    labels, d2 = assign(batch, state.centers)
    k = state.centers.shape[0]
    sums = jax.ops.segment_sum(batch * weights[:, None], labels, num_segments=k)
    n = jax.ops.segment_sum(weights, labels, num_segments=k)
    new_counts = state.counts + n
    moved = (state.centers * state.counts[:, None] + sums) / jnp.maximum(new_counts, 1.0)[:, None]
    centers = jnp.where((n > 0)[:, None], moved, state.centers)
    value = jnp.sum(d2 * weights) / jnp.sum(weights)
    smoothed = jnp.where(jnp.isinf(state.smoothed), value, state.smoothed * (1 - alpha) + value * alpha)
    improved = smoothed < state.best
    stale = jnp.where(improved, 0, state.stale + 1)
    stopped = state.stopped | (False if max_no_improvement is None else stale >= max_no_improvement)
    keep = state.stopped  # a stopped run changes nothing any more
    return _State(jnp.where(keep, state.centers, centers), jnp.where(keep, state.counts, new_counts),
                  jnp.where(keep, state.smoothed, smoothed), jnp.where(keep, state.best, jnp.minimum(smoothed, state.best)),
                  jnp.where(keep, state.stale, stale), stopped)


def _batch_sharding(mesh):
    if mesh is None:
        return None
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def _place_rows(features, idx: np.ndarray, sharding, read=None):
    """features[idx] as a batch, padded with weight-0 rows to a multiple of the device count, and its
    weights. On a mesh every host reads only the rows of its own devices (make_array_from_callback), so a
    mesh over many hosts splits the reading as well as the arithmetic. `read(rows)` (ascending rows; default
    read_rows from `features`) supplies the rows, e.g. from a `_Prefetcher`'s group."""
    n, d = len(idx), features.shape[1]
    read = read or functools.partial(read_rows, features)
    if sharding is None:  # no padding, and the rows straight to the device
        return jnp.asarray(read(idx)), jnp.ones((n,), jnp.float32)
    total = _padded(n, sharding)
    weights = (np.arange(total) < n).astype(np.float32)

    def rows(index) -> np.ndarray:
        positions = np.arange(total)[index[0]]
        out = np.zeros((len(positions), d), np.float32)
        real = positions < n
        if real.any():  # ascending rows, their pages released as they are read
            out[real] = read(idx[positions[real]])
        return out

    return (jax.make_array_from_callback((total, d), sharding, rows),
            jax.make_array_from_callback((total,), sharding, lambda index: weights[index]))


def _padded(n: int, sharding) -> int:
    devices = 1 if sharding is None else sharding.mesh.size
    return n + (-n) % devices


# The rows of the next mini-batches are read together, up to this many bytes: one ascending pass over the
# pages a group's batches touch instead of one per batch. A batch of 10,000 rows touches about half the pages
# of a 12 h MFCC sample, and faulting them in again for every batch (the pages are released as they are read,
# so that RSS stays flat) took 5.5 s of a 13.7 s fit; 39-d batches are read 20 at a time, 768-d ones alone.
PREFETCH_BYTES = 32 << 20


class _Prefetcher:
    """Reads the rows this host needs for several batches in one ascending pass (`read_rows`, pages released
    as it goes) into one buffer reused group after group; `take(rows)` gives any of the last group's rows."""

    def __init__(self, features, batch_size: int, group: int, sharding):
        self.features = features
        total = _padded(batch_size, sharding)
        if sharding is None:
            self.mine = np.arange(total)
        else:  # the batch positions of this host's devices, as _place_rows' callbacks will ask for them
            spots = sharding.addressable_devices_indices_map((total, features.shape[1])).values()
            self.mine = np.unique(np.concatenate([np.arange(total)[index[0]] for index in spots]))
        self.buffer = np.empty((group * len(self.mine), features.shape[1]), np.float32)
        self.rows = np.zeros((0,), np.int64)

    def load(self, batches: list[np.ndarray]) -> None:
        self.rows = np.unique(np.concatenate([idx[self.mine[self.mine < len(idx)]] for idx in batches]))
        read_rows(self.features, self.rows, out=self.buffer[:len(self.rows)])

    def take(self, rows: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.rows, rows)
        if not np.array_equal(self.rows[np.minimum(at, len(self.rows) - 1)], rows):
            raise AssertionError("k-means: a batch asked for rows outside its prefetched group")
        return self.buffer[at]


@jax.jit
def _nearest(x, centers):
    return assign(x, centers)[0].astype(jnp.int32)


@jax.jit
def _weighted_inertia(x, weights, centers):
    return jnp.sum(assign(x, centers)[1] * weights)


def inertia(features, centers, *, rows: np.ndarray | None = None, chunk: int = 65536, mesh=None) -> float:
    """Sum of squared distances to the nearest centre over `rows` (ascending; default: all), read and computed
    `chunk` rows at a time (over the mesh, if given): memory is one chunk, whatever the sample."""
    total = 0.0
    sharding = _batch_sharding(mesh)
    centers = _replicate(jnp.asarray(centers, jnp.float32), mesh)
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    for start in range(0, len(rows), chunk):
        x, w = _place_rows(features, rows[start: start + chunk], sharding)
        total += float(_weighted_inertia(x, w, centers))
    return total


class NonFiniteFeatures(ValueError):
    """Frames (their row indices) with NaN or infinite values, which have no nearest centroid."""

    def __init__(self, rows: np.ndarray):
        super().__init__(f"{len(rows)} feature frames are NaN or infinite (rows {rows[:5].tolist()}...)")
        self.rows = rows


def predict(features, centers, *, chunk: int = 65536, start: int = 0, stop: int | None = None,
            progress=None) -> np.ndarray:
    """Nearest-centre label for rows [start, stop) (default: all), in chunks; `progress` (a
    hubert_jax.progress.Progress over the rows) advances per chunk."""
    stop = len(features) if stop is None else stop
    centers = jnp.asarray(centers, jnp.float32)
    out, buffers = [], {}
    for s in range(start, stop, chunk):
        n = min(s + chunk, stop) - s
        # rows padded to a power of two (at most `chunk`): calls of any size reuse a few compiled shapes, and
        # each shape one buffer (a new buffer per call grows the heap of a long run: 1.5x from 1 h to 12 h)
        size = min(chunk, 1 << max(0, n - 1).bit_length())
        padded = buffers.setdefault(size, np.empty((size, features.shape[1]), np.float32))
        padded[:n] = features[s: s + n]
        padded[n:] = 0.0
        finite = np.isfinite(padded[:n]).all(axis=1)
        if not finite.all():
            raise NonFiniteFeatures(s + np.flatnonzero(~finite))
        out.append(np.asarray(_nearest(padded, centers))[:n])
        if progress is not None:
            progress.update(n)
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def label_utterances(features, lengths: list[int], centers, *, first: int = 0, last: int | None = None,
                     chunk: int = 16384, progress=None):
    """Each utterance's labels (int32, one array per utterance) for utterances [first, last), in order,
    predicted a group of whole utterances (about `chunk` frames) at a time, so that only one group's labels
    are held. 16,384 frames a group keeps the heap flat over a long run (peak anonymous memory 157 MB at 1 h
    and 12 h of MFCC frames; 65,536 grew it 1.3-1.5x). NonFiniteFeatures names the bad rows over all of `features`."""
    last = len(lengths) if last is None else last
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    u = first
    while u < last:
        v = u + 1
        while v < last and offsets[v + 1] - offsets[u] <= chunk:
            v += 1
        labels = predict(features, centers, chunk=chunk, start=int(offsets[u]), stop=int(offsets[v]),
                         progress=progress)
        release_pages(features)  # RSS holds one group's pages, not every page read so far
        yield from np.split(labels, np.cumsum(lengths[u:v])[:-1])
        u = v


def _replicate(tree, mesh):
    if mesh is None:
        return tree
    from jax.sharding import NamedSharding, PartitionSpec

    from hubert_jax.sharding import from_host

    replicated = NamedSharding(mesh, PartitionSpec())
    return from_host(jax.device_get(tree), jax.tree.map(lambda _: replicated, tree))


def fit(features, config: KMeansConfig, *, rows: np.ndarray | None = None, mesh=None,
        verbose: bool = False, progress=None) -> np.ndarray:
    """Mini-batch k-means on the (N, d) features (an array, a memory map or `features.Rows`), or on the
    subset `rows` of them; returns (n_clusters, d) float32 centroids.

    With a mesh each batch is split over its devices; a mesh over several hosts (jax.distributed) has every
    host read only its part of each batch. Every host draws the same batches from the same seed.
    `progress(total)` makes a hubert_jax.progress.Progress over the mini-batches, which the fit advances."""
    rows = None if rows is None else np.sort(np.asarray(rows, np.int64))
    n = len(features) if rows is None else len(rows)
    pick = (lambda i: i) if rows is None else (lambda i: rows[i])  # no index array for all the rows
    if n < config.n_clusters:
        raise ValueError(f"{n} feature rows for {config.n_clusters} clusters: need at least as many rows")
    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    sharding = _batch_sharding(mesh)

    init_size = min(n, config.init_size or 3 * config.batch_size)
    init_rows = rng.choice(n, init_size, replace=False) if init_size < n else np.arange(n)
    ascending = np.argsort(init_rows, kind="stable")  # read in file order, used in the drawn order
    init_sample = np.empty((len(init_rows), features.shape[1]), np.float32)
    init_sample[ascending] = read_rows(features, pick(init_rows[ascending]))
    keys = jax.random.split(key, config.n_init)
    best = kmeans_plus_plus(keys, jnp.asarray(init_sample), config.n_clusters)  # on each host, identically
    # the step's own output types (strong float32), so that the second step does not compile it again
    state = _State(best, jnp.zeros((config.n_clusters,), jnp.float32), jnp.asarray(jnp.inf, jnp.float32),
                   jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0), jnp.asarray(False))
    state = _replicate(state, mesh)

    batch_size = min(config.batch_size, n)
    steps = max(1, config.max_iter * n // batch_size)
    alpha = jnp.float32(min(1.0, batch_size * 2.0 / (n + 1)))
    index = np.int32 if n < 2 ** 31 else np.int64  # 4 B a row; the same permutation as rng.permutation(n)
    order, cursor = rng.permutation(np.arange(n, dtype=index)), 0

    def draw() -> np.ndarray:  # the next batch's rows (ascending): the draws of one batch at a time, in order
        nonlocal order, cursor
        if cursor + batch_size > n:
            order, cursor = rng.permutation(np.arange(n, dtype=index)), 0
        cursor += batch_size
        return pick(np.sort(order[cursor - batch_size: cursor]).astype(np.int64))

    group = max(1, PREFETCH_BYTES // (batch_size * features.shape[1] * 4))
    if jax.process_count() > 1:
        # one batch at a time over several processes, as before the grouped reads: a 2-process fit with every
        # batch read at once (its steps dispatched back to back) hung once under a loaded CI machine's full
        # suite (tests/test_scale.py, stop 39) and did not alone; the cause is not known
        group = 1
    prefetcher, upcoming = _Prefetcher(features, batch_size, group, sharding), []
    bar = progress(steps) if progress is not None else None
    for step in range(steps):
        if not upcoming:  # rows drawn ahead are only read ahead: the batches and their order are unchanged
            upcoming = [draw() for _ in range(min(group, steps - step))]
            prefetcher.load(upcoming)
        idx = upcoming.pop(0)
        batch, weights = _place_rows(features, idx, sharding, prefetcher.take)
        state = minibatch_step(state, batch, weights, alpha, config.max_no_improvement)
        if bar is not None:
            bar.update()
        if step % 50 == 49 and bool(state.stopped):  # a sync every 50 batches, not every batch
            if verbose:
                print(f"k-means: converged within {step + 1} batches")
            break
    if bar is not None:
        bar.close()
    centers = np.asarray(state.centers, np.float32)
    if not np.isfinite(centers).all():  # never handed on: every frame would get the same label
        raise ValueError(f"k-means: {int((~np.isfinite(centers).all(1)).sum())} centroids are not finite (the "
                         f"features hold NaN or infinite values)")
    return centers


def save_centroids(path: str, centers: np.ndarray) -> None:
    """Write centroids (clusters, dim) as float32 .npy atomically."""
    tmp = f"{path}.tmp.npy"
    np.save(tmp, np.asarray(centers, np.float32))
    os.replace(tmp, path)  # never a half-written file under the real name


def load_centroids(path: str) -> np.ndarray:
    """Centroids saved by save_centroids (ValueError naming the file otherwise)."""
    try:
        centers = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a centroid file saved by hubert-jax ({e})") from e
    if centers.ndim != 2:
        raise ValueError(f"{path}: expected (clusters, dims) centroids, got shape {centers.shape}")
    return centers
