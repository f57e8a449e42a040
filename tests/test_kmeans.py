"""JAX mini-batch k-means: quality against scikit-learn, the same centroids on 1 and 8 devices, files."""

import numpy as np
import pytest

from hubert_jax.labels.kmeans import KMeansConfig, fit, inertia, load_centroids, predict, save_centroids
from hubert_jax.sharding import make_mesh


def _blobs(n=20000, k_true=30, d=39, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(k_true, d)[rng.randint(0, k_true, n)] * 3 + rng.randn(n, d)).astype(np.float32)


@pytest.mark.parametrize("k", [20, 40])
def test_inertia_within_one_percent_of_scikit_learn(k):
    # single runs of either land in different local minima (+-5 % here), so compare the mean over seeds
    from sklearn.cluster import MiniBatchKMeans

    x = _blobs()
    ours, theirs = [], []
    for seed in range(3):
        config = KMeansConfig(k, batch_size=2000, max_iter=20, n_init=5, max_no_improvement=100, seed=seed)
        ours.append(inertia(x, fit(x, config)))
        sk = MiniBatchKMeans(n_clusters=k, init="k-means++", batch_size=2000, max_iter=20, n_init=5,
                             max_no_improvement=100, reassignment_ratio=0.0, random_state=seed).fit(x)
        theirs.append(inertia(x, sk.cluster_centers_))
    assert np.mean(ours) <= 1.01 * np.mean(theirs)


def test_eight_devices_give_the_same_centroids_as_one():
    x = _blobs(n=6003)  # not a multiple of the device count: the padding rows must not count
    config = KMeansConfig(16, batch_size=1001, max_iter=5, n_init=3, seed=3)
    one = fit(x, config)
    eight = fit(x, config, mesh=make_mesh({"data": 8}))
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-4)
    assert inertia(x, eight, mesh=make_mesh({"data": 8})) == pytest.approx(inertia(x, one), rel=1e-5)


def test_batches_read_a_group_at_a_time_give_the_centroids_of_one_batch_at_a_time(tmp_path, monkeypatch):
    # rows of a memory-mapped file, a subset of them, epochs that end inside a group, and an early stop
    import hubert_jax.labels.kmeans as kmeans

    np.save(tmp_path / "x.npy", _blobs(n=9000))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = np.flatnonzero(np.random.default_rng(1).random(len(x)) < 0.7)
    config = KMeansConfig(12, batch_size=700, max_iter=60, n_init=2, max_no_improvement=30, seed=5)
    batch_bytes = config.batch_size * x.shape[1] * 4
    read_rows, reads, fits = kmeans.read_rows, {}, {}

    for group in (1, 3, 1000):
        def counted(features, r, *, group=group, **kw):
            reads.setdefault(group, []).append(len(r))
            return read_rows(features, r, **kw)

        monkeypatch.setattr(kmeans, "read_rows", counted)
        monkeypatch.setattr(kmeans, "PREFETCH_BYTES", group * batch_bytes)
        fits[group] = fit(x, config, rows=rows)
        assert max(reads[group][1:]) <= group * config.batch_size  # [0]: the k-means++ sample
    ran = len(reads[1]) - 1  # one read a batch
    assert ran < config.max_iter * len(rows) // config.batch_size  # it stopped early
    assert ran > len(rows) // config.batch_size  # after more than one epoch
    assert len(reads[3]) - 1 == -(-ran // 3) and len(reads[1000]) == 2
    np.testing.assert_array_equal(fits[3], fits[1])
    np.testing.assert_array_equal(fits[1000], fits[1])


def test_predict_save_load_and_errors(tmp_path):
    x = _blobs(n=3000)
    centers = fit(x, KMeansConfig(8, batch_size=500, max_iter=3, n_init=2))
    labels = predict(x, centers, chunk=700)
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(1))
    save_centroids(str(tmp_path / "km.npy"), centers)
    np.testing.assert_array_equal(load_centroids(str(tmp_path / "km.npy")), centers)
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npy: not a centroid file"):
        load_centroids(str(tmp_path / "bad.npy"))
    with pytest.raises(ValueError, match="5 feature rows for 8 clusters"):
        fit(x[:5], KMeansConfig(8))
    # the same seed gives the same centroids
    np.testing.assert_array_equal(centers, fit(x, KMeansConfig(8, batch_size=500, max_iter=3, n_init=2)))
