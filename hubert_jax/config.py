"""Model configs, one per family, read and written as transformers' `config.json`.

Every field that changes the architecture in transformers is a dataclass field here with
the same name and default. Keys we do not model (``architectures``, ``dtype``, tokenizer ids
of other tools ...) are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, ClassVar

from hubert_jax import families

CONFIG_NAME = "config.json"


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file holding an object; errors name the file."""
    from hubert_jax import storage

    try:
        with storage.open(os.fspath(path), encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


# transformer sizes of the released checkpoints (the base size is the default of every config)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_XLARGE = dict(hidden_size=1280, num_hidden_layers=48, num_attention_heads=16, intermediate_size=5120)
_XXLARGE = dict(hidden_size=1920, num_hidden_layers=48, num_attention_heads=16, intermediate_size=7680)
# the large recipes: LayerNorm after every conv, pre-LN ("stable") encoder
_PRE_LN = dict(feat_extract_norm="layer", do_stable_layer_norm=True)


def workdir_is_no_model(workdir: str) -> ValueError:
    """The error for a training run's workdir given where a model directory is expected, naming the export."""
    from hubert_jax import storage

    return ValueError(f"{workdir} is a training run's workdir, not a model directory: export its model with "
                      f"`python -m hubert_jax.export {workdir} OUT [--step N]` and load OUT (a finished run has "
                      f"written one to {storage.join(workdir, 'model')})")


@dataclasses.dataclass(eq=False)
class SpeechConfig:
    """Fields shared by HuBERT, WavLM and wav2vec2 (transformers names and defaults)."""

    model_type: ClassVar[str] = ""
    base_model_prefix: ClassVar[str] = ""
    # architecture traits of the family, read by the modules (never a `model_type == ...` branch)
    relative_position_bias: ClassVar[bool] = False  # WavLM's gated relative position bias
    # HuBERT's front end: zero conv biases and a normal projection at init, an optional projection LayerNorm
    # (feat_proj_layer_norm), the raw conv features returned
    hubert_front_end: ClassVar[bool] = False

    vocab_size: int | None = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    id2label: dict[int, str] | None = None
    num_labels: int | None = None  # shorthand for id2label = LABEL_0..LABEL_{n-1}, as in transformers
    # keys of config.json that no field models, written back unchanged
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    # keys transformers derives from other fields: accepted on input, recomputed on output
    _DERIVED: ClassVar[tuple[str, ...]] = ("num_feat_extract_layers", "label2id", "num_labels", "model_type")
    # fields transformers' class does not declare: written only when set, so config.json stays identical
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for name in ("conv_dim", "conv_stride", "conv_kernel", "tdnn_dim", "tdnn_kernel", "tdnn_dilation"):
            if hasattr(self, name):
                setattr(self, name, _as_tuple(getattr(self, name)))
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        elif self.num_labels is not None:
            self.id2label = {i: f"LABEL_{i}" for i in range(int(self.num_labels))}
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(2)}
        if self.num_labels is not None and self.num_labels != len(self.id2label):
            raise ValueError(f"{type(self).__name__}: num_labels={self.num_labels} but id2label has "
                             f"{len(self.id2label)} entries")
        self.num_labels = len(self.id2label)
        self.validate()

    # configs are static attributes of modules, so jit needs them hashable; compare by content
    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash((type(self).__name__, self.to_json_string()))

    # ------------------------------------------------------------------ derived
    @property
    def num_feat_extract_layers(self) -> int:
        """Conv layers of the feature encoder (len(conv_dim))."""
        return len(self.conv_dim)

    @property
    def label2id(self) -> dict[str, int]:
        """Class name -> id, the inverse of id2label."""
        return {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        """Features per attention head: hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per encoder frame: the product of the conv strides (320: 50 Hz at 16 kHz)."""
        return math.prod(self.conv_stride)

    @property
    def has_masked_spec_embed(self) -> bool:
        """Whether the model has SpecAugment's learned mask vector (transformers makes it only when a mask probability
        is set)."""
        return self.mask_time_prob > 0.0 or self.mask_feature_prob > 0.0

    @property
    def uses_adapter(self) -> bool:
        """Whether a wav2vec 2.0 adapter (strided convs after the encoder) is configured."""
        return bool(getattr(self, "add_adapter", False))

    @property
    def encoder_output_size(self) -> int:
        """Features per frame of the model's output: the adapter's width when it has one, else hidden_size."""
        if self.uses_adapter:
            return getattr(self, "output_hidden_size", None) or self.hidden_size
        return self.hidden_size

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the field and what was expected when the fields cannot make a model."""
        def fail(field, expected):
            raise ValueError(f"{type(self).__name__}.{field} = {getattr(self, field)!r}: expected {expected}")

        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)) or not self.conv_dim:
            raise ValueError(
                f"{type(self).__name__}: conv_dim, conv_stride and conv_kernel must be non-empty and of equal "
                f"length, got {len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            fail("feat_extract_norm", "'group' or 'layer'")
        if self.hidden_size % self.num_conv_pos_embedding_groups != 0:
            fail("num_conv_pos_embedding_groups", f"a divisor of hidden_size ({self.hidden_size})")
        if self.num_conv_pos_embeddings < 1:
            fail("num_conv_pos_embeddings", "a kernel size >= 1")
        for name in ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout",
                     "final_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "a probability in [0, 1)")

    # ---------------------------------------------------------------- json i/o
    @classmethod
    def field_names(cls) -> set[str]:
        """The config's own fields (those transformers' config.json carries), without `extra`."""
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides) -> "SpeechConfig":
        """The config of a config.json dict (its model_type's class when called on SpeechConfig); unknown keys are
        kept in `extra` and written back."""
        data = {**data, **overrides}
        model_type = data.get("model_type", cls.model_type)
        if cls is SpeechConfig:
            cls = config_class_for(model_type)
        elif model_type != cls.model_type:
            raise ValueError(f"config has model_type {model_type!r}, but {cls.__name__} expects {cls.model_type!r}")
        known = cls.field_names()
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k not in cls._DERIVED}
        if "id2label" in kwargs and "num_labels" in kwargs:
            kwargs.pop("num_labels")  # transformers lets id2label win
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """config.json's dict, transformers' derived keys (label2id, num_feat_extract_layers) included."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("extra", "num_labels") or (value is None and f.name in self._OMIT_IF_NONE):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = self.label2id
        out["num_feat_extract_layers"] = self.num_feat_extract_layers
        out["model_type"] = self.model_type
        return out

    def replace(self, **changes) -> "SpeechConfig":
        """A copy with `changes` applied (validated like a fresh config)."""
        return type(self).from_dict(self.to_dict(), **changes)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "SpeechConfig":
        """The config of a config.json file."""
        return cls.from_dict(read_json_object(path))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "SpeechConfig":
        """The config.json of a model directory (or the file itself). A training workdir is refused with the export
        command to run."""
        path = os.path.join(directory, CONFIG_NAME) if os.path.isdir(directory) else directory
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}")
        data, workdir = read_json_object(path), os.path.dirname(path)
        if "model_type" not in data and os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise workdir_is_no_model(workdir)
        return cls.from_dict(data)

    def to_json_string(self) -> str:
        """config.json's text: indented, keys sorted."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write config.json into `directory` atomically; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        os.replace(tmp, path)  # never leave a half-written config behind
        return path


@dataclasses.dataclass(eq=False)
class HubertConfig(SpeechConfig):
    """HuBERT's config (transformers' HubertConfig fields and defaults: hubert-base)."""
    model_type: ClassVar[str] = "hubert"
    base_model_prefix: ClassVar[str] = "hubert"
    hubert_front_end: ClassVar[bool] = True

    feat_proj_layer_norm: bool = True
    conv_pos_batch_norm: bool = False
    mask_feature_min_masks: int = 0
    # MMS-style attention adapters: transformers' HuBERT reads it with getattr
    adapter_attn_dim: int | None = None
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("adapter_attn_dim",)

    @classmethod
    def base(cls, **kw):
        """facebook/hubert-base-ls960 (fairseq hubert_base_librispeech)."""
        return cls.from_dict({**kw})

    @classmethod
    def large(cls, **kw):
        """facebook/hubert-large-ll60k."""
        return cls.from_dict({**_LARGE, **_PRE_LN, "conv_bias": True, **kw})

    @classmethod
    def xlarge(cls, **kw):
        """facebook/hubert-xlarge-ll60k."""
        return cls.from_dict({**_XLARGE, **_PRE_LN, "conv_bias": True, **kw})

    @classmethod
    def korean_base(cls, **kw):
        """hubert-base-korean: the base architecture with 8 attention heads, as its model card states."""
        return cls.from_dict({"num_attention_heads": 8, **kw})

    @classmethod
    def korean_large(cls, **kw):
        """hubert-large-korean: the large architecture (24 x 1024, 16 heads)."""
        return cls.large(**kw)

    @classmethod
    def distilhubert(cls, **kw):
        """ntu-spml/distilhubert: 2 post-LN layers, no feature-projection LayerNorm."""
        return cls.from_dict({"num_hidden_layers": 2, "feat_proj_layer_norm": False, **kw})


@dataclasses.dataclass(eq=False)
class _Wav2Vec2LikeConfig(SpeechConfig):
    """Fields wav2vec2 and WavLM share beyond the common ones."""

    num_codevectors_per_group: int = 320
    num_codevector_groups: int = 2
    contrastive_logits_temperature: float = 0.1
    num_negatives: int = 100
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    diversity_loss_weight: float = 0.1
    tdnn_dim: tuple[int, ...] = (512, 512, 512, 512, 1500)
    tdnn_kernel: tuple[int, ...] = (5, 3, 3, 1, 1)
    tdnn_dilation: tuple[int, ...] = (1, 2, 3, 1, 1)
    xvector_output_dim: int = 512
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    output_hidden_size: int | None = None

    def __post_init__(self):
        self.output_hidden_size = self.output_hidden_size or self.hidden_size
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if not (len(self.tdnn_dim) == len(self.tdnn_kernel) == len(self.tdnn_dilation)):
            raise ValueError(
                f"{type(self).__name__}: tdnn_dim, tdnn_kernel and tdnn_dilation must have equal length, got "
                f"{len(self.tdnn_dim)}, {len(self.tdnn_kernel)}, {len(self.tdnn_dilation)}"
            )


@dataclasses.dataclass(eq=False)
class WavLMConfig(_Wav2Vec2LikeConfig):
    """WavLM's config: HuBERT's fields plus the gated relative position bias (num_buckets, max_bucket_distance) and
    the adapter's."""
    model_type: ClassVar[str] = "wavlm"
    base_model_prefix: ClassVar[str] = "wavlm"
    relative_position_bias: ClassVar[bool] = True

    num_buckets: int = 320
    max_bucket_distance: int = 800
    num_ctc_classes: int = 80
    ctc_loss_reduction: str = "mean"

    @classmethod
    def base(cls, **kw):
        """microsoft/wavlm-base."""
        return cls.from_dict({**kw})

    @classmethod
    def base_plus(cls, **kw):
        """microsoft/wavlm-base-plus: same architecture as base, more data."""
        return cls.from_dict({**kw})

    @classmethod
    def large(cls, **kw):
        """microsoft/wavlm-large."""
        return cls.from_dict({**_LARGE, **_PRE_LN, **kw})


@dataclasses.dataclass(eq=False)
class Wav2Vec2Config(_Wav2Vec2LikeConfig):
    """wav2vec 2.0 / XLS-R's config: the encoder's fields plus the quantizer, the contrastive loss and the adapter's."""
    model_type: ClassVar[str] = "wav2vec2"
    base_model_prefix: ClassVar[str] = "wav2vec2"

    feat_quantizer_dropout: float = 0.0
    mask_feature_min_masks: int = 0
    adapter_attn_dim: int | None = None

    @classmethod
    def base(cls, **kw):
        """facebook/wav2vec2-base."""
        return cls.from_dict({**kw})

    @classmethod
    def large(cls, **kw):
        """facebook/wav2vec2-large-lv60 (layer-norm extractor, pre-LN encoder)."""
        return cls.from_dict({**_LARGE, **_PRE_LN, "conv_bias": True, **kw})

    @classmethod
    def xlsr_53(cls, **kw):
        """facebook/wav2vec2-large-xlsr-53."""
        return cls.large(**kw)

    @classmethod
    def xls_r_300m(cls, **kw):
        """facebook/wav2vec2-xls-r-300m."""
        return cls.large(**kw)

    @classmethod
    def xls_r_1b(cls, **kw):
        """facebook/wav2vec2-xls-r-1b."""
        return cls.from_dict({**_XLARGE, **_PRE_LN, "conv_bias": True, **kw})

    @classmethod
    def xls_r_2b(cls, **kw):
        """facebook/wav2vec2-xls-r-2b."""
        return cls.from_dict({**_XXLARGE, **_PRE_LN, "conv_bias": True, **kw})


def config_class_for(model_type: str) -> type[SpeechConfig]:
    """The config class of config.json's `model_type` (hubert_jax/families.py)."""
    return families.config_class(model_type)


# model_type -> config class; name -> (config class, preset classmethod): the released sizes
CONFIG_CLASSES: dict[str, type[SpeechConfig]] = {t: config_class_for(t) for t in families.FAMILIES}
PRESETS: dict[str, tuple[type[SpeechConfig], str]] = {
    name: (CONFIG_CLASSES[f.model_type], method) for f in families.FAMILIES.values() for name, method in f.presets}


def preset(name: str, **overrides) -> SpeechConfig:
    """A released architecture by name, e.g. ``preset("hubert-large", vocab_size=40)``."""
    try:
        cls, method = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}") from None
    return getattr(cls, method)(**overrides)
