"""Which utterances a k-means fit sees: a fraction of the utterances drawn without replacement from a seed, as
fairseq's `learn_kmeans.py --percent` samples them (whole utterances, not scattered frames).

The one source for `dump --percent` (only the sample's features are computed and kept: no full dump) and for
`kmeans --percent` (the same utterances' frames of a full dump), so the two fit the same frames."""

from __future__ import annotations

import math

import numpy as np


def sample_utterances(count: int, percent: float, seed: int) -> np.ndarray:
    """Ascending indices of ceil(count * percent) of `count` utterances (all of them for percent 1)."""
    if not 0 < percent <= 1:
        raise ValueError(f"--percent {percent}: expected a fraction of the utterances in (0, 1] (0.1 is 10%)")
    if percent == 1:
        return np.arange(count, dtype=np.int64)
    take = min(count, math.ceil(count * percent))
    return np.sort(np.random.default_rng(seed).choice(count, take, replace=False)).astype(np.int64)


def frame_rows(lengths, utterances: np.ndarray) -> np.ndarray:
    """The rows of the given utterances' frames in features concatenated in utterance order (ascending int64)."""
    lengths = np.asarray(lengths, np.int64)
    counts = lengths[utterances]
    starts = (np.cumsum(lengths) - lengths)[utterances]
    # each utterance's run start, start + 1, ...: a global arange shifted per run
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(int(counts.sum()), dtype=np.int64)
