"""A fairseq manifest from a folder of audio (what fairseq's `wav2vec_manifest.py` does), for corpora of
millions of files: `python -m hubert_jax.labels manifest DIR --out OUT`.

- The folder is walked in sorted order (each directory's entries sorted), so the manifest's order does not
  depend on the filesystem, and no list of the corpus' paths is held: files stream through a bounded window
  of header reads (`threads` at once; libsndfile reads a header without decoding), and lines are written as
  they come back, in walk order.
- Counts are at 16 kHz, the rate everything here reads at (a 44.1 kHz file is listed with its resampled
  count; fairseq lists the native count, which the readers here also accept).
- The validation split is chosen per file from a hash of the seed and the file's relative path, so it does
  not depend on the walk order, the number of threads, or which other files exist: adding files to the
  folder leaves every other file's split as it was. About `valid_fraction` of the files go to valid.
- A file whose header cannot be read, or that holds no samples, is reported on one line (path and reason)
  and left out of both manifests.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

from hubert_jax import storage
from hubert_jax.data.audio import num_samples
from hubert_jax.lengths import SAMPLE_RATE


@dataclasses.dataclass
class ManifestSummary:
    """What `write_manifests` wrote: per split, files and samples at 16 kHz; the files left out, with why."""
    files: dict[str, int]
    samples: dict[str, int]
    unreadable: list[tuple[str, str]]
    paths: dict[str, str]

    def hours(self, split: str) -> float:
        return self.samples[split] / SAMPLE_RATE / 3600


def audio_files(root: str, extensions: tuple[str, ...]) -> Iterator[str]:
    """Paths (relative to `root`) of the files under it with one of `extensions` (lower-case, no dot; the
    match ignores case), in sorted walk order; hidden files and folders are skipped."""
    suffixes = tuple("." + e.lower().lstrip(".") for e in extensions)
    for directory, folders, files in storage.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(suffixes):
                yield _relative(storage.join(directory, name), root)


def _relative(path: str, root: str) -> str:
    if storage.is_remote(root):
        return path[len(root.rstrip("/")) + 1:]
    return os.path.relpath(path, root)


def check_root(root: str) -> None:
    """FileNotFoundError naming `root` unless it is a folder."""
    if not storage.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder (expected the folder that holds the audio files)")


def is_valid(relative: str, seed: int, valid_fraction: float) -> bool:
    """Whether a file goes to the validation split: a uniform draw in [0, 1) from SHA-256(seed, path)."""
    digest = hashlib.sha256(f"{seed}\0{relative}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < valid_fraction


def _header_count(path: str) -> tuple[int | None, str]:
    count = num_samples(path)
    if count is None:
        return None, "unreadable audio header"
    if count <= 0:
        return None, "no samples"
    return count, ""


def counts(root: str, relative: Iterator[str], *, threads: int = 16, window: int = 4096
           ) -> Iterator[tuple[str, int | None, str]]:
    """(relative path, count at 16 kHz or None, why not) for each path, in order; `threads` header reads at
    once, at most `window` paths in flight."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending: collections.deque = collections.deque()
        for rel in relative:
            pending.append((rel, pool.submit(_header_count, storage.join(root, rel))))
            if len(pending) >= window:
                rel, future = pending.popleft()
                yield (rel, *future.result())
        while pending:
            rel, future = pending.popleft()
            yield (rel, *future.result())


def write_manifests(root: str, out: str, *, extensions: tuple[str, ...] = ("flac", "wav"),
                    valid_fraction: float = 0.01, seed: int = 0, threads: int = 16,
                    report: Callable[[str, str], None] | None = None,
                    progress: Callable[[int], None] | None = None) -> ManifestSummary:
    """Write `{out}/train.tsv` (and `{out}/valid.tsv` when `valid_fraction` > 0) for the audio under `root`.
    `report(path, why)` is called for each file left out; `progress(n)` after each file. Each manifest is
    written to a temporary file and renamed when complete (`root` and `out` may be gs:// folders: a manifest
    then goes up as one object when complete)."""
    check_root(root)
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-percent={valid_fraction}: expected a fraction in [0, 1) (0.01 puts about 1% "
                         f"of the files in valid.tsv), as fairseq's wav2vec_manifest.py takes it")
    root = storage.normpath(root) if storage.is_remote(root) else os.path.realpath(root)
    splits = ("train", "valid") if valid_fraction > 0 else ("train",)
    paths = {s: storage.join(out, f"{s}.tsv") for s in splits}
    staging = tempfile.mkdtemp(prefix="manifest-") if storage.is_remote(out) else None  # uploaded from here
    if staging is None:
        os.makedirs(out, exist_ok=True)
    written = paths if staging is None else {s: os.path.join(staging, f"{s}.tsv") for s in splits}
    handles = {s: open(written[s] + ".tmp", "w", encoding="utf-8") for s in splits}
    summary = ManifestSummary({s: 0 for s in splits}, {s: 0 for s in splits}, [], paths)
    try:
        for f in handles.values():
            f.write(root + "\n")
        for rel, count, why in counts(root, audio_files(root, extensions), threads=threads):
            if count is None:
                summary.unreadable.append((rel, why))
                if report is not None:
                    report(storage.join(root, rel), why)
            else:
                split = "valid" if valid_fraction > 0 and is_valid(rel, seed, valid_fraction) else "train"
                handles[split].write(f"{rel}\t{count}\n")
                summary.files[split] += 1
                summary.samples[split] += count
            if progress is not None:
                progress(1)
        for s, f in handles.items():
            f.close()
            os.replace(written[s] + ".tmp", written[s])
            if staging is not None:
                storage.upload_file(written[s], paths[s])
    except BaseException:
        for s, f in handles.items():
            f.close()
            if os.path.exists(written[s] + ".tmp"):
                os.remove(written[s] + ".tmp")
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return summary
