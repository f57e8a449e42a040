"""Layer-L features of a hubert-jax model over a manifest, for the next k-means iteration.

Work is split like fairseq's `nshard`/`rank`: host `rank` of `world` takes a contiguous slice of the
manifest, so concatenating the shards in rank order restores manifest order. Features are written in
chunks of utterances (`{prefix}.chunk{i}.npy/.len`), each atomically; a rerun skips the chunks already
on disk, so an interrupted dump resumes. The finished shard is `{prefix}.npy` + `{prefix}.len`.

Shapes: every utterance is padded up to a multiple of `bucket` samples (with an attention mask) so only
a few shapes are compiled. For group-norm feature extractors the padding slightly changes the first
conv's statistics; `bucket=0` runs every utterance at its exact length (fairseq's numbers, one compile
per distinct length).
"""

from __future__ import annotations

import glob
import os

import numpy as np

from hubert_jax.data.manifest import Entry, iter_audio
from hubert_jax.labels.features import load_features, save_features, split_utterances


def shard_range(total: int, world: int, rank: int) -> tuple[int, int]:
    """fairseq's get_shard_range: contiguous, near-equal slices."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    return round(total / world * rank), round(total / world * (rank + 1))


def _layer_features(model, layer: int, audio: np.ndarray, bucket: int) -> np.ndarray:
    import jax.numpy as jnp

    from hubert_jax.lengths import feat_extract_output_lengths

    n = len(audio)
    padded_len = n if bucket <= 0 else -(-n // bucket) * bucket
    x = np.zeros((1, padded_len), np.float32)
    x[0, :n] = audio
    mask = None if padded_len == n else (np.arange(padded_len) < n).astype(np.int32)[None]
    out = _forward(model, jnp.asarray(x), None if mask is None else jnp.asarray(mask))
    frames = int(feat_extract_output_lengths(model.config, n))
    return np.asarray(out[layer][0, :frames], np.float32)


_FORWARD = []


def _forward(model, x, mask):
    if not _FORWARD:  # one jitted function; nnx.jit caches a compilation per model structure and shape
        from flax import nnx

        _FORWARD.append(nnx.jit(lambda m, x, mask: m(x, attention_mask=mask, output_hidden_states=True)
                                .hidden_states))
    return _FORWARD[0](model, x, mask)


def dump_features(model, entries: list[Entry], prefix: str, *, layer: int, rank: int = 0, world: int = 1,
                  chunk_size: int = 64, bucket: int = 16000, strict: bool = False, progress=None) -> dict:
    """Dump hidden_states[layer] for this rank's slice of `entries`; returns counts for reporting.
    `progress` (hubert_jax.progress.Progress over this rank's utterances) advances per chunk."""
    if not 0 <= layer <= model.config.num_hidden_layers:
        raise ValueError(f"layer {layer}: the model has hidden states 0..{model.config.num_hidden_layers}")
    start, end = shard_range(len(entries), world, rank)
    mine = entries[start:end]
    if _complete(prefix, len(mine)):
        return {"utterances": len(mine), "chunks": 0, "computed": 0, "skipped": 0, "audio_seconds": 0.0}
    os.makedirs(os.path.dirname(os.path.abspath(prefix)) or ".", exist_ok=True)
    chunks = [mine[i: i + chunk_size] for i in range(0, len(mine), chunk_size)]
    computed, skipped_files, seconds = 0, [], 0.0
    for index, chunk in enumerate(chunks):
        path = f"{prefix}.chunk{index:05d}"
        if progress is not None:
            progress.update(len(chunk))
        if os.path.exists(path + ".npy") and os.path.exists(path + ".len"):
            continue  # done before an interruption
        stream, skipped = iter_audio(chunk, strict=strict)
        by_line = {}  # keyed by manifest line: a file may be listed twice
        for entry, audio in stream:
            by_line[entry.line] = _layer_features(model, layer, audio, bucket)
            seconds += len(audio) / 16000
        skipped_files += skipped
        dims = model.config.hidden_size
        save_features(path, [by_line.get(e.line, np.zeros((0, dims), np.float32)) for e in chunk], dims)
        computed += 1
    _merge(prefix, len(chunks), model.config.hidden_size)
    return {"utterances": len(mine), "chunks": len(chunks), "computed": computed, "skipped": len(skipped_files),
            "audio_seconds": seconds}


def _complete(prefix: str, utterances: int) -> bool:
    if not (os.path.exists(prefix + ".npy") and os.path.exists(prefix + ".len")):
        return False
    with open(prefix + ".len") as f:
        return sum(1 for _ in f) == utterances


def _merge(prefix: str, num_chunks: int, dims: int) -> None:
    parts = [load_features(f"{prefix}.chunk{i:05d}") for i in range(num_chunks)]
    save_features(prefix, [u for feats, lengths in parts for u in split_utterances(feats, lengths)], dims)
    for path in glob.glob(f"{glob.escape(prefix)}.chunk*"):
        os.remove(path)
