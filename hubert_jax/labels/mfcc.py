"""Kaldi MFCC (torchaudio.compliance.kaldi.mfcc with fairseq's HuBERT options) plus deltas: 39-d at 100 Hz.

fairseq's `dump_mfcc_feature.py` calls kaldi.mfcc(sample_frequency=16000, use_energy=False) on float
audio in [-1, 1], then stacks torchaudio's compute_deltas twice. The defaults that matter: 25 ms Povey
windows every 10 ms with snip_edges, DC removal, pre-emphasis 0.97, no dither, 512-point power spectrum,
23 Kaldi mel bins from 20 Hz to Nyquist, log floored at float32 epsilon, orthonormal DCT to 13
coefficients, cepstral lifter 22. NumPy, vectorised over all frames of a batch of utterances.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

from hubert_jax.lengths import SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class MfccOptions:
    """Kaldi compute-mfcc-feats options (torchaudio.compliance.kaldi's defaults, as fairseq's dump uses)."""
    sample_rate: int = SAMPLE_RATE
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    num_mel_bins: int = 23
    num_ceps: int = 13
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist, as Kaldi
    cepstral_lifter: float = 22.0
    delta_window: int = 2  # compute_deltas(win_length=5)

    @property
    def window_size(self) -> int:
        """Samples per frame."""
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def window_shift(self) -> int:
        """Samples between frames."""
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        """The FFT length: the window rounded up to a power of two."""
        return 1 << (self.window_size - 1).bit_length()


def num_frames(num_samples: int, opts: MfccOptions = MfccOptions()) -> int:
    """Kaldi's snip_edges frame count (0 when shorter than one window)."""
    if num_samples < opts.window_size:
        return 0
    return 1 + (num_samples - opts.window_size) // opts.window_shift


def _mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(opts: MfccOptions) -> np.ndarray:
    """(fft_size // 2 + 1, num_mel_bins) triangular Kaldi mel filters (zero weight on the Nyquist bin)."""
    nyquist = opts.sample_rate / 2
    high = opts.high_freq if opts.high_freq > 0 else nyquist + opts.high_freq
    mel_low, mel_high = _mel(opts.low_freq), _mel(high)
    delta = (mel_high - mel_low) / (opts.num_mel_bins + 1)
    bins = np.arange(opts.num_mel_bins)[:, None]
    left, center, right = mel_low + bins * delta, mel_low + (bins + 1) * delta, mel_low + (bins + 2) * delta
    mel = _mel(np.arange(opts.fft_size // 2) * opts.sample_rate / opts.fft_size)[None, :]
    weights = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return np.concatenate([weights, np.zeros((opts.num_mel_bins, 1))], axis=1).T


@functools.lru_cache(maxsize=8)
def dct_lifter(opts: MfccOptions) -> np.ndarray:
    """(num_mel_bins, num_ceps) orthonormal DCT-II with the cepstral lifter folded in."""
    n = opts.num_mel_bins
    k = np.arange(opts.num_ceps)[None, :]
    dct = np.sqrt(2.0 / n) * np.cos(math.pi / n * (np.arange(n)[:, None] + 0.5) * k)
    dct[:, 0] = math.sqrt(1.0 / n)
    lifter = 1.0 + 0.5 * opts.cepstral_lifter * np.sin(math.pi * np.arange(opts.num_ceps) / opts.cepstral_lifter)
    return dct * lifter[None, :]


@functools.lru_cache(maxsize=8)
def povey_window(size: int) -> np.ndarray:
    """Kaldi's Povey window: a Hann window to the power 0.85."""
    return (0.5 - 0.5 * np.cos(2 * math.pi * np.arange(size) / (size - 1))) ** 0.85


def _frames(waveform: np.ndarray, opts: MfccOptions) -> np.ndarray:
    n = num_frames(len(waveform), opts)
    if n == 0:
        return np.zeros((0, opts.window_size))
    view = np.lib.stride_tricks.sliding_window_view(waveform, opts.window_size)
    return view[:: opts.window_shift][:n]


BLOCK_ROWS = 1024  # frames computed at a time (see mfcc_batch)


def mfcc_batch(waveforms: Sequence[np.ndarray], opts: MfccOptions = MfccOptions()) -> list[np.ndarray]:
    """13 Kaldi MFCCs per frame for each waveform: a list of (frames, 13) float32 arrays.

    The frames of the whole batch pass through one reused (BLOCK_ROWS, window) buffer: computed whole, a batch's
    float64 temporaries were tens of MB each, which glibc maps afresh and faults in on every operation (the
    features differ by at most 3e-14). NumPy releases the GIL in each step, so batches can run in threads
    (`labels mfcc` does, one BLAS thread each)."""
    frames = [_frames(np.asarray(w), opts) for w in waveforms]
    counts = [len(f) for f in frames]
    out = np.empty((sum(counts), opts.num_ceps), np.float32)
    block = np.empty((BLOCK_ROWS, opts.window_size))
    done = filled = 0
    for f in frames:
        taken = 0
        while taken < len(f):
            k = min(BLOCK_ROWS - filled, len(f) - taken)
            block[filled:filled + k] = f[taken:taken + k]
            filled, taken = filled + k, taken + k
            if filled == BLOCK_ROWS:
                out[done:done + filled] = _cepstra(block, opts)
                done, filled = done + filled, 0
    if filled:
        out[done:] = _cepstra(block[:filled], opts)
    return np.split(out, np.cumsum(counts)[:-1]) if counts else []


def _cepstra(x: np.ndarray, opts: MfccOptions) -> np.ndarray:
    """(frames, num_ceps) cepstra of the float64 frames x (frames, window), which are overwritten."""
    x -= x.mean(axis=1, keepdims=True)  # DC removal
    previous = opts.preemphasis * x[:, :-1]
    x[:, 1:] -= previous
    x[:, 0] -= previous[:, 0]  # Kaldi pre-emphasises the first sample against itself
    x *= povey_window(opts.window_size)[None, :]
    spectrum = np.fft.rfft(x, n=opts.fft_size, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    return np.log(np.maximum(power @ mel_banks(opts), np.finfo(np.float32).eps)) @ dct_lifter(opts)


def deltas(features: np.ndarray, window: int = 2) -> np.ndarray:
    """torchaudio.functional.compute_deltas along time (rows): replicate padding, sum n (c[t+n] - c[t-n])
    over n = 1..window, divided by 2 * sum n^2."""
    t = len(features)
    padded = np.concatenate([np.repeat(features[:1], window, 0), features, np.repeat(features[-1:], window, 0)])
    out = np.zeros_like(features, dtype=np.float64)
    for n in range(1, window + 1):
        out += n * (padded[window + n: window + n + t] - padded[window - n: window - n + t])
    return (out / (2 * sum(n * n for n in range(1, window + 1)))).astype(features.dtype)


def mfcc_with_deltas(waveforms: Sequence[np.ndarray], opts: MfccOptions = MfccOptions()) -> list[np.ndarray]:
    """fairseq's iteration-1 HuBERT features: [mfcc, delta, delta-delta], (frames, 39) float32 at 100 Hz."""
    out = []
    for ceps in mfcc_batch(waveforms, opts):
        d = deltas(ceps, opts.delta_window)
        out.append(np.concatenate([ceps, d, deltas(d, opts.delta_window)], axis=1))
    return out
