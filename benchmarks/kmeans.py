"""hubert-jax k-means vs scikit-learn MiniBatchKMeans on the same features, K and recipe settings.

    python benchmarks/kmeans.py [--rows 60000] [--dims 39] [--clusters 50 100] [--seed 0]

Features: a Gaussian mixture shaped like 39-d MFCCs (60 true clusters). Recipe settings from fairseq's
learn_kmeans.py: k-means++, batch 10000, max_iter 100, n_init 20, max_no_improvement 100,
reassignment 0. Times include JAX compilation (a fresh run) and scikit-learn's fit.
"""

import argparse
import time

import numpy as np

from hubert_jax.labels.kmeans import KMeansConfig, fit, inertia


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--dims", type=int, default=39)
    p.add_argument("--clusters", type=int, nargs="+", default=[50, 100])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.RandomState(args.seed)
    x = (rng.randn(60, args.dims)[rng.randint(0, 60, args.rows)] * 3 + rng.randn(args.rows, args.dims))
    x = x.astype(np.float32)
    print(f"{args.rows} x {args.dims} features; baseline: scikit-learn MiniBatchKMeans")
    print(f"{'K':>5} {'sklearn s':>10} {'jax s':>8} {'speed-up':>9} {'sklearn inertia':>16} {'jax inertia':>13} "
          f"{'ratio':>7}")
    for k in args.clusters:
        start = time.perf_counter()
        sk = MiniBatchKMeans(n_clusters=k, init="k-means++", batch_size=10000, max_iter=100, n_init=20,
                             max_no_improvement=100, reassignment_ratio=0.0, random_state=args.seed,
                             compute_labels=False).fit(x)
        t_sk = time.perf_counter() - start
        start = time.perf_counter()
        centers = fit(x, KMeansConfig(k, seed=args.seed))
        t_jax = time.perf_counter() - start
        i_sk, i_jax = inertia(x, sk.cluster_centers_), inertia(x, centers)
        print(f"{k:>5} {t_sk:>10.2f} {t_jax:>8.2f} {t_sk / t_jax:>8.2f}x {i_sk:>16.6g} {i_jax:>13.6g} "
              f"{i_jax / i_sk:>7.4f}")


if __name__ == "__main__":
    main()
