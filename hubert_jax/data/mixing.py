"""WavLM's utterance mixing (denoising masked speech modeling, arXiv 2110.13900 §III-B): some utterances of
each global batch get a segment of another utterance of the same batch (or of a noise file) added at a
random offset, scaled to an energy ratio drawn from a range; the targets stay the primary utterance's.

The method and its settings are those the WavLM authors point to for reproducing it (unilm issue #675:
UniSpeech's utterance_mixing_dataset): each utterance is mixed with probability `prob` (0.2); the segment
is shorter than `max_share` (1/2) of the primary; the primary-to-secondary energy ratio is uniform in
`energy_db` ((-5, 5) dB) for speech and in `noise_db` ((-5, 20) dB) for noise, which a mixed utterance gets
with probability `noise_prob` when a noise manifest is given. Here the ratio is measured on the primary's
real samples and on the added segment itself, so a mixture's ratio is exactly the one drawn.

Every draw comes from the seed and the row's position in its global batch, and the partner is another row
of the same global batch (of the same bucket when batches are bucketed), read and cropped as its own host
reads it: a resumed run mixes what an uninterrupted one would, and N hosts mix what one host would.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_STREAM = 0x6D6978  # keeps the mixing draws apart from the crops' (same seed and position)


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """WavLM's utterance mixing: how often, how long a segment, at what energy ratio, and noise files."""
    prob: float = 0.2  # share of the utterances that are mixed
    max_share: float = 0.5  # the added segment is shorter than this share of the primary's samples
    energy_db: tuple[float, float] = (-5.0, 5.0)  # primary / secondary-utterance energy, dB, uniform
    noise_manifest: str = ""  # noise files (a manifest); empty: speech only
    noise_prob: float = 0.0  # with noise files: share of the mixed utterances that get noise instead
    noise_db: tuple[float, float] = (-5.0, 20.0)  # primary / noise energy, dB, uniform

    def __post_init__(self):
        for name in ("prob", "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"config.mix.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.max_share <= 1.0:
            raise ValueError(f"config.mix.max_share: expected a share in (0, 1], got {self.max_share}")
        for name in ("energy_db", "noise_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"config.mix.{name}: expected (low, high) dB, got {getattr(self, name)}")
        if self.noise_prob > 0 and not self.noise_manifest:
            raise ValueError("config.mix.noise_prob > 0 needs config.mix.noise_manifest (the noise files)")


def mix_rng(seed: int, *position: int) -> np.random.Generator:
    """The mixing draws of the row at `position` (its global batch and row, however batches are counted)."""
    return np.random.default_rng([seed, _STREAM, *position])


class Noise:
    """The noise files of a manifest, read whole when drawn."""

    def __init__(self, manifest: str):
        from hubert_jax.data.manifest import check_files_exist, read_manifest

        self.manifest = manifest
        self.entries = read_manifest(manifest)
        if not self.entries:
            raise ValueError(f"{manifest}: no noise files (config.mix.noise_manifest)")
        check_files_exist(manifest, self.entries)
        from hubert_jax.data.audio import AudioError, num_samples

        unreadable = [e.path for e in self.entries if not e.path.startswith("tfds://") and num_samples(e.path) is None]
        if unreadable:  # checked at start, not when first drawn hours in
            raise AudioError(f"{manifest} (config.mix.noise_manifest): {len(unreadable)} noise file(s) cannot be "
                             f"read as audio: {', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''}")

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One noise file's audio, picked by `rng`."""
        from hubert_jax.data.manifest import read_entry_audio

        return read_entry_audio(self.manifest, self.entries[int(rng.integers(len(self.entries)))], normalize=False)


class Mixer:
    """Mixes rows of one global batch: `mix(row, rows, rng, partner)` where `partner(j)` is row j of the
    same global batch, as its own host makes it."""

    def __init__(self, config: MixConfig, *, normalize: bool = False):
        self.config, self.normalize = config, normalize
        self.noise = Noise(config.noise_manifest) if config.noise_manifest else None

    def mix(self, example: dict, row: int, rows: int, rng: np.random.Generator, partner) -> dict:
        """The example with another utterance of the batch (or noise) added to part of it, as WavLM's denoising
        pretraining does; `mixed` says whether it was."""
        cfg = self.config
        chosen = rng.random() < cfg.prob
        if not chosen or (rows < 2 and self.noise is None):
            return dict(example, mixed=np.int32(0))
        if self.noise is not None and (rows < 2 or rng.random() < cfg.noise_prob):
            secondary, low_high = self.noise.draw(rng), cfg.noise_db
        else:
            other = int(rng.integers(rows - 1))
            other += other >= row  # any row but this one
            theirs = partner(other)
            secondary, low_high = theirs["input_values"][theirs["attention_mask"] > 0], cfg.energy_db
        return mix_into(example, secondary, rng, max_share=cfg.max_share, energy_db=low_high,
                        normalize=self.normalize)


def mix_into(example: dict, secondary: np.ndarray, rng: np.random.Generator, *, max_share: float,
             energy_db: tuple[float, float], normalize: bool = False) -> dict:
    """`example` with a segment of `secondary` added at a random offset of its real samples: at most
    ceil(max_share * n) - 1 samples of the primary's n (and no more than `secondary` has), scaled so that
    the primary's mean energy over the segment's is 10^(r/10), r uniform in `energy_db`. The labels, the
    attention mask and the padding are the primary's."""
    values, mask = example["input_values"], example["attention_mask"]
    n = int(mask.sum())
    longest = min(max(math.ceil(max_share * n) - 1, 0), len(secondary))
    length = int(rng.integers(0, longest + 1))
    ratio_db = float(rng.uniform(*energy_db))
    source_start = int(rng.integers(0, len(secondary) - length + 1))
    target_start = int(rng.integers(0, n - length + 1))
    segment = secondary[source_start: source_start + length].astype(np.float64)
    primary_energy = float(np.mean(np.square(values[:n], dtype=np.float64))) if n else 0.0
    segment_energy = float(np.mean(np.square(segment))) if length else 0.0
    if length == 0 or segment_energy == 0.0 or primary_energy == 0.0:
        return dict(example, mixed=np.int32(0))
    scale = math.sqrt(primary_energy / (segment_energy * 10.0 ** (ratio_db / 10.0)))
    out = values.copy()
    out[target_start: target_start + length] += (scale * segment).astype(np.float32)
    if normalize:  # the mixture as the model is fed every waveform: layer-normalised over its real samples
        real = out[:n].astype(np.float64)
        out[:n] = ((real - real.mean()) / math.sqrt(real.var() + 1e-5)).astype(np.float32)
    return dict(example, input_values=out, mixed=np.int32(1))
