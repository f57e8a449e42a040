"""HuBERT masked prediction (fairseq's HubertModel forward and hubert criterion) on a hubert-jax encoder:
HuBERT's own, or WavLM's (WavLM's denoising masked prediction is this criterion on its encoder).

The encoder is the config's base model under its transformers prefix (`hubert.*`, `wavlm.*`); the heads are
fairseq's `final_proj` and `label_embs_concat`, with `masked_spec_embed` playing fairseq's `mask_emb`.
`save_pretrained` writes the encoder as the base model's directory (which transformers' `HubertModel` /
`WavLMModel` loads), the heads beside it in `pretraining_heads.safetensors` and their settings under
`hubert_pretraining` in config.json; `from_pretrained` reads them back (fresh heads, with a warning, from a
directory without them).

fairseq scores each frame against the true label's embedding (index 0) and every label embedding, the
true one's second copy set to -inf, then takes cross-entropy with target 0. That is exactly the
cross-entropy of the cosine logits over the K label embeddings with the label as target, which is what
is computed here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hubert_jax import families
from hubert_jax.config import SpeechConfig
from hubert_jax.weights.files import PRETRAINING_HEADS
from hubert_jax.masking import span_mask
from hubert_jax.models.frontend import init_front_end_as_fairseq
from hubert_jax.models.layers import (
    Linear,
    ModelOptions,
    make_param,
    torch_linear_init,
    uniform,
)
from hubert_jax.models.hub_mixin import PretrainedMixin
from hubert_jax.models.model import make_options
from hubert_jax.lengths import SAMPLE_RATE




@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The pretraining heads' shape and scoring (config.json key `hubert_pretraining`)."""

    num_classes: tuple[int, ...] = (504,)  # clusters per label set (fairseq's dictionaries)
    final_dim: int = 256
    logit_temp: float = 0.1
    untie_final_proj: bool = False
    label_rate: float = 50.0  # labels per second: 100 for MFCC labels, 50 for model features
    # row of label k in the embeddings is k + label_offset: 4 for fairseq checkpoints, whose label
    # dictionaries put 4 special symbols first
    label_offset: int = 0

    def __post_init__(self):
        object.__setattr__(self, "num_classes", tuple(int(k) for k in self.num_classes))
        if self.label_offset < 0:
            raise ValueError(f"hubert_pretraining.label_offset: expected >= 0, got {self.label_offset}")
        if not self.num_classes or min(self.num_classes) < 1:
            raise ValueError(f"hubert_pretraining.num_classes: expected positive cluster counts, got "
                             f"{self.num_classes}")

    def to_dict(self) -> dict:
        """config.json's hubert_pretraining section."""
        out = dataclasses.asdict(self)
        out["num_classes"] = list(self.num_classes)
        out["num_label_embeddings"] = sum(self.num_classes)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        """The head config of config.json's hubert_pretraining section (checked against num_label_embeddings)."""
        d = dict(d)
        total = d.pop("num_label_embeddings", None)
        if "num_classes" not in d and total is not None:
            d["num_classes"] = (total,)  # converted before the label dictionaries were read: one label set
        elif total is not None and sum(d["num_classes"]) != total:
            raise ValueError(f"hubert_pretraining: num_classes {list(d['num_classes'])} do not add up to "
                             f"num_label_embeddings {total}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"hubert_pretraining: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**d)


@flax.struct.dataclass
class PretrainingOutput:
    """HubertForPreTraining's output: per label set the logits and targets at the feature rate, the masks, and the
    feature penalty."""
    logits: tuple  # per label set: (B, F, K_i) cosine logits / logit_temp, float32
    targets: tuple  # per label set: (B, F) int32 labels at the feature rate, -1 where none
    mask: Any  # (B, F) bool, frames replaced by mask_emb
    valid: Any  # (B, F) bool, real frames that have a label
    features_pen: Any  # mean square of the conv features (fairseq's feature penalty)


def frames_for_labels(config: SpeechConfig, head: HeadConfig, num_frames: int, label_length: int) -> np.ndarray:
    """fairseq's forward_targets: the label index of each kept feature frame (features past the labels
    are dropped). Static, so it runs in NumPy at trace time."""
    ratio = head.label_rate * int(np.prod(config.conv_stride)) / SAMPLE_RATE
    if ratio * num_frames > label_length:
        num_frames = int(label_length / ratio)
    return (np.arange(num_frames) * ratio).astype(np.int64)


def cosine_logits(x, embeddings, temperature: float):
    """torch.cosine_similarity(x, e) / temperature for every embedding, in float32."""
    x = x.astype(jnp.float32)
    e = embeddings.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-8)
    return jnp.einsum("bfd,kd->bfk", x, e) / temperature


class HubertForPreTraining(PretrainedMixin, nnx.Module):
    """Masked prediction heads on a HuBERT or WavLM encoder (`config.model_type`)."""

    heads_file = PRETRAINING_HEADS

    def __init__(self, config: SpeechConfig, head: HeadConfig | None = None, *, rngs: nnx.Rngs | None = None,
                 opts: ModelOptions | None = None, **option_kw):
        if config.model_type not in ("hubert", "wavlm"):
            raise ValueError(f"HubertForPreTraining: masked prediction runs on a HuBERT or WavLM encoder, got "
                             f"model_type {config.model_type!r} (wav2vec2 pretrains with Wav2Vec2ForPreTraining)")
        head = head or HeadConfig.from_dict(config.extra.get("hubert_pretraining", {}))
        if not config.has_masked_spec_embed:
            raise ValueError("masked prediction needs config.masked_spec_embed (fairseq's mask_emb): set "
                             "config.mask_time_prob > 0")
        self.opts = opts = make_options(opts, **option_kw)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config, self.head = config, head
        self.base_model_prefix = config.base_model_prefix
        base_cls = families.base_model_class(config.model_type)
        setattr(self, self.base_model_prefix, base_cls(config, opts=opts, rngs=rngs))
        init_front_end_as_fairseq(self.base_model, rngs)  # pretraining starts where fairseq's does
        out = head.final_dim * (len(head.num_classes) if head.untie_final_proj else 1)
        self.final_proj = Linear(config.hidden_size, out, axes=("embed", None), opts=opts, rngs=rngs,
                                 **torch_linear_init(config.hidden_size))
        self.label_embs_concat = make_param(rngs, uniform(0.0, 1.0), (sum(head.num_classes), head.final_dim),
                                            ("vocab", None), opts.param_dtype)

    @property
    def base_model(self):
        return getattr(self, self.base_model_prefix)

    @property
    def architecture(self) -> str:
        """config.json's `architectures`: transformers has no class for these heads, its base model loads
        the encoder."""
        return type(self.base_model).__name__

    def config_additions(self) -> dict:
        """What config.json carries besides the base model's fields: the hubert_pretraining section."""
        return {"hubert_pretraining": self.head.to_dict()}

    def __call__(self, input_values, labels, attention_mask=None, *, mask_rng=None, mask_time_indices=None,
                 mask_prob: float = 0.8, mask_length: int = 10, min_masks: int = 2,
                 feature_grad_mult: float = 1.0, deterministic: bool = True, dropout_rng=None) -> PretrainingOutput:
        """input_values (B, T); labels: one (B, L) int array per label set (-1 = no label);
        attention_mask (B, T), 1 on real samples. Masks come from mask_rng (fairseq's span masking) or are
        given as mask_time_indices (B, F')."""
        labels = (labels,) if not isinstance(labels, (list, tuple)) else tuple(labels)
        if len(labels) != len(self.head.num_classes):
            raise ValueError(f"{len(labels)} label sets given, the heads have {len(self.head.num_classes)}")
        base = self.base_model
        features = base.conv_features(input_values, feature_grad_mult=feature_grad_mult)
        label_length = min(lab.shape[1] for lab in labels)
        index = frames_for_labels(self.config, self.head, features.shape[1], label_length)
        features = features[:, : len(index)]
        features_pen = jnp.mean(jnp.square(features.astype(jnp.float32)))
        num_frames = features.shape[1]
        targets = tuple(jnp.asarray(lab)[:, index].astype(jnp.int32) for lab in labels)
        if self.head.label_offset:
            targets = tuple(jnp.where(t >= 0, t + self.head.label_offset, t) for t in targets)
        key_mask = base.frame_mask(num_frames, attention_mask)
        frame_mask = jnp.ones(features.shape[:2], bool) if key_mask is None else key_mask

        hidden, _ = base.project(features, deterministic=deterministic, dropout_rng=dropout_rng)
        if mask_time_indices is None:
            if mask_rng is None:
                raise ValueError("masked prediction needs mask_rng (or mask_time_indices)")
            lengths = None if attention_mask is None else frame_mask.sum(-1)
            mask_time_indices = span_mask(mask_rng, frame_mask.shape, mask_prob=mask_prob, mask_length=mask_length,
                                          min_masks=min_masks, lengths=lengths)
        else:
            mask_time_indices = jnp.asarray(mask_time_indices)[:, :num_frames]
        hidden = base.apply_time_mask(hidden, mask_time_indices)
        encoded = base.contextualize(hidden, key_mask, deterministic=deterministic, dropout_rng=dropout_rng)
        projected = self.final_proj(encoded.last_hidden_state)
        sets = len(self.head.num_classes)
        chunks = jnp.split(projected, sets, axis=-1) if self.head.untie_final_proj else [projected] * sets
        bounds = np.cumsum((0,) + self.head.num_classes)
        embeddings = self.label_embs_concat[...]
        logits = tuple(cosine_logits(chunk, embeddings[bounds[i]:bounds[i + 1]], self.head.logit_temp)
                       for i, chunk in enumerate(chunks))
        valid = frame_mask & jnp.all(jnp.stack([t >= 0 for t in targets]), axis=0)
        return PretrainingOutput(logits=logits, targets=targets, mask=mask_time_indices, valid=valid,
                                 features_pen=features_pen)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """fairseq's hubert criterion weights: masked and unmasked prediction, and the feature penalty."""
    masked: float = 1.0  # fairseq pred_masked_weight
    unmasked: float = 0.0  # pred_nomask_weight
    features_pen: float = 10.0  # loss_weights[0]


def pretraining_loss(out: PretrainingOutput, weights: LossWeights = LossWeights()):
    """fairseq's hubert criterion divided by its sample size: the frames of every kind that is scored (the
    masked frames, plus the unmasked ones when `weights.unmasked` > 0, as fairseq's sample_size adds
    them). The feature penalty is added per sample size, as fairseq's extra losses are. Returns (loss,
    metrics)."""
    masked = out.mask & out.valid
    unmasked = ~out.mask & out.valid
    n_masked = masked.sum()
    n_unmasked = unmasked.sum()
    metrics = {"masked_frames": n_masked, "unmasked_frames": n_unmasked, "features_pen": out.features_pen}
    total_m = total_u = 0.0
    for i, (logits, targets) in enumerate(zip(out.logits, out.targets)):
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == targets)
        total_m = total_m + jnp.where(masked, nll, 0.0).sum()
        total_u = total_u + jnp.where(unmasked, nll, 0.0).sum()
        suffix = "" if len(out.logits) == 1 else f"_{i}"
        metrics[f"correct_m{suffix}"] = jnp.where(masked, correct, False).sum()
        metrics[f"correct_u{suffix}"] = jnp.where(unmasked, correct, False).sum()
        metrics[f"loss_m{suffix}"] = jnp.where(masked, nll, 0.0).sum() / jnp.maximum(n_masked, 1)
        metrics[f"loss_u{suffix}"] = jnp.where(unmasked, nll, 0.0).sum() / jnp.maximum(n_unmasked, 1)
    sample_size = (n_masked if weights.masked > 0 else 0) + (n_unmasked if weights.unmasked > 0 else 0)
    sample_size = jnp.maximum(sample_size, 1).astype(jnp.float32)
    loss = (weights.masked * total_m + weights.unmasked * total_u) / sample_size
    loss = loss + weights.features_pen * out.features_pen
    metrics["loss"] = loss
    metrics["accuracy_m"] = metrics[f"correct_m{'' if len(out.logits) == 1 else '_0'}"] / jnp.maximum(n_masked, 1)
    metrics["accuracy_u"] = metrics[f"correct_u{'' if len(out.logits) == 1 else '_0'}"] / jnp.maximum(n_unmasked, 1)
    return loss, metrics
