"""The FlaxAutoModel classes: the model class a directory's config.json names (its `model_type`, and for
`load_any` its `architectures`), loaded by hubert_jax/pretrained.py."""

from __future__ import annotations

from hubert_jax import families
from hubert_jax.config import SpeechConfig
from hubert_jax.pretrained import from_pretrained, resolve


class _AutoBase:
    """Picks the model class from config.json's model_type and the class's `head` (hubert_jax/families.py)."""

    head: str = ""  # "" (the base model), a families.HEAD_KINDS entry, or "ForPreTraining"

    @classmethod
    def model_class(cls, config: SpeechConfig):
        if cls.head == "":
            return families.base_model_class(config.model_type)
        try:
            return families.head_class(cls.head, config.model_type)
        except ValueError:
            raise ValueError(f"{cls.__name__}: transformers has no {cls.head} head for model_type "
                             f"{config.model_type!r}") from None

    @classmethod
    def from_pretrained(cls, path_or_id, *, revision=None, cache_dir=None, local_files_only=False, **kw):
        """The model of a directory (or hub id), its class picked from config.json; `kw` as
        hubert_jax.pretrained.from_pretrained (mesh, rules, dtype, scan_layers, ...)."""
        directory = resolve(path_or_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        config = SpeechConfig.from_pretrained(directory)
        return from_pretrained(cls.model_class(config), directory, **kw)


class FlaxAutoModel(_AutoBase):
    """The base model (HubertModel, WavLMModel, Wav2Vec2Model) of a directory."""
    head = ""


class FlaxAutoModelForCTC(_AutoBase):
    """A CTC model (speech recognition)."""
    head = "ForCTC"


class FlaxAutoModelForAudioClassification(_AutoBase):
    """One label per utterance."""
    head = "ForSequenceClassification"


class FlaxAutoModelForAudioFrameClassification(_AutoBase):
    """One label per frame."""
    head = "ForAudioFrameClassification"


class FlaxAutoModelForAudioXVector(_AutoBase):
    """Speaker embeddings (x-vectors)."""
    head = "ForXVector"


class FlaxAutoModelForPreTraining(_AutoBase):
    """The encoder with its pretraining heads (masked prediction or wav2vec 2.0's contrastive heads)."""
    head = "ForPreTraining"


def load_any(path_or_id, **kw):
    """The class named by config.json's `architectures` (the base model when it names none we know)."""
    directory = resolve(path_or_id, revision=kw.pop("revision", None), cache_dir=kw.pop("cache_dir", None),
                        local_files_only=kw.pop("local_files_only", False))
    config = SpeechConfig.from_pretrained(directory)
    names = config.extra.get("architectures") or []
    known = families.architectures()
    cls = next((known[n] for n in names if n in known), families.base_model_class(config.model_type))
    return from_pretrained(cls, directory, **kw)
