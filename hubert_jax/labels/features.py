"""Dumped features on disk, as fairseq lays them out: `{prefix}.npy` holds every frame (float32) and
`{prefix}.len` the frame count of each utterance, in manifest order."""

from __future__ import annotations

import os

import numpy as np


def save_features(prefix: str, features: list[np.ndarray], dims: int) -> None:
    """Write atomically; the `.len` file goes last, so its presence marks a complete write."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    stacked = np.concatenate([np.asarray(f, np.float32).reshape(-1, dims) for f in features]) if features \
        else np.zeros((0, dims), np.float32)
    np.save(f"{prefix}.tmp.npy", stacked)
    with open(f"{prefix}.len.tmp", "w") as f:
        f.writelines(f"{len(x)}\n" for x in features)
    os.replace(f"{prefix}.tmp.npy", f"{prefix}.npy")
    os.replace(f"{prefix}.len.tmp", f"{prefix}.len")


def load_features(prefix: str, nshard: int = 0) -> tuple[np.ndarray, list[int]]:
    """`{prefix}.npy/.len`, or with nshard > 0 the dump shards `{prefix}_{rank}_{nshard}` in rank order."""
    if nshard > 0:
        parts = [load_features(f"{prefix}_{rank}_{nshard}") for rank in range(nshard)]
        return np.concatenate([p[0] for p in parts]), [n for p in parts for n in p[1]]
    for suffix in (".npy", ".len"):
        if not os.path.exists(prefix + suffix):
            raise FileNotFoundError(f"{prefix}{suffix} not found (write it with `mfcc` or `dump` first)")
    feats = np.load(prefix + ".npy", mmap_mode="r")
    with open(prefix + ".len") as f:
        lengths = [int(line) for line in f]
    if sum(lengths) != len(feats):
        raise ValueError(f"{prefix}.len sums to {sum(lengths)} frames but {prefix}.npy has {len(feats)}")
    return feats, lengths


def split_utterances(feats: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(np.asarray(feats), np.cumsum(lengths)[:-1]) if lengths else []
