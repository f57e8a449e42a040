"""Label-quality metrics of the HuBERT paper (section IV-G): phone purity, cluster purity and PNMI,
from frame-aligned phone labels and cluster labels."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelQuality:
    phone_purity: float  # E_z[max_y p(y|z)]: how phonetically pure each cluster is
    cluster_purity: float  # E_y[max_z p(z|y)]: how concentrated each phone is on one cluster
    pnmi: float  # I(y; z) / H(y): the share of phone information the clusters carry
    frames: int


def joint_counts(phones: Sequence[np.ndarray], clusters: Sequence[np.ndarray]) -> np.ndarray:
    """(num_phones, num_clusters) co-occurrence counts over utterances of equal frame counts."""
    if len(phones) != len(clusters):
        raise ValueError(f"{len(phones)} phone label sequences but {len(clusters)} cluster sequences")
    ys, zs = [], []
    for i, (y, z) in enumerate(zip(phones, clusters)):
        y, z = np.asarray(y), np.asarray(z)
        if y.shape != z.shape:
            raise ValueError(f"utterance {i}: {y.shape[0]} phone frames but {z.shape[0]} cluster frames")
        ys.append(y)
        zs.append(z)
    y, z = np.concatenate(ys).astype(np.int64), np.concatenate(zs).astype(np.int64)
    if y.size == 0:
        raise ValueError("no frames to score")
    counts = np.zeros((y.max() + 1, z.max() + 1), np.float64)
    np.add.at(counts, (y, z), 1.0)
    return counts


def label_quality(counts: np.ndarray) -> LabelQuality:
    p = counts / counts.sum()
    py, pz = p.sum(1), p.sum(0)
    phone_purity = float(p.max(0).sum())  # sum_z p(z) max_y p(y|z) = sum_z max_y p(y, z)
    cluster_purity = float(p.max(1).sum())
    nz = p > 0
    mutual = float(np.sum(p[nz] * np.log(p[nz] / (py[:, None] * pz[None, :])[nz])))
    h_y = float(-np.sum(py[py > 0] * np.log(py[py > 0])))
    return LabelQuality(phone_purity, cluster_purity, mutual / h_y if h_y > 0 else 0.0, int(counts.sum()))
