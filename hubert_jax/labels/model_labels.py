"""Labels straight from a model: hidden_states[L] of each utterance assigned to its nearest centroid in one
pass, with no feature dump (`python -m hubert_jax.labels label --model DIR --layer L --manifest M
--centroids C --out OUT.km`).

The features of a chunk of utterances exist only while the chunk is labelled, so the disk holds the labels
(a few bytes a frame) instead of the features (3 KB a frame at 768-d: 2.2 TB for 4,000 h at 50 Hz). It runs
like `dump` (labels/dump.py's `run_in_chunks`): host `rank` of `world` takes a contiguous slice of the
manifest, chunks are written atomically and reused by a rerun, and the model's weights digest, the layer and
the centroids' SHA-256 are recorded beside the output. Host `rank` writes `{out}.part{rank}-of-{world}`
(`{out}` itself with one host); the host that completes the last part joins the parts in order into
`{out}`, so hosts need no coordinator. The labels equal `dump` then `label --feats` on the same model,
layer and centroids.
"""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np

from hubert_jax.data.manifest import Entry, write_int_labels, write_skipped
from hubert_jax.labels.dump import run_in_chunks, shard_range
from hubert_jax.labels.features import concat_skipped
from hubert_jax.lengths import SAMPLE_RATE


def part_path(out: str, rank: int, world: int) -> str:
    """Where host `rank` of `world` writes its labels."""
    return out if world == 1 else f"{out}.part{rank}-of-{world}"


def _line_count(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def concatenate(paths: list[str], out: str) -> None:
    """The files `paths` joined in order into `out`, a buffer at a time, under a temporary name then renamed
    (two processes joining the same parts at once write the same bytes)."""
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "wb") as joined:
        for path in paths:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, joined)
    os.replace(tmp, out)


def _join(paths: list[tuple[str, int]], out: str) -> None:
    """The label files `paths` ((path, utterances) in order) joined into `out`, with their `.skipped` records."""
    write_skipped(f"{out}.skipped", concat_skipped(paths))
    concatenate([path for path, _ in paths], out)


def label_with_model(model, entries: list[Entry], out: str, *, layer: int, centers: np.ndarray, rank: int = 0,
                     world: int = 1, chunk_size: int = 64, max_tokens: int = 64 * SAMPLE_RATE, strict: bool = False,
                     progress=None, manifest: str = "manifest", made: dict | None = None, threads: int = 4,
                     parts=None) -> dict:
    """Label this rank's slice of `entries` (see the module), `threads` audio files read ahead in parallel;
    returns run_in_chunks' counts, and `joined`: whether this call wrote the whole `out`. `parts(paths)`, given
    every host's part path, returns where each can be read here (None: not there yet); without it they are
    read where they are (a shared disk). The label command passes one that goes through a bucket."""
    from hubert_jax.labels.kmeans import NonFiniteFeatures, predict

    centers = np.asarray(centers, np.float32)
    if centers.ndim != 2 or centers.shape[1] != model.config.hidden_size:
        raise ValueError(f"centroids of shape {centers.shape} for a model of hidden size {model.config.hidden_size}")
    part = part_path(out, rank, world)
    sizes = [end - start for start, end in (shard_range(len(entries), world, r) for r in range(world))]

    def save(path, chunk, features, skipped):
        rows = [features.get(e.line, np.zeros((0, centers.shape[1]), np.float32)) for e in chunk]
        lengths = [len(r) for r in rows]
        try:
            labels = predict(np.concatenate(rows), centers) if sum(lengths) else np.zeros((0,), np.int32)
        except NonFiniteFeatures as e:
            bad = chunk[int(np.searchsorted(np.cumsum(lengths), e.rows[0], side="right"))]
            raise ValueError(f"{manifest}:{bad.line}: {bad.path}: layer {layer}'s features are NaN or infinite "
                             f"and have no nearest centroid; fix or drop the utterance") from None
        write_skipped(f"{path}.km.skipped", skipped)
        write_int_labels(path + ".km", np.split(labels, np.cumsum(lengths)[:-1]))  # last: marks the chunk done

    def merge(count):
        mine = sizes[rank]
        _join([(f"{part}.chunk{i:05d}.km", min(chunk_size, mine - i * chunk_size)) for i in range(count)], part)
        for path in glob.glob(f"{glob.escape(part)}.chunk*"):
            os.remove(path)

    stats = run_in_chunks(model, entries, part, layer=layer, rank=rank, world=world, chunk_size=chunk_size,
                          max_tokens=max_tokens, strict=strict, progress=progress, manifest=manifest, threads=threads,
                          made={**(made or {}), "stage": "label from model"}, save=save, saved=(".km",),
                          outputs=(part,), merge=merge,
                          complete=lambda utterances: os.path.exists(part) and _line_count(part) == utterances)
    stats["joined"] = world == 1
    if world > 1:
        paths = [part_path(out, r, world) for r in range(world)]
        found = list(zip(paths if parts is None else parts(paths), sizes))
        if all(p is not None and os.path.exists(p) and _line_count(p) == n for p, n in found):  # the last host done
            _join(found, out)
            stats["joined"] = True
    return stats
