"""Writing model directories for other tools: transformers PyTorch weights (`model.safetensors`, torch names,
float32, no torch needed), the processor files conversions carry along, and a run's export written once by
process 0 of a multi-host run."""

from __future__ import annotations

import os
import shutil

import numpy as np

from hubert_jax.weights import files as io
from hubert_jax.weights.state import flat_to_torch, model_to_flat
from hubert_jax.pretrained import write_config, write_directory


def write_transformers_files(model, directory: str, *, max_shard_bytes: int = io.DEFAULT_MAX_SHARD_BYTES,
                             old_weight_norm: bool = False) -> None:
    """config.json + model.safetensors (torch names, float32) into an existing directory."""
    flat = model_to_flat(model)
    state = {k: v.astype(np.float32) for k, v in flat_to_torch(flat, model, old_weight_norm=old_weight_norm).items()}
    write_config(model, directory)
    io.write_safetensors(state, directory, io.TORCH_SAFETENSORS[: -len(".safetensors")],
                         max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})


def export_to_transformers(model, directory, *, max_shard_bytes: int = io.DEFAULT_MAX_SHARD_BYTES,
                           overwrite: bool = True, old_weight_norm: bool = False) -> str:
    """A transformers PyTorch directory (config.json + model.safetensors, float32) that
    `transformers.AutoModel*.from_pretrained` loads. Needs no torch."""
    return write_directory(directory, lambda tmp: write_transformers_files(
        model, tmp, max_shard_bytes=max_shard_bytes, old_weight_norm=old_weight_norm), overwrite=overwrite)


# files of the feature extractor and tokenizer, carried along by conversions
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "vocab.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")  # processor_config.json: transformers 5's


def copy_processor_files(src: str, dst: str) -> list[str]:
    """Copy the processor files (feature extractor, tokenizer) present in `src` to `dst`; returns their names."""
    copied = []
    for name in PROCESSOR_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def write_directory_from_run(directory: str, fill) -> None:
    """`write_directory(directory, fill)` on process 0; every process waits until it is written."""
    import jax

    from hubert_jax.distributed import sync

    if jax.process_index() == 0:
        write_directory(directory, fill)
    sync(f"export {directory}")
