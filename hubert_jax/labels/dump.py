"""Layer-L features of a hubert-jax model over a manifest, for the next k-means iteration.

Work is split like fairseq's `nshard`/`rank`: host `rank` of `world` takes a contiguous slice of the
manifest, so concatenating the shards in rank order restores manifest order. Features are written in
chunks of utterances (`{prefix}.chunk{i}.npy/.len`), each atomically; a rerun skips the chunks already
on disk, so an interrupted dump resumes. The finished shard is `{prefix}.npy` + `{prefix}.len`, joined
from the chunks one at a time.

Shapes: each chunk's utterances go through `hubert_jax.inference.extract`, padded up to a few bucket
lengths and batched by `max_tokens` samples; the features equal each utterance run alone (fairseq's
dump), group-norm extractors included.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from hubert_jax.data.manifest import Entry, iter_audio, read_skipped
from hubert_jax.labels.features import FeatureWriter, load_features, save_features, split_utterances
from hubert_jax.lengths import SAMPLE_RATE


def shard_range(total: int, world: int, rank: int) -> tuple[int, int]:
    """fairseq's get_shard_range: contiguous, near-equal slices."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    return round(total / world * rank), round(total / world * (rank + 1))


def _chunk_features(model, layer: int, audio: list, max_tokens: int) -> list:
    from hubert_jax.inference import extract

    # full rows: a shard's features equal the one-host dump's bit for bit (tests/test_dump.py)
    return extract(model, audio, layer=layer, max_tokens=max_tokens, full_rows=True)


def dump_features(model, entries: list[Entry], prefix: str, *, layer: int, rank: int = 0, world: int = 1,
                  chunk_size: int = 64, max_tokens: int = 64 * SAMPLE_RATE, strict: bool = False, progress=None,
                  manifest: str = "manifest", made: dict | None = None, threads: int = 4) -> dict:
    """Dump hidden_states[layer] for this rank's slice of `entries`; returns counts for reporting.
    `progress` (hubert_jax.progress.Progress over this rank's utterances) advances per chunk. `made`: what
    else made the output (the model's name, the manifest's digest; provenance.py), recorded beside it with
    the model's weights digest, the layer and the slicing; chunks or a shard already on disk are reused
    only when they were made the same way (else StaleOutput names what differs). `threads`: audio files read
    and decoded ahead in parallel."""
    dims = model.config.hidden_size

    def save(path, chunk, features, skipped):
        save_features(path, [features.get(e.line, np.zeros((0, dims), np.float32)) for e in chunk], dims,
                      skipped=skipped)

    return run_in_chunks(model, entries, prefix, layer=layer, rank=rank, world=world, chunk_size=chunk_size,
                         max_tokens=max_tokens, strict=strict, progress=progress, manifest=manifest, threads=threads,
                         made={**(made or {}), "stage": "dump"}, save=save, saved=(".npy", ".len"),
                         outputs=(prefix + ".npy", prefix + ".len"), merge=lambda count: _merge(prefix, count, dims),
                         complete=lambda utterances: _complete(prefix, utterances))


def run_in_chunks(model, entries, prefix, *, layer, rank, world, chunk_size, max_tokens, strict, progress, manifest,
                  made, save, saved, outputs, merge, complete, threads: int) -> dict:
    """The model's hidden_states[layer] over this rank's slice of `entries`, `chunk_size` utterances at a
    time: `save(path, chunk, {manifest line: features}, {index in chunk: why skipped})` writes chunk i under
    `{prefix}.chunk{i:05d}` (done when every `path + s` of `saved` exists: a rerun skips it), then
    `merge(chunks)` joins them into the files `outputs`; `complete(utterances)` says they are already there. One writer
    per prefix (a lock beside it); `made` (with the model's weights digest, the layer and the slicing) is
    recorded, and outputs made otherwise are refused (provenance.StaleOutput). `threads` audio files are read
    and decoded ahead in parallel."""
    from hubert_jax.training.workdir_lock import WorkdirLock

    if not 0 <= layer <= model.config.num_hidden_layers:
        raise ValueError(f"layer {layer}: the model has hidden states 0..{model.config.num_hidden_layers}")
    directory, name = os.path.split(os.path.abspath(prefix))
    # one writer per shard: a second run on the same --out is refused naming the first
    with WorkdirLock(directory, name=f"{name}.lock", what=f"{prefix} (its chunks and shard)", option="--out"):
        return _run_chunks(model, entries, prefix, layer=layer, rank=rank, world=world, chunk_size=chunk_size,
                           max_tokens=max_tokens, strict=strict, progress=progress, manifest=manifest, made=made,
                           save=save, saved=saved, outputs=outputs, merge=merge, complete=complete, threads=threads)


def _run_chunks(model, entries, prefix, *, layer, rank, world, chunk_size, max_tokens, strict, progress, manifest,
                made, save, saved, outputs, merge, complete, threads):
    from hubert_jax.labels import provenance

    start, end = shard_range(len(entries), world, rank)
    mine = entries[start:end]
    existing = sorted(glob.glob(f"{glob.escape(prefix)}.chunk*")) + [p for p in outputs if os.path.exists(p)]
    provenance.claim(prefix, {**made, "weights": provenance.weights_digest(model),
                              "model_type": model.config.model_type, "layer": layer, "rank": rank, "world": world,
                              "utterances": len(mine), "chunk_size": chunk_size}, existing)
    if complete(len(mine)):
        return {"utterances": len(mine), "chunks": 0, "computed": 0, "skipped": 0, "audio_seconds": 0.0}
    os.makedirs(os.path.dirname(os.path.abspath(prefix)) or ".", exist_ok=True)
    chunks = [mine[i: i + chunk_size] for i in range(0, len(mine), chunk_size)]
    computed, skipped_files, seconds = 0, [], 0.0
    for index, chunk in enumerate(chunks):
        path = f"{prefix}.chunk{index:05d}"
        if progress is not None:
            progress.update(len(chunk))
        if all(os.path.exists(path + s) for s in saved):
            continue  # done before an interruption
        stream, skipped = iter_audio(chunk, strict=strict, manifest=manifest, threads=threads)
        read = list(stream)
        # keyed by manifest line: a file may be listed twice
        by_line = dict(zip([entry.line for entry, _ in read],
                           _chunk_features(model, layer, [audio for _, audio in read], max_tokens)))
        seconds += sum(len(audio) for _, audio in read) / SAMPLE_RATE
        skipped_files += list(skipped.values())
        save(path, chunk, by_line, skipped)
        computed += 1
    merge(len(chunks))
    return {"utterances": len(mine), "chunks": len(chunks), "computed": computed, "skipped": len(skipped_files),
            "audio_seconds": seconds}


def _complete(prefix: str, utterances: int) -> bool:
    if not (os.path.exists(prefix + ".npy") and os.path.exists(prefix + ".len")):
        return False
    with open(prefix + ".len") as f:
        return sum(1 for _ in f) == utterances


def _merge(prefix: str, num_chunks: int, dims: int) -> None:
    """The chunks joined into the shard, one chunk read at a time (memory: a chunk, not the shard)."""
    with FeatureWriter(prefix, dims) as out:
        for i in range(num_chunks):
            chunk = f"{prefix}.chunk{i:05d}"
            feats, lengths = load_features(chunk)
            skipped = read_skipped(f"{chunk}.skipped")
            for index, utterance in enumerate(split_utterances(feats, lengths)):
                out.add(utterance, skipped=skipped.get(index))
            del feats  # the memory map: closed before the next chunk opens
    for path in glob.glob(f"{glob.escape(prefix)}.chunk*"):
        os.remove(path)
