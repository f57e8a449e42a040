"""The model families, one entry each, and every registry derived from them: config.json's `model_type` ->
config class, the presets, the base model, transformers' class names (`HubertModel`, `WavLMForCTC`) and the
heads each family has, the pretraining model.

A new family is its config class (hubert_jax/config.py), its base model (a `SpeechModel` subclass,
hubert_jax/models/model.py), any module its architecture needs, and one entry in `FAMILIES`. Classes are named
"module:Class" and imported on first use, so that this table sits below the modules that read it (config.py,
the models, the converters) and imports none of them.

"Head" is what a model adds on its encoder (`ForCTC`, transformers' names); a training objective is a *task*
(hubert_jax/training/tasks/).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

# the head kinds transformers has (generic classes in hubert_jax/models/heads.py)
HEAD_KINDS = ("ForCTC", "ForSequenceClassification", "ForAudioFrameClassification", "ForXVector")


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: everything that differs between HuBERT, WavLM and wav2vec 2.0 for loading, saving and
    building, declared once."""
    model_type: str  # config.json's model_type
    config: str  # "module:Class" of its SpeechConfig subclass
    base_model: str  # "module:Class" of its SpeechModel subclass
    prefix: str  # transformers' class names: f"{prefix}Model", f"{prefix}ForCTC"
    heads: tuple[str, ...]  # the HEAD_KINDS transformers has for it
    pretraining: str  # "module:Class" of its pretraining model (heads on the encoder)
    presets: tuple[tuple[str, str], ...]  # (preset name, config classmethod): the released sizes


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("hubert", config="hubert_jax.config:HubertConfig", base_model="hubert_jax.models.model:HubertModel",
           prefix="Hubert", heads=("ForCTC", "ForSequenceClassification"),
           pretraining="hubert_jax.models.pretraining_hubert:HubertForPreTraining",
           presets=(("hubert-base", "base"), ("hubert-large", "large"), ("hubert-xlarge", "xlarge"),
                    ("hubert-base-korean", "korean_base"), ("hubert-large-korean", "korean_large"),
                    ("distilhubert", "distilhubert"))),
    Family("wavlm", config="hubert_jax.config:WavLMConfig", base_model="hubert_jax.models.model:WavLMModel",
           prefix="WavLM", heads=HEAD_KINDS,
           pretraining="hubert_jax.models.pretraining_hubert:HubertForPreTraining",  # masked prediction
           presets=(("wavlm-base", "base"), ("wavlm-base-plus", "base_plus"), ("wavlm-large", "large"))),
    Family("wav2vec2", config="hubert_jax.config:Wav2Vec2Config", base_model="hubert_jax.models.model:Wav2Vec2Model",
           prefix="Wav2Vec2", heads=HEAD_KINDS,
           pretraining="hubert_jax.models.pretraining_w2v2:Wav2Vec2ForPreTraining",
           presets=(("wav2vec2-base", "base"), ("wav2vec2-large", "large"), ("wav2vec2-xlsr-53", "xlsr_53"),
                    ("wav2vec2-xls-r-300m", "xls_r_300m"), ("wav2vec2-xls-r-1b", "xls_r_1b"),
                    ("wav2vec2-xls-r-2b", "xls_r_2b"))),
)}


def family(model_type: str) -> Family:
    """The entry of config.json's `model_type`; ValueError naming the known ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"unsupported model_type {model_type!r}: expected one of {sorted(FAMILIES)}") from None


@functools.cache
def load(reference: str):
    """The object of a "module:Class" reference."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def config_class(model_type: str):
    """The family's SpeechConfig subclass (HubertConfig, ...)."""
    return load(family(model_type).config)


def base_model_class(model_type: str):
    """The family's base model (HubertModel, ...)."""
    return load(family(model_type).base_model)


def pretraining_class(model_type: str):
    """The family's pretraining model (HubertForPreTraining, Wav2Vec2ForPreTraining)."""
    return load(family(model_type).pretraining)


def head_class(kind: str, model_type: str):
    """The `kind` head of a family, e.g. ("ForCTC", "wavlm") -> WavLMForCTC; "ForPreTraining": its pretraining
    model. ValueError when transformers has no such head for the family."""
    if kind == "ForPreTraining":
        return pretraining_class(model_type)
    if kind not in family(model_type).heads:
        raise ValueError(f"transformers has no {kind} head for model_type {model_type!r} (it has "
                         f"{', '.join(family(model_type).heads)})")
    return head_classes()[f"{FAMILIES[model_type].prefix}{kind}"]


def head_classes() -> dict:
    """transformers class name -> our class, for every family's heads (`HubertForCTC`, ...; made from this
    table in hubert_jax/models/heads.py)."""
    return load("hubert_jax.models.heads:HEAD_CLASSES")


@functools.cache
def architectures() -> dict:
    """config.json `architectures` name -> our class: the base models, the heads, and the pretraining models
    that write their own name (HubertForPreTraining writes its base model's, which transformers loads)."""
    names = {f"{f.prefix}Model": base_model_class(f.model_type) for f in FAMILIES.values()}
    names.update(head_classes())
    for f in FAMILIES.values():
        cls = pretraining_class(f.model_type)
        if not hasattr(cls, "architecture"):
            names[cls.__name__] = cls
    return names
