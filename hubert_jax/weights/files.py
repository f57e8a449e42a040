"""Reading and writing weight files: safetensors (sharded or not, no torch needed) and pickled torch
checkpoints (through `torch.load(weights_only=True)`). Every failure names the file."""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import numpy as np

# our own layout: Flax names and layouts, always per-layer (unrolled) so any model layout loads it
FLAX_WEIGHTS = "flax_model.safetensors"
PRETRAINING_HEADS = "pretraining_heads.safetensors"  # a pretraining model's heads, beside its encoder
FLAX_INDEX = "flax_model.safetensors.index.json"
# transformers' files
TORCH_SAFETENSORS = "model.safetensors"
TORCH_SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
FLAX_MSGPACK = "flax_model.msgpack"

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A safetensors file as numpy arrays (ValueError naming the file when it is not one)."""
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def read_torch_file(path: str) -> dict[str, object]:
    """A pickled torch checkpoint, loaded safely (tensors and plain containers only)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a pickled PyTorch checkpoint: reading it needs torch installed") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e


def read_flax_msgpack(path: str) -> dict[str, np.ndarray]:
    """A transformers v4 Flax checkpoint (FlaxWav2Vec2*), in our names and layouts.

    Its names already match ours ('wav2vec2.encoder.layers.0.attention.q_proj.kernel'); only the
    weight-normed positional conv keeps torch's (out, in/groups, K) layout there, so it is transposed.
    """
    from flax.serialization import msgpack_restore

    try:
        with open(path, "rb") as f:
            tree = msgpack_restore(f.read())
    except Exception as e:
        raise ValueError(f"{path}: not a readable Flax msgpack checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(value, name)
            else:
                value = np.asarray(value)
                if name.endswith((".weight_v", ".weight_g")):
                    value = value.transpose(2, 1, 0)
                flat[name] = value

    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a tree of parameters, got {type(tree).__name__}")
    walk(tree, "")
    return flat


def _read_index(directory: str, index_name: str, reader: Callable[[str], Mapping]) -> dict:
    index_path = os.path.join(directory, index_name)
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: not a valid shard index ({e})") from e
    out = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(directory, shard)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{index_path} lists {shard}, which is missing")
        out.update(reader(path))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise ValueError(f"{index_path}: tensors listed but not found in the shards: {', '.join(missing)}")
    return out


def find_weights(directory: str) -> tuple[str, str]:
    """(kind, file) of the weights in a model directory; kind is 'flax', 'torch' or 'msgpack'."""
    for name, kind in ((FLAX_INDEX, "flax"), (FLAX_WEIGHTS, "flax"), (TORCH_SAFETENSORS_INDEX, "torch"),
                       (TORCH_SAFETENSORS, "torch"), (TORCH_BIN_INDEX, "torch"), (TORCH_BIN, "torch"),
                       (FLAX_MSGPACK, "msgpack")):
        if os.path.exists(os.path.join(directory, name)):
            return kind, name
    raise FileNotFoundError(
        f"{directory}: no weights found (looked for {FLAX_WEIGHTS}, {TORCH_SAFETENSORS}, {TORCH_BIN}, their "
        f"sharded indexes, and {FLAX_MSGPACK})")


def read_weights(directory: str, name: str) -> dict:
    """All tensors of one weight file or sharded index in `directory`."""
    reader = read_torch_file if name.startswith(TORCH_BIN) else read_safetensors
    if name.endswith(".index.json"):
        return _read_index(directory, name, reader)
    return reader(os.path.join(directory, name))


def write_safetensors(flat: Mapping[str, np.ndarray], directory: str, base: str, *,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, metadata: dict | None = None) -> list[str]:
    """`base`.safetensors, or `base`-0000i-of-0000N.safetensors shards plus `base`.safetensors.index.json
    (transformers' index format) when the tensors exceed `max_shard_bytes`."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in flat.items()}
    shards, current, size = [], {}, 0
    for name, value in arrays.items():
        if current and size + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, f"{base}.safetensors"), metadata=metadata)
        return [f"{base}.safetensors"]
    names = [f"{base}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for shard_name, shard in zip(names, shards):
        save_file(shard, os.path.join(directory, shard_name), metadata=metadata)
        weight_map.update({k: shard_name for k in shard})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in arrays.values()))}, "weight_map": weight_map}
    with open(os.path.join(directory, f"{base}.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names + [f"{base}.safetensors.index.json"]
