"""Label-quality metrics of the HuBERT paper (section IV-G): phone purity, cluster purity and PNMI,
from frame-aligned phone labels and cluster labels."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelQuality:
    """How well frame labels match phones (HuBERT paper, section 4.3)."""
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
    """Purities and PNMI of a (phones, clusters) co-occurrence count matrix."""
    p = counts / counts.sum()
    py, pz = p.sum(1), p.sum(0)
    phone_purity = float(p.max(0).sum())  # sum_z p(z) max_y p(y|z) = sum_z max_y p(y, z)
    cluster_purity = float(p.max(1).sum())
    nz = p > 0
    mutual = float(np.sum(p[nz] * np.log(p[nz] / (py[:, None] * pz[None, :])[nz])))
    h_y = float(-np.sum(py[py > 0] * np.log(py[py > 0])))
    return LabelQuality(phone_purity, cluster_purity, mutual / h_y if h_y > 0 else 0.0, int(counts.sum()))


def quality_of_km_file(km: str, phones: str, manifest: str, label_rate: int = 100) -> LabelQuality:
    """A `.km` file (at 100 Hz, or 50 Hz for model features) against 100 Hz frame-level phone ids."""
    from hubert_jax.data.manifest import read_int_labels, read_manifest
    from hubert_jax.labels.mfcc import num_frames

    if label_rate not in (100, 50):
        raise ValueError(f"label rate {label_rate}: expected 100 (MFCC) or 50 (model features)")
    frames = [num_frames(e.num_samples) for e in read_manifest(manifest)]
    phone_labels = read_int_labels(phones, frames)
    ratio = 100 // label_rate
    km_frames = [(-(-f // ratio)) for f in frames] if ratio > 1 else frames
    # model features at 50 Hz may differ from MFCC frame counts by a frame or two (conv padding)
    clusters = read_int_labels(km, km_frames, tolerance=2 if ratio > 1 else 0)
    if ratio > 1:
        clusters = [np.repeat(c, ratio)[: len(p)] for c, p in zip(clusters, phone_labels)]
        clusters = [np.pad(c, (0, len(p) - len(c)), mode="edge") for c, p in zip(clusters, phone_labels)]
    return label_quality(joint_counts(phone_labels, clusters))
