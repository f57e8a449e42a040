"""Dumped features on disk, as fairseq lays them out: `{prefix}.npy` holds every frame (float32) and
`{prefix}.len` the frame count of each utterance, in manifest order. An utterance the stage skipped (its
audio unusable) has 0 frames, and `{prefix}.skipped` says why: `index<TAB>reason` lines, the index
0-based in manifest order, so that the labels made from the features can say why a line is empty."""

from __future__ import annotations

import os

import numpy as np

from hubert_jax.data.manifest import read_skipped, write_skipped


_HEADER_BYTES = 128  # the .npy header, padded to a size that holds any shape: written before the rows are known


def _npy_header(rows: int, dims: int) -> bytes:
    """A version-1.0 .npy header of float32 (rows, dims), padded to `_HEADER_BYTES` (a multiple of 64)."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}"  # as np.save writes it
    size = _HEADER_BYTES - 10  # after the magic string, the version and the header's length
    return b"\x93NUMPY\x01\x00" + size.to_bytes(2, "little") + text.ljust(size - 1).encode("latin-1") + b"\n"


class FeatureWriter:
    """Writes `{prefix}.npy/.len/.skipped` as utterances come (memory: one utterance, not the corpus). The
    rows go to `{prefix}.tmp.npy` after a header reserved for any size; `close` writes the real header and
    renames, the `.len` file last, so its presence marks a complete write. An unusable utterance is added
    with 0 frames and its reason."""

    def __init__(self, prefix: str, dims: int):
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self.prefix, self.dims, self.rows, self.count = prefix, dims, 0, 0
        self.skipped: dict[int, str] = {}
        self._npy = open(f"{prefix}.tmp.npy", "wb")
        self._npy.write(_npy_header(0, dims))
        self._len = open(f"{prefix}.len.tmp", "w")

    def add(self, features: np.ndarray, *, skipped: str | None = None) -> None:
        """The next utterance's (frames, dims) features; `skipped`: why it has none."""
        features = np.ascontiguousarray(features, np.float32).reshape(-1, self.dims)
        if skipped is not None:
            self.skipped[self.count] = skipped
        self._npy.write(features.tobytes())
        self._len.write(f"{len(features)}\n")
        self.rows += len(features)
        self.count += 1

    def close(self) -> None:
        self._npy.seek(0)
        self._npy.write(_npy_header(self.rows, self.dims))
        self._npy.close()
        self._len.close()
        write_skipped(f"{self.prefix}.skipped", self.skipped)
        os.replace(f"{self.prefix}.tmp.npy", f"{self.prefix}.npy")
        os.replace(f"{self.prefix}.len.tmp", f"{self.prefix}.len")

    def abandon(self) -> None:
        """Close and remove the temporary files (nothing under the real names changes)."""
        for f, path in ((self._npy, f"{self.prefix}.tmp.npy"), (self._len, f"{self.prefix}.len.tmp")):
            f.close()
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.abandon() if kind is not None else self.close()


def save_features(prefix: str, features: list[np.ndarray], dims: int, skipped: dict[int, str] | None = None) -> None:
    """Write a list of utterances' features (FeatureWriter: atomically, the `.len` file last)."""
    with FeatureWriter(prefix, dims) as out:
        for index, x in enumerate(features):
            out.add(x, skipped=(skipped or {}).get(index))


def release_pages(features) -> None:
    """Drop the pages of memory-mapped features (an np.load(mmap_mode="r") array or `Rows` of them) from this
    process' resident set. The page cache keeps them, so a later read costs no disk access; but a pass over
    the corpus then holds about one chunk's pages, not every page it has read, in its RSS."""
    import mmap

    for part in (features.parts if isinstance(features, Rows) else [features]):
        mapping = getattr(part, "_mmap", None)
        if mapping is not None and not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)


def read_rows(features, rows: np.ndarray, *, chunk: int = 1 << 10, out: np.ndarray | None = None) -> np.ndarray:
    """features[rows] for ascending `rows`, read `chunk` rows at a time with the pages released after each
    (scattered rows would otherwise leave most of a memory-mapped file resident); into `out` if given."""
    out = np.empty((len(rows), features.shape[1]), np.float32) if out is None else out
    for start in range(0, len(rows), chunk):
        out[start: start + chunk] = features[rows[start: start + chunk]]
        release_pages(features)
    return out


class Rows:
    """Memory-mapped feature files read as one (N, d) array without concatenating them: slices and sorted
    or unsorted integer row indices read only the rows asked for."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.shape = (int(self.starts[-1]), parts[0].shape[1] if parts else 0)
        self.dtype = parts[0].dtype if parts else np.float32

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        index = np.asarray(index, np.int64)
        out = np.empty((len(index), self.shape[1]), self.dtype)
        part = np.searchsorted(self.starts, index, side="right") - 1
        for p in np.unique(part):
            where = part == p
            out[where] = self.parts[p][index[where] - self.starts[p]]
        return out

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype)


def concat_skipped(parts: list[tuple[str, int]]) -> dict[int, str]:
    """The `.skipped` records of consecutive parts (`(prefix, utterances)` in order) as one, indexed over
    the concatenation."""
    out, offset = {}, 0
    for prefix, utterances in parts:
        out.update({offset + i: why for i, why in read_skipped(f"{prefix}.skipped").items()})
        offset += utterances
    return out


def load_skipped(prefix: str, nshard: int = 0) -> dict[int, str]:
    """Why utterances were skipped, indexed over all shards in rank order (as load_features' rows)."""
    if nshard <= 0:
        return read_skipped(f"{prefix}.skipped")
    parts = []
    for rank in range(nshard):
        with open(f"{prefix}_{rank}_{nshard}.len") as f:
            parts.append((f"{prefix}_{rank}_{nshard}", sum(1 for _ in f)))
    return concat_skipped(parts)


def load_features(prefix: str, nshard: int = 0):
    """`{prefix}.npy/.len` (memory-mapped), or with nshard > 0 the dump shards `{prefix}_{rank}_{nshard}` in
    rank order as one `Rows` (read lazily: nothing is concatenated in memory)."""
    if nshard > 0:
        parts = [load_features(f"{prefix}_{rank}_{nshard}") for rank in range(nshard)]
        return Rows([p[0] for p in parts]), [n for p in parts for n in p[1]]
    for suffix in (".npy", ".len"):
        if not os.path.exists(prefix + suffix):
            raise FileNotFoundError(f"{prefix}{suffix} not found (write it with `mfcc` or `dump` first)")
    feats = np.load(prefix + ".npy", mmap_mode="r")
    with open(prefix + ".len") as f:
        lengths = [int(line) for line in f]
    if sum(lengths) != len(feats):
        raise ValueError(f"{prefix}.len sums to {sum(lengths)} frames but {prefix}.npy has {len(feats)}")
    return feats, lengths


def split_utterances(feats: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Per-utterance arrays of concatenated frames, given each utterance's frame count."""
    return np.split(np.asarray(feats), np.cumsum(lengths)[:-1]) if lengths else []


def nonfinite_rows(feats, rows: np.ndarray | None = None, *, chunk: int = 1 << 18) -> np.ndarray:
    """The indices (sorted) of the frames with a NaN or infinite value, among `rows` (default: all), read in
    chunks (a memory map or `Rows` is never loaded whole)."""
    bad = []
    total = len(feats) if rows is None else len(rows)
    for start in range(0, total, chunk):
        index = np.arange(start, min(start + chunk, total)) if rows is None else rows[start: start + chunk]
        block = np.asarray(feats[index[0]: index[-1] + 1] if rows is None else feats[index])
        bad.append(index[~np.isfinite(block).all(axis=1)])
        release_pages(feats)
    return np.concatenate(bad) if bad else np.zeros((0,), np.int64)


def describe_rows(rows: np.ndarray, lengths: list[int], paths: list[str] | None = None, limit: int = 5) -> str:
    """'N frames of U utterances (utterance i (path): n frames, ...)': where frames sit, by utterance
    (0-based, in manifest order) and, when known, its audio file."""
    owner = np.searchsorted(np.cumsum(lengths), rows, side="right")
    utterances, counts = np.unique(owner, return_counts=True)
    named = [f"utterance {u}{f' ({paths[u]})' if paths and u < len(paths) else ''}: {c} frames"
             for u, c in zip(utterances[:limit].tolist(), counts[:limit].tolist())]
    more = f", and {len(utterances) - limit} more" if len(utterances) > limit else ""
    return f"{len(rows)} frames of {len(utterances)} utterance(s) ({', '.join(named)}{more})"
