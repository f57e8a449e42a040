"""Reading one audio file: mono float32 at 16 kHz, checked against what its header promises.

- A WAV whose header counts more samples than the file holds (a truncated copy) is refused: libsndfile
  would silently read the part that is there. The count comes from the RIFF `data` chunk itself; other
  formats are checked against soundfile's frame count (FLAC's STREAMINFO, ...).
- Stereo is averaged; another sample rate is resampled (polyphase, scipy), noted in the log once per
  rate per process, and counted (`resampled_counts`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import struct
import threading

import numpy as np

from hubert_jax import storage
from hubert_jax.lengths import SAMPLE_RATE

logger = logging.getLogger(__name__)


_resampled: collections.Counter = collections.Counter()  # native rate -> files resampled in this process
_native: collections.Counter = collections.Counter()  # native rate -> rows counted at it (accepted)
_resampled_lock = threading.Lock()
_held = threading.local()  # .notes: the notes held_notes holds back on this thread


class AudioError(ValueError):
    """An audio file that cannot be used (unreadable, damaged, empty, NaN, too short, or not what the
    manifest says)."""


def as_waveform(x, index: int) -> np.ndarray:
    """An in-memory waveform as mono float32 samples in [-1, 1], or a ValueError naming its index: stereo
    (a (T, 2) or (2, T) array would be read as interleaved samples), integer PCM (its scale is not
    [-1, 1]), NaN/infinite or empty audio are refused rather than turned into features of garbage."""
    array = np.asarray(x)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        hint = (f"; downmix it first, e.g. waveform.mean(axis={int(np.argmin(array.shape))})"
                if array.ndim == 2 else "")
        raise ValueError(f"waveform {index} has shape {array.shape}: expected mono audio, shape (samples,)"
                         f"{hint}")
    if array.dtype.kind in "iu":
        scale = float(2 ** (8 * array.dtype.itemsize - 1))
        raise ValueError(f"waveform {index} holds {array.dtype} samples: expected float audio in [-1, 1] "
                         f"(for PCM, divide by {scale:.0f})")
    if array.dtype.kind not in "f":
        raise ValueError(f"waveform {index} holds {array.dtype} values: expected float audio in [-1, 1]")
    if array.size == 0:
        raise ValueError(f"waveform {index} is empty")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array))
        raise ValueError(f"waveform {index} has {len(bad)} NaN or infinite samples (the first at sample "
                         f"{int(bad[0])})")
    return array


def is_tfds(path: str) -> bool:
    """Whether a manifest path names a tfds example (tfds://...)."""
    return path.startswith("tfds://")


def tfds_example(path: str):
    """(the open tfds split, the example index) of a tfds:// path."""
    from hubert_jax.data.tfds_source import open_split

    address, _, index = path.rpartition("#")
    return open_split(address), int(index) if index.isdigit() else -1


def wav_header_frames(path) -> int | None:
    """Frames the `data` chunk of a RIFF/WAVE file declares, None for another format or an unknown size
    (a streamed WAV writes 0 or 0xFFFFFFFF). `path`: a local path, or the file's bytes in a binary file object."""
    try:
        with (open(path, "rb") if isinstance(path, str) else contextlib.nullcontext(path)) as f:
            f.seek(0)
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
                elif name == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + (size & 1), 1)
    except OSError:
        return None


def _note(record) -> None:
    """Count (and, the first time per rate, log) a resampled file or a native-rate count now, or hold it for
    replay_notes when this thread reads under held_notes."""
    held = getattr(_held, "notes", None)
    if held is None:
        record()
    else:
        held.append(record)


def held_notes(read, *args):
    """(read(*args), the notes it made): the resampling and native-count notes are held back, so a pool of
    readers can replay them (replay_notes) in the caller's order and "noted once" names the first file in
    that order, not the first to finish."""
    _held.notes = []
    try:
        return read(*args), _held.notes
    finally:
        _held.notes = None


def replay_notes(notes) -> None:
    """Count and log notes held by held_notes, in the order given."""
    for record in notes:
        record()


def _note_resampling(path: str, rate: int) -> None:
    _note(functools.partial(_count, _resampled, rate, "%s is at %d Hz: resampling it to %d Hz (noted once per "
                            "rate; every such file is resampled, and manifests must count its samples at %d Hz)",
                            path, rate, SAMPLE_RATE, SAMPLE_RATE))


def _count(counter: collections.Counter, rate: int, message: str, *args) -> None:
    """One more file at `rate` in `counter`; the first one per rate is logged."""
    with _resampled_lock:
        counter[rate] += 1
        first = counter[rate] == 1
    if first:
        logger.warning(message, *args)


def resampled_counts() -> dict:
    """{native rate: files} resampled so far by this process, and {("native", rate): files} of them that
    their manifest counted at that rate."""
    with _resampled_lock:
        return {**_resampled, **{("native", rate): n for rate, n in _native.items()}}


def resampled_summary(since: dict[int, int] | None = None) -> str:
    """'N files resampled from R Hz (M listed at R Hz)' for the files resampled since `since` (an earlier
    resampled_counts()), with how many of them the manifest counted at their native rate."""
    since = since or {}
    now = resampled_counts()
    counts = {rate: n - since.get(rate, 0) for rate, n in now.items() if isinstance(rate, int)}
    native = {key[1]: n - since.get(key, 0) for key, n in now.items() if isinstance(key, tuple)}
    return "; ".join(f"{n} files resampled from {rate} Hz" + (f" ({native[rate]} listed with their {rate} Hz "
                                                              f"count)" if native.get(rate) else "")
                     for rate, n in sorted(counts.items()) if n)


def load(path: str, *, min_samples: int = 400) -> tuple[np.ndarray, int]:
    """(audio at 16 kHz, the file's own rate). AudioError names the path and what is wrong."""
    import soundfile as sf

    try:
        if is_tfds(path):
            split, index = tfds_example(path)
            audio, rate = split.audio(index)
            promised = None
        else:
            source = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path  # one request
            audio, rate = sf.read(source, dtype="float32", always_2d=True)
            promised = wav_header_frames(source)
            if promised is None:
                if not isinstance(source, str):
                    source.seek(0)
                promised = sf.info(source).frames
    except Exception as e:
        raise AudioError(f"{path}: unreadable audio ({type(e).__name__}: {e})") from e
    if promised is not None and len(audio) < promised:
        raise AudioError(f"{path}: damaged or truncated: its header says {promised} samples, the file holds "
                         f"{len(audio)}")
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        from math import gcd

        from scipy.signal import resample_poly

        _note_resampling(path, rate)
        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    if audio.size == 0:
        raise AudioError(f"{path}: empty audio")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if audio.size < min_samples:
        raise AudioError(f"{path}: {audio.size} samples, fewer than the {min_samples} one frame needs")
    return audio, rate


def read_audio(path: str, *, min_samples: int = 400) -> np.ndarray:
    """Mono float32 at 16 kHz (see the module's docstring)."""
    return load(path, min_samples=min_samples)[0]


def num_samples(path: str) -> int | None:
    """The file's length at 16 kHz from its header alone (None where it cannot be told)."""
    import soundfile as sf

    try:  # an object's header through a file object on it, a file's by its name
        with storage.open(path, "rb") if storage.is_remote(path) else contextlib.nullcontext(path) as source:
            info = sf.info(source)
            frames = wav_header_frames(source) or info.frames
    except Exception:
        return None
    return int(round(frames * SAMPLE_RATE / info.samplerate))


def count_at_16k(path: str, listed: int) -> int | None:
    """The file's count at 16 kHz when `listed` is its own frame count at another (native) rate, else None."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:
        return None
    if info.samplerate == SAMPLE_RATE or abs((wav_header_frames(path) or info.frames) - listed) > 1:
        return None
    return num_samples(path)


def check_count(listed: int, audio: np.ndarray, rate: int, *, where: str, path: str) -> None:
    """The manifest's count against the samples read (at 16 kHz; 1 sample of slack after resampling). A file
    not at 16 kHz may also be listed with its own frame count at its native rate (what fairseq's
    wav2vec_manifest.py writes): accepted, noted once and counted (`resampled_counts`)."""
    tolerance = 0 if rate == SAMPLE_RATE else 1
    if abs(len(audio) - listed) <= tolerance:
        return
    if rate != SAMPLE_RATE:
        native = len(audio) * rate / SAMPLE_RATE  # the resampler's rounding: within rate / 16 kHz + 1
        if abs(native - listed) <= rate / SAMPLE_RATE + 1:
            _note(functools.partial(_count, _native, rate, "%s: lists %s at its native %d Hz count (%d); accepted "
                                    "and read at %d Hz (noted once per rate; the manifest's other counts are at "
                                    "%d Hz)", where, path, rate, listed, SAMPLE_RATE, SAMPLE_RATE))
            return
    raise AudioError(f"{where}: the manifest lists {listed} samples, but {path} has {len(audio)} at "
                     f"{SAMPLE_RATE} Hz{f'; the file is at {rate} Hz' if rate != SAMPLE_RATE else ''}. Fix the "
                     f"line (or rewrite the manifest from the audio)")
