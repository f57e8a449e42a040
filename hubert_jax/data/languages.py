"""Multilingual sampling (XLSR, arXiv 2006.13979): several manifests, one per language, read as one source
whose utterances come from language l with probability p_l proportional to (n_l / N)^alpha, n_l the
language's audio (samples), N all languages' (alpha 0.5 in XLSR: low-resource languages are drawn more
often than their share, high-resource ones less).

The source has a fixed number of items (default: all languages' utterances together). Item i is drawn
from the seed alone: its language from p, then one of that language's utterances uniformly (with
replacement, as fairseq's resampling of each language's dataset does). So the items are the same on every
host and after a resume, and the pipeline shuffles, crops, buckets and splits them over hosts like any
other source's.
"""

from __future__ import annotations

import numpy as np

from hubert_jax.data.source import Source

_STREAM = 0x6C616E67  # keeps these draws apart from the pipeline's shuffles (same seed)


def language_probabilities(sizes, alpha: float) -> np.ndarray:
    """p_l proportional to (n_l / N)^alpha."""
    sizes = np.asarray(sizes, np.float64)
    if np.any(sizes <= 0):
        raise ValueError(f"every language needs audio: sizes {sizes.tolist()}")
    p = (sizes / sizes.sum()) ** alpha
    return p / p.sum()


class LanguageMix(Source):
    """Random-access source over per-language sources (each with `entries` and `item_buckets`, as
    `LabeledAudio`), `names` naming them in errors and logs."""

    def __init__(self, sources: list, names: list[str], *, alpha: float, seed: int, size: int | None = None):
        if not sources:
            raise ValueError("config.data.languages.manifests: no manifests")
        if not alpha > 0:
            raise ValueError(f"config.data.languages.alpha={alpha}: must be > 0 (XLSR: 0.5; 1 draws in proportion "
                             f"to the hours, towards 0 evenly); at or below 0 the smaller language gets the larger share")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"config.data.languages.manifests: {', '.join(repeated)} listed twice; each language's "
                             f"manifest once")
        self.sources, self.names, self.alpha = list(sources), list(names), alpha
        samples = [sum(e.num_samples for e in s.entries) for s in self.sources]
        self.probabilities = language_probabilities(samples, alpha)
        size = size or sum(len(s) for s in self.sources)
        rng = np.random.default_rng([seed, _STREAM])
        self.language = rng.choice(len(self.sources), size=size, p=self.probabilities).astype(np.int32)
        counts = np.asarray([len(s) for s in self.sources])
        self.utterance = np.floor(rng.random(size) * counts[self.language]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.language)

    def __getitem__(self, index: int):
        return self.sources[int(self.language[index])][int(self.utterance[index])]

    def item_buckets(self, buckets) -> list[int]:
        """The bucket of each item, over every language's source."""
        per_source = [s.item_buckets(buckets) for s in self.sources]
        return [per_source[l][u] for l, u in zip(self.language, self.utterance)]

    def shares(self) -> dict[str, float]:
        """Each language's share of the items (close to its probability)."""
        counts = np.bincount(self.language, minlength=len(self.sources))
        return {n: float(c / len(self)) for n, c in zip(self.names, counts)}
