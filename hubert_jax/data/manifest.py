"""fairseq-style manifests, audio reading and per-utterance label files, with errors that name the file
and line.

A manifest (`.tsv`) has a root directory on its first line, then `relative/path<TAB>num_samples` per
utterance. A relative root is taken relative to the manifest's own directory. A root of the form
`tfds://NAME/SPLIT` reads a prepared tensorflow-datasets split instead, with example indices for paths
(see `hubert_jax.data.tfds_source`). Label files (`.km`, `.phn`,
`.ltr`, ...) hold one line per utterance, in manifest order.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import numpy as np

from hubert_jax import storage
from hubert_jax.data.audio import (  # noqa: F401 (re-exported)
    SAMPLE_RATE,
    AudioError,
    check_count,
    held_notes,
    is_tfds,
    load,
    read_audio,
    replay_notes,
    tfds_example,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One manifest line: the audio file, its sample count and the line number."""
    path: str  # absolute path of the audio file
    num_samples: int
    line: int  # line number in the manifest (1-based), for error messages


def read_manifest(path: str) -> list[Entry]:
    """The entries of a fairseq manifest (root directory line, then relative path and samples per line); errors name
    the file and line."""
    try:
        with storage.open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except storage.StorageError:
        raise
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the manifest ({e})") from e
    if not lines:
        raise ValueError(f"{path}: empty manifest (expected a root line, then path<TAB>num_samples lines)")
    root = lines[0].strip()
    if root.startswith("tfds://"):
        return _read_rows(path, lines, lambda rel: f"{root}#{rel}")
    if not storage.is_absolute(root):  # relative to the manifest's own folder (a bucket's too)
        root = storage.normpath(storage.join(storage.dirname(path), root))
    return _read_rows(path, lines, lambda rel: storage.join(root, rel))


def _read_rows(path: str, lines: list[str], locate) -> list[Entry]:
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{number}: expected 'relative/path<TAB>num_samples', got {line!r}")
        entries.append(Entry(locate(parts[0]), int(parts[1]), number))
    return entries


def check_files_exist(manifest: str, entries: list[Entry]) -> None:
    """FileNotFoundError listing (up to ten) manifest lines whose audio is missing. Objects in a bucket are
    listed once per folder, not asked for one by one."""
    remote = {storage.dirname(e.path) for e in entries if storage.is_remote(e.path)}
    listed = set().union(*(storage.files_under(folder) for folder in _outermost(remote))) if remote else set()
    missing = [e for e in entries if not (e.path in listed if storage.is_remote(e.path) else _exists(e.path))]
    if missing:
        listed = ", ".join(f"line {e.line}: {e.path}" for e in missing[:10])
        raise FileNotFoundError(f"{manifest}: {len(missing)} audio file(s) missing ({listed}"
                                f"{' ...' if len(missing) > 10 else ''})")


def _outermost(folders: set[str]) -> list[str]:
    """The folders not inside another one of the set."""
    ordered = sorted(folders)
    kept: list[str] = []
    for folder in ordered:
        if not kept or not folder.startswith(kept[-1].rstrip("/") + "/"):
            kept.append(folder)
    return kept


def _exists(path: str) -> bool:
    if is_tfds(path):
        split, index = tfds_example(path)
        return 0 <= index < len(split)
    return os.path.isfile(path)


def _read_checked(manifest: str, entry: Entry, *, min_samples: int = 400) -> np.ndarray:
    """A manifest row's waveform, its sample count checked against the row (errors name the line)."""
    where = f"{manifest}:{entry.line}"
    try:
        audio, rate = load(entry.path, min_samples=min_samples)
    except AudioError as e:
        raise AudioError(f"{where}: {e}") from e
    check_count(entry.num_samples, audio, rate, where=where, path=entry.path)
    return audio


def read_entry_audio(manifest: str, entry: Entry, *, normalize: bool) -> np.ndarray:
    """A manifest row's waveform (errors name the manifest line), layer-normalised if asked (fairseq)."""
    audio = _read_checked(manifest, entry)
    if normalize:
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-5)
    return audio


def iter_audio(entries: list[Entry], *, strict: bool = False, min_samples: int = 400, manifest: str = "manifest",
               threads: int = 1):
    """(entry, audio) for every usable row, in order. Unusable ones (unreadable, damaged, or not the length the
    manifest says) are logged by path and skipped (the returned `skipped` dict maps the row's index in
    `entries` to why), or raise with strict=True. `threads` > 1 reads and decodes that many files ahead in a
    thread pool (libsndfile releases the GIL), so decoding overlaps the caller's work on the previous ones; the
    order, the skips and the errors are the same as with one thread."""
    skipped: dict[int, str] = {}

    def read(entry):
        try:
            return _read_checked(manifest, entry, min_samples=min_samples), None
        except AudioError as e:
            return None, e

    def read_in_order():
        if threads <= 1:
            yield from map(read, entries)
            return
        for result, notes in _read_ahead(functools.partial(held_notes, read), entries, threads):
            replay_notes(notes)  # the once-per-rate notes name the first file in manifest order
            yield result

    def generate():
        for index, (entry, (audio, error)) in enumerate(zip(entries, read_in_order())):
            if error is None:
                yield entry, audio
                continue
            if strict:
                raise error
            logger.warning("skipping %s", error)
            skipped[index] = str(error)

    return generate(), skipped


def _read_ahead(read, items, threads: int):
    """read(item) for each item, in order, with up to 2 * threads reads in flight."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    with ThreadPoolExecutor(threads, thread_name_prefix="read_audio") as pool:
        items = iter(items)
        pending = deque(pool.submit(read, item) for item in islice(items, 2 * threads))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(read, item) for item in islice(items, 1))  # one more for the one taken
            yield result


def read_label_lines(path: str, expected_lines: int) -> list[list[str]]:
    """Tokens per utterance; the line count must equal the manifest's utterance count."""
    with storage.open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) != expected_lines:
        raise ValueError(f"{path}: {len(lines)} lines, but the manifest has {expected_lines} utterances")
    return [line.split() for line in lines]


class LabelCountError(ValueError):
    """A label line whose length does not fit its utterance's frames."""

    def __init__(self, message: str, line: int, count: int):
        super().__init__(message)
        self.line, self.count = line, count


def _label_line(path: str, number: int, tokens: list, frames: int, tolerance: int, dtype, *,
                padding: int = -1, skipped: dict | None = None) -> np.ndarray:
    """Line `number`'s labels (str or bytes tokens), checked: integers only, none below 0 but `padding`
    (frames without a label), within `tolerance` of `frames`. `skipped`: {line: why} the label stage left
    lines empty, for the message."""
    if not tokens and frames > 0:
        why = (skipped or {}).get(number)
        raise LabelCountError(
            f"{path}:{number}: an empty line, so no labels for utterance {number} of the manifest: "
            + (f"the label stage skipped it ({why}). " if why else
               "the label stage (mfcc / dump) leaves the line of an utterance it could not read empty (its log "
               "names the file). ")
            + "Fix or remove the audio file, rewrite the manifest without the line, and make the labels again",
            number, 0)
    try:
        labels = np.asarray([int(t) for t in tokens], dtype)
    except ValueError:
        shown = " ".join(t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in tokens[:5])
        raise ValueError(f"{path}:{number}: expected integers, got {shown!r}...") from None
    bad = labels[(labels < 0) & (labels != padding)]
    if bad.size:
        raise ValueError(f"{path}:{number}: label {int(bad[0])} is negative: labels are cluster ids 0..K-1 "
                         f"({padding} alone marks frames without a label)")
    if abs(len(labels) - frames) > tolerance:
        raise LabelCountError(f"{path}:{number}: {len(labels)} labels, expected {frames} frames"
                              f"{f' (+-{tolerance})' if tolerance else ''}: is the label rate right?",
                              number, len(labels))
    return labels


def _to_frames(labels: np.ndarray, frames: int) -> np.ndarray:
    """Cut, or repeat the last label, to exactly `frames` labels."""
    return labels[:frames] if len(labels) > frames else np.pad(labels, (0, frames - len(labels)), mode="edge")


def skipped_lines(path: str) -> dict[int, str]:
    """{line (1-based): why} of the utterances the label stage skipped (`{path}.skipped`, if any)."""
    return {index + 1: why for index, why in read_skipped(f"{path}.skipped").items()}


def read_int_labels(path: str, expected_frames: list[int], *, tolerance: int = 0,
                    padding: int = -1) -> list[np.ndarray]:
    """Integer frame labels (.km, .phn), checked line by line against the expected frame counts."""
    rows = read_label_lines(path, len(expected_frames))
    skipped = skipped_lines(path)
    return [_to_frames(_label_line(path, number, tokens, frames, tolerance, np.int64, padding=padding,
                                   skipped=skipped), frames)
            for number, (tokens, frames) in enumerate(zip(rows, expected_frames), start=1)]


class IntLabelFile:
    """Random access to the lines of an integer label file (.km, .phn) without holding its labels.

    One streaming pass checks every line (integers only, frame count within `tolerance` of the expected
    one) and keeps only each line's byte offset and the largest label; a line is read back with
    `os.pread` (thread-safe) and parsed when asked for. At 4,000 h of 50 Hz labels that is a few MB of
    offsets per host instead of ~720M integers."""

    def __init__(self, path: str, expected_frames: list[int], *, tolerance: int = 0):
        if not storage.isfile(path):
            raise FileNotFoundError(f"{path}: no such label file")
        self.path, self.expected, self.tolerance = path, list(expected_frames), tolerance
        self.skipped = skipped_lines(path)
        offsets, top, position = [], -1, 0
        with storage.open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if number <= len(self.expected):
                    labels = self._parse(line, number)
                    if len(labels):
                        top = max(top, int(labels.max()))
                offsets.append(position)
                position += len(line)
        if len(offsets) != len(self.expected):
            raise ValueError(f"{path}: {len(offsets)} lines, but the manifest has {len(self.expected)} utterances")
        offsets.append(position)
        self.offsets = np.asarray(offsets, np.int64)
        self.max_label = top
        self._fd = self._open()

    def _open(self):
        return None if storage.is_remote(self.path) else os.open(self.path, os.O_RDONLY)

    def _read(self, start: int, end: int) -> bytes:
        """Bytes [start, end): os.pread locally (thread-safe), a ranged read from a bucket."""
        if self._fd is None:
            return storage.read_range(self.path, start, end)
        return os.pread(self._fd, end - start, start)

    def _parse(self, line: bytes, number: int) -> np.ndarray:
        return _label_line(self.path, number, line.split(), self.expected[number - 1], self.tolerance, np.int32,
                           skipped=self.skipped)

    def __len__(self) -> int:
        return len(self.expected)

    def __getitem__(self, index: int) -> np.ndarray:
        """Line `index` (0-based), cut or edge-padded to the expected frame count."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return _to_frames(self._parse(self._read(start, end), index + 1), self.expected[index])

    def __getstate__(self):  # picklable (e.g. for worker processes): reopen on arrival
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = self._open()

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


def write_skipped(path: str, skipped: dict[int, str]) -> None:
    """`index<TAB>reason` lines (atomically); no file when nothing was skipped (an old one is removed)."""
    if not skipped:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(f"{i}\t{' '.join(str(why).split())}\n" for i, why in sorted(skipped.items()))
    os.replace(path + ".tmp", path)


def read_skipped(path: str) -> dict[int, str]:
    """{index: reason} of a `.skipped` file, {} without one."""
    try:
        with storage.open(path, encoding="utf-8") as f:
            rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    except FileNotFoundError:
        return {}
    return {int(i): why for i, why in rows}


def write_int_labels(path: str, labels: list[np.ndarray]) -> None:
    """One line of space-separated ints per utterance (fairseq .km), written atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in labels:
            f.write(" ".join(map(str, np.asarray(row).tolist())) + "\n")
    os.replace(tmp, path)
