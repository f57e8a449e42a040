"""`from_pretrained` / `save_pretrained`, the load/save core every model class shares (the FlaxAutoModel classes,
which pick the class, are hubert_jax/auto.py; export to transformers lives in
hubert_jax/export.py, conversion of original fairseq/unilm/s3prl checkpoints in hubert_jax/convert/original.py).

A hubert-jax directory holds `config.json` and `flax_model.safetensors` (sharded past a size limit), with
Flax names in the per-layer layout. `from_pretrained` also reads transformers PyTorch directories
(`model.safetensors` or `pytorch_model.bin`, sharded or not) and converts them on the fly. A model with
pretraining heads (`HubertForPreTraining`) keeps its encoder there, in the base model's names, and its heads
beside it in `pretraining_heads.safetensors`, their settings under `hubert_pretraining` in config.json: the
encoder loads anywhere a base model does (transformers' `HubertModel` / `WavLMModel` included).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Mapping

import numpy as np
from flax import nnx

from hubert_jax.config import SpeechConfig
from hubert_jax import families, storage
from hubert_jax.weights import files as io
from hubert_jax.weights.state import (check_flat, flat_state, load_flat, model_to_flat, per_layer_names,
                                      stack_layers, torch_to_flat, unstack_layers)

logger = logging.getLogger(__name__)

_OPTION_KEYS = ("dtype", "param_dtype", "attention_impl", "scan_layers", "remat_policy", "precision")


# ----------------------------------------------------------------------------- locating a checkpoint
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells model ids


def looks_like_hub_id(path: str) -> bool:
    """Whether `path` reads as a Hugging Face Hub id (owner/name) rather than a local path."""
    return bool(_HUB_ID.match(path)) and not path.startswith((".", "~"))


def resolve(path_or_id: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None,
            local_files_only: bool = False) -> str:
    """A local directory as is; an argument that looks like a hub id (`owner/name`) through huggingface_hub
    (cache first, offline when cached); anything else that is no directory is "no such directory"."""
    path = os.fspath(path_or_id)
    if storage.is_remote(path):
        return _download(path, cache_dir)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path} is a file: from_pretrained expects a model directory or a hub id")
    if not looks_like_hub_id(path):
        raise FileNotFoundError(f"{path}: no such directory ({os.path.abspath(path)}). from_pretrained takes a "
                                f"model directory, or a hub id such as facebook/hubert-base-ls960")
    where = f"{path}: no such local directory ({os.path.abspath(path)}), and as a hub id"
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(f"{where} it needs huggingface_hub, which is not installed") from e
    patterns = ["*.json", "*.safetensors", "*.bin", "*.msgpack", "*.txt"]
    try:  # the cache first: works offline once downloaded
        return snapshot_download(path, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                 local_files_only=True)
    except Exception as e:
        if local_files_only:
            raise FileNotFoundError(f"{where} it is not in the hub cache ({type(e).__name__})") from None
    try:
        return snapshot_download(path, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except Exception as e:
        raise FileNotFoundError(f"{where} it could not be fetched ({type(e).__name__}: {str(e)[:300]})") from None


def _download(path: str, cache_dir: str | None) -> str:
    """A gs:// model directory copied whole into a local folder (under `cache_dir`, or the temporary folder), which
    the loaders then read as any directory."""
    import hashlib
    import json

    from hubert_jax.config import workdir_is_no_model

    try:
        config = json.loads(storage.read_bytes(storage.join(path, "config.json")))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no config.json there, so no model directory (an export that was cut short "
                                f"has none either: export it again)") from None
    if "model_type" not in config and storage.listdir(storage.join(path, "checkpoints")):
        raise workdir_is_no_model(path)  # a training workdir: refused before copying its steps

    # one folder per path and process, replaced at each load: repeated loads do not pile up copies
    key = f"{hashlib.sha256(path.encode()).hexdigest()[:16]}-{os.getpid()}"
    local = os.path.join(cache_dir or os.path.join(tempfile.gettempdir(), "hubert-jax"), "gs", key)
    shutil.rmtree(local, ignore_errors=True)
    return storage.download_folder(path, local)


# ----------------------------------------------------------------------------- base model vs head prefixes
def _head_prefix(model) -> str | None:
    """'hubert.' for a head model, None for a base model."""
    base = getattr(model, "base_model", model)
    return None if base is model else model.base_model_prefix + "."


def _adapt_prefix(raw: Mapping[str, object], model) -> tuple[dict, set[str]]:
    """Match a checkpoint of a base model to a head model and the other way round (like transformers).

    Returns the renamed tensors and the model names allowed to stay at their initial values (a new head).
    """
    prefix = _head_prefix(model)
    config_prefix = model.config.base_model_prefix + "."
    if prefix is None:  # base model: strip the prefix of a head checkpoint, drop its head
        if any(k.startswith(config_prefix) for k in raw):
            dropped = sorted(k for k in raw if not k.startswith(config_prefix))
            if dropped:
                logger.info("ignoring head weights not used by %s: %s", type(model).__name__, ", ".join(dropped))
            return {k[len(config_prefix):]: v for k, v in raw.items() if k.startswith(config_prefix)}, set()
        return dict(raw), set()
    if not any(k.startswith(prefix) for k in raw):  # head model from a base checkpoint
        raw = {prefix + k: v for k, v in raw.items()}
    head = {name for name in per_layer_names(model) if not name.startswith(prefix)}
    return dict(raw), head


def _drop_foreign_head(flat: dict, model, allowed_missing: set[str]) -> dict:
    """Weights of another task's head (e.g. `lm_head` when loading a classifier) are reported and dropped."""
    prefix = _head_prefix(model)
    if prefix is None:
        return flat
    names = per_layer_names(model)
    foreign = sorted(k for k in flat if not k.startswith(prefix) and k not in names)
    if foreign:
        logger.warning("checkpoint head weights not used by %s: %s", type(model).__name__, ", ".join(foreign))
    missing_head = sorted(n for n in allowed_missing if n not in flat)
    if missing_head:
        logger.warning("%s: newly initialised (not in the checkpoint): %s", type(model).__name__,
                       ", ".join(missing_head))
    return {k: v for k, v in flat.items() if k not in foreign}


# ----------------------------------------------------------------------------- loading
def checkpoint_flat(model, directory: str) -> tuple[dict, set[str], str]:
    """The directory's weights in `model`'s names and layout (per-layer or stacked), the names allowed to
    stay at their initial values (a new head), and the file they came from. `model` may be abstract."""
    kind, name = io.find_weights(directory)
    source = os.path.join(directory, name)
    raw = io.read_flax_msgpack(source) if kind == "msgpack" else io.read_weights(directory, name)
    raw, allowed = _adapt_prefix(raw, model)
    if kind == "torch":
        flat = torch_to_flat(raw, model, stacked=False)
    else:
        flat = {k: np.asarray(v) for k, v in raw.items()}
    if getattr(model, "heads_file", None):
        flat.update(_read_heads(model, directory))
    flat = _drop_foreign_head(flat, model, allowed)
    if getattr(model.opts, "scan_layers", False):
        flat = stack_layers(flat, model.config.num_hidden_layers)
    return flat, allowed, source


def _head_names(model) -> dict[str, tuple]:
    """The names and shapes of a head model's weights outside its base model."""
    prefix = model.base_model_prefix + "."
    return {name: tuple(var.shape) for name, var in flat_state(model).items() if not name.startswith(prefix)}


def _read_heads(model, directory: str) -> dict:
    """The pretraining heads beside the encoder (`model.heads_file`), checked against the model's; none when
    the directory has no such file (the heads then start fresh, with a warning)."""
    path = os.path.join(directory, model.heads_file)
    if not os.path.isfile(path):
        return {}
    heads = io.read_weights(directory, model.heads_file)
    out = {}
    for name, shape in _head_names(model).items():
        if name not in heads:
            raise ValueError(f"{path}: no {name}")
        if tuple(heads[name].shape) != shape:
            raise ValueError(f"{path}: {name} has shape {tuple(heads[name].shape)}, the model's heads "
                             f"(config.model.head or hubert_pretraining: num_classes, final_dim, untie_final_proj) "
                             f"make {shape}")
        out[name] = np.asarray(heads[name])
    return out


def load_weights_into(model, directory: str) -> None:
    """Load a directory's weights (ours or transformers') into an existing model in place, its names and shapes
    checked. A gs:// directory is copied to a local folder first (resolve)."""
    if storage.is_remote(os.fspath(directory)):
        directory = resolve(directory)
    flat, allowed, source = checkpoint_flat(model, directory)
    load_flat(model, flat, allow_missing=allowed, source=source)


def _sharded_from_pretrained(build, directory: str, mesh, rules):
    """Build the model abstractly and place each checkpoint tensor straight into its shards: each device
    receives only its slice of the one host copy (the rules map logical axes onto the mesh)."""
    import jax

    from hubert_jax.sharding import DEFAULT_RULES, variable_sharding

    rules = DEFAULT_RULES if rules is None else rules
    abstract = nnx.eval_shape(build)
    flat, allowed, source = checkpoint_flat(abstract, directory)
    targets = flat_state(abstract)
    check_flat(targets, flat, allow_missing=allowed, source=source)
    shardings = {name: variable_sharding(var, mesh, rules) for name, var in targets.items()}
    names = list(targets)
    initial = {}
    if any(name not in flat for name in names):  # a new head: initialise the whole model, sharded
        init = jax.jit(lambda: [v.get_value() for v in flat_state(build()).values()],
                       out_shardings=[shardings[n] for n in names])
        initial = dict(zip(names, init()))
    graphdef, state = nnx.split(abstract)
    for path, var in nnx.to_flat_state(state):
        name = ".".join(map(str, path))
        if name in flat:
            host, dtype = flat[name], var.get_value().dtype
            value = jax.make_array_from_callback(tuple(var.shape), shardings[name],
                                                 lambda index, a=host, d=dtype: np.asarray(a[index], dtype=d))
        else:
            value = initial[name]
        var.set_value(value)
    return nnx.merge(graphdef, state)


def from_pretrained(cls, path_or_id, *, rngs: nnx.Rngs | None = None, revision=None, cache_dir=None,
                    local_files_only: bool = False, mesh=None, rules=None, **options):
    """Build `cls` from the directory's config.json and fill it with the directory's weights.

    With `mesh`, parameters are created as sharded arrays (logical axes mapped by `rules`, default
    `hubert_jax.sharding.DEFAULT_RULES`), with no full copy on any device."""
    unknown = set(options) - set(_OPTION_KEYS)
    if unknown:
        raise TypeError(f"from_pretrained got unexpected options {sorted(unknown)}; known: {_OPTION_KEYS}")
    directory = resolve(path_or_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config = SpeechConfig.from_pretrained(directory)
    seed = rngs if rngs is not None else nnx.Rngs(0)
    if mesh is not None:
        key = seed.params()
        return _sharded_from_pretrained(lambda: cls(config, rngs=nnx.Rngs(params=key), **options), directory,
                                        mesh, rules)
    model = cls(config, rngs=seed, **options)
    load_weights_into(model, directory)
    return model


# ----------------------------------------------------------------------------- saving
def architecture_name(model) -> str:
    """The transformers class name of `model` (what `architectures` in config.json holds)."""
    if getattr(model, "architecture", None):  # a model transformers has no class for names the one it loads as
        return model.architecture
    name = type(model).__name__
    if name.startswith("For"):  # a generic head class: name it after the family
        name = families.family(model.config.model_type).prefix + name
    return name


def write_config(model, directory: str) -> None:
    """config.json: the architecture, what the model adds (`model.config_additions()`: the pretraining heads'
    settings) and the transformers class that loads its weights."""
    data = model.config.to_dict()
    data.update(getattr(model, "config_additions", dict)())
    data["architectures"] = [architecture_name(model)]
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _follow_umask(directory: str) -> None:
    """The modes the user's umask gives new files, for a tree whose writers chose their own (mkdtemp's 0700,
    safetensors' 0600 would hide a model from the other users of a shared cluster)."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_directory(directory: str, fill, *, overwrite: bool = True) -> str:
    """Write a model directory atomically: `fill(tmp)` writes into a temp dir next to `directory`, which then
    replaces it. A failure leaves the previous contents (or nothing) in place, never a half-written directory.
    A gs:// directory is filled locally, then uploaded with config.json last (storage.upload_folder): a copy cut
    short leaves no config.json, so nothing loads half of it."""
    if storage.is_remote(os.fspath(directory)):
        return _write_remote_directory(os.fspath(directory), fill, overwrite=overwrite)
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty (pass overwrite=True / --overwrite)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        fill(tmp)
        _follow_umask(tmp)
        if os.path.isdir(directory):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
            os.rename(directory, os.path.join(old, "previous"))
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _write_remote_directory(directory: str, fill, *, overwrite: bool) -> str:
    if storage.isfile(directory):
        raise ValueError(f"{directory} exists and is not a directory")
    if not overwrite and storage.listdir(directory):
        raise FileExistsError(f"{directory} exists and is not empty (pass overwrite=True / --overwrite)")
    with tempfile.TemporaryDirectory(prefix="hubert-jax-upload-") as tmp:
        fill(tmp)
        storage.upload_folder(tmp, directory)
    return directory


def write_model_files(model, directory: str, max_shard_bytes: int = io.DEFAULT_MAX_SHARD_BYTES) -> None:
    """config.json + flax_model.safetensors (and a head model's `heads_file`) into an existing directory (use
    save_pretrained for atomicity)."""
    flat = model_to_flat(model)
    if getattr(model.opts, "scan_layers", False):
        flat = unstack_layers(flat, model.config.num_hidden_layers)
    write_config(model, directory)
    files = {io.FLAX_WEIGHTS: flat}
    if getattr(model, "heads_file", None):  # the encoder in the base model's names, the heads beside it
        prefix = model.base_model_prefix + "."
        files = {io.FLAX_WEIGHTS: {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)},
                 model.heads_file: {k: v for k, v in flat.items() if not k.startswith(prefix)}}
    for name, tensors in files.items():
        io.write_safetensors(tensors, directory, name[: -len(".safetensors")], max_shard_bytes=max_shard_bytes,
                             metadata={"format": "hubert-jax", "layout": "per-layer"})


def save_pretrained(model, directory, *, max_shard_bytes: int = io.DEFAULT_MAX_SHARD_BYTES,
                    overwrite: bool = True) -> str:
    """config.json + flax_model.safetensors (per-layer layout, parameters in their storage dtype)."""
    return write_directory(directory, lambda tmp: write_model_files(model, tmp, max_shard_bytes),
                           overwrite=overwrite)
