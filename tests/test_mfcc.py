"""Kaldi MFCC parity with kaldi-native-fbank (an independent Kaldi implementation) and deltas equal to
torchaudio's compute_deltas definition."""

import numpy as np
import pytest

from hubert_jax.labels.mfcc import MfccOptions, deltas, mfcc_batch, mfcc_with_deltas, num_frames

# measured: <= 7e-5 on noise and synthetic tones, <= 4.8e-4 over the whole demo corpus, on coefficients
# up to ~40: float32 rounding in kaldi-native-fbank against our float64 pipeline (relative ~1e-5)
MFCC_TOL = 2e-4
CORPUS_TOL = 1e-3


def kaldi_native_mfcc(x: np.ndarray) -> np.ndarray:
    import kaldi_native_fbank as knf

    opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0  # fairseq: torchaudio's default dither 0
    opts.use_energy = False
    online = knf.OnlineMfcc(opts)
    online.accept_waveform(16000, x.tolist())
    online.input_finished()
    return np.stack([np.asarray(online.get_frame(i)) for i in range(online.num_frames_ready)])


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Harmonic bursts with formant-like sweeps, silences and noise: exercises the log floor and the filters."""
    rng = np.random.RandomState(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 12))
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.2).astype(float)
    return (0.3 * voiced * envelope + 0.01 * rng.randn(t.size)).astype(np.float32)


@pytest.mark.parametrize("kind,scale", [("noise", 1.0), ("noise", 1e-3), ("speechlike", 1.0), ("silence", 0.0)])
def test_mfcc_matches_kaldi(kind, scale):
    rng = np.random.RandomState(0)
    x = (rng.randn(16000 * 2 + 123) * scale).astype(np.float32) if kind != "speechlike" else _speechlike(2.3, 1)
    ours, theirs = mfcc_batch([x])[0], kaldi_native_mfcc(x)
    assert ours.shape == theirs.shape == (num_frames(len(x)), 13)
    assert float(np.max(np.abs(ours - theirs))) < MFCC_TOL


def test_batch_equals_one_by_one_and_short_inputs():
    xs = [_speechlike(s, i) for i, s in enumerate((0.5, 1.3, 0.026))]
    batch = mfcc_batch(xs)
    for x, b in zip(xs, batch):
        np.testing.assert_array_equal(b, mfcc_batch([x])[0])
    assert batch[2].shape == (1, 13)  # 416 samples: one 25 ms frame
    assert mfcc_batch([np.zeros(300, np.float32)])[0].shape == (0, 13)


def test_utterances_across_the_blocks_of_frames_equal_kaldi_and_one_by_one():
    """The frames go through blocks of BLOCK_ROWS: utterances that straddle a block's end, one longer than a
    block and an empty one in between come out whole, in order, each as alone and as Kaldi computes it."""
    from hubert_jax.labels.mfcc import BLOCK_ROWS

    xs = [_speechlike(s, i) for i, s in enumerate((7.1, 0.01, 12.3, 4.4))]
    assert num_frames(len(xs[0])) < BLOCK_ROWS < num_frames(len(xs[0])) + num_frames(len(xs[2]))
    assert num_frames(len(xs[2])) > BLOCK_ROWS and num_frames(len(xs[1])) == 0
    batch = mfcc_batch(xs)
    assert [len(b) for b in batch] == [num_frames(len(x)) for x in xs]
    for x, b in zip(xs, batch):
        np.testing.assert_allclose(b, mfcc_batch([x])[0], rtol=0, atol=1e-12)
        if len(b):
            assert float(np.max(np.abs(b - kaldi_native_mfcc(x)))) < MFCC_TOL


def test_deltas_follow_torchaudio_compute_deltas():
    import torch

    feats = np.random.RandomState(0).randn(57, 13).astype(np.float32)
    # torchaudio.functional.compute_deltas(win_length=5): replicate pad by 2, conv with [-2..2], / 10
    spec = torch.tensor(feats.T)[None]
    padded = torch.nn.functional.pad(spec, (2, 2), mode="replicate")
    kernel = torch.arange(-2, 3, dtype=torch.float32).repeat(13, 1, 1)
    reference = (torch.nn.functional.conv1d(padded, kernel, groups=13) / 10)[0].T.numpy()
    np.testing.assert_allclose(deltas(feats), reference, atol=1e-6)
    full = mfcc_with_deltas([_speechlike(1.0, 2)])[0]
    assert full.shape == (98, 39) and full.dtype == np.float32
    np.testing.assert_allclose(full[:, 13:26], deltas(full[:, :13]), atol=1e-6)
    np.testing.assert_allclose(full[:, 26:], deltas(full[:, 13:26]), atol=1e-6)


def test_options_are_fairseqs():
    opts = MfccOptions()
    assert (opts.window_size, opts.window_shift, opts.fft_size) == (400, 160, 512)


def test_mfcc_matches_kaldi_on_the_demo_corpus():
    import os

    from hubert_jax.data.manifest import read_audio, read_manifest

    demo = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "valid.tsv")
    entries = read_manifest(demo)
    picks = [e for e in entries if "en" in os.path.basename(e.path)][:2] + \
            [e for e in entries if "ko" in os.path.basename(e.path)][:2]
    audios = [read_audio(e.path) for e in picks]
    for ours, audio in zip(mfcc_batch(audios), audios):
        assert float(np.max(np.abs(ours - kaldi_native_mfcc(audio)))) < CORPUS_TOL
