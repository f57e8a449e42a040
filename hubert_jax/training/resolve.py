"""The model a run trains, resolved from its config: the architecture (`model.init_from`'s config.json or the
preset, then `model.overrides`) and the masked-prediction heads' settings."""

from __future__ import annotations

import dataclasses
import logging

from hubert_jax import storage
from hubert_jax.config import SpeechConfig, preset

logger = logging.getLogger(__name__)


def init_from_json(model_cfg) -> dict | None:
    """config.json of `model.init_from`, or None without one."""
    if not model_cfg.get("init_from"):
        return None
    from hubert_jax.config import read_json_object

    path = storage.join(model_cfg.init_from, "config.json")
    if not storage.isfile(path):
        raise FileNotFoundError(f"config.model.init_from={model_cfg.init_from}: no config.json there (expected a "
                                f"hubert-jax or transformers model directory)")
    return read_json_object(path)


def model_config(model_cfg) -> SpeechConfig:
    """The architecture: `model.init_from`'s config.json when set (the model being continued), else the
    preset; then `model.overrides`. An override that is no field of the config is an error."""
    saved = init_from_json(model_cfg)
    base = preset(model_cfg.preset) if saved is None else SpeechConfig.from_dict(saved)
    overrides = dict(model_cfg.overrides)
    unknown = sorted(set(overrides) - type(base).field_names())
    if unknown:
        raise ValueError(f"config.model.overrides: {unknown} are not {type(base).__name__} fields")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    config = base.replace(**overrides)
    config.validate()
    return config


# the heads' settings that a model directory's `hubert_pretraining` fixes (their shapes, and how labels map)
HEAD_FIELDS_FROM_INIT = ("num_classes", "final_dim", "untie_final_proj", "label_offset", "logit_temp", "label_rate")


def with_init_from_heads(cfg):
    """`cfg`, or for masked prediction from a directory with pretraining heads (a converted fairseq HuBERT,
    our export) a copy whose `model.head` takes the directory's settings: the heads' shapes come with their
    weights, and fairseq's label dictionaries fix the cluster counts and the specials' offset. Fields that
    change are logged."""
    if not cfg.model.init_from:
        return cfg
    from hubert_jax.models.pretraining_hubert import HeadConfig
    from hubert_jax.weights.files import PRETRAINING_HEADS

    saved = (init_from_json(cfg.model) or {}).get("hubert_pretraining")
    if not saved or not storage.isfile(storage.join(cfg.model.init_from, PRETRAINING_HEADS)):
        return cfg
    try:
        head = HeadConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{storage.join(cfg.model.init_from, 'config.json')}: {e}") from e
    cfg = cfg.copy_and_resolve_references()
    for name in HEAD_FIELDS_FROM_INIT:
        current, value = cfg.model.head[name], getattr(head, name)
        value = type(current)(value)
        if value != current:
            logger.info("config.model.head.%s: %r -> %r, from %s", name, current, value, cfg.model.init_from)
            cfg.model.head[name] = value
    return cfg


def head_config(model_cfg):
    """The masked-prediction heads' settings of `config.model.head` (unknown keys refused)."""
    from hubert_jax.models.pretraining_hubert import HeadConfig

    fields = {f.name for f in dataclasses.fields(HeadConfig)}
    head = dict(model_cfg.head)
    unknown = sorted(set(head) - fields)
    if unknown:
        raise ValueError(f"config.model.head: unknown keys {unknown} (known: {sorted(fields)})")
    return HeadConfig(**head)
