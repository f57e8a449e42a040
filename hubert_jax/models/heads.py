"""Task heads: CTC, sequence classification, audio frame classification, XVector.

Each head holds its base model under the transformers prefix (`hubert`, `wavlm`, `wav2vec2`), so
parameter paths read `hubert.encoder.layers.0...`, `lm_head.kernel` as in the state dicts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax.lengths import feat_extract_output_lengths, feature_vector_mask
from hubert_jax.models.compiled import compiled_in_inference
from hubert_jax.models.hub_mixin import PretrainedMixin
from hubert_jax.models.layers import Linear, ModelOptions, conv1d, dropout, fold, make_param, normal
from hubert_jax import families
from hubert_jax.models.model import make_options
from hubert_jax.models.outputs import CTCOutput, SequenceClassifierOutput, TokenClassifierOutput, XVectorOutput


class _Head(PretrainedMixin, nnx.Module):
    """Builds the base model under its prefix; subclasses add the head."""

    def __init__(self, config, *, rngs: nnx.Rngs | None = None, opts: ModelOptions | None = None, dtype=None,
                 param_dtype=None, attention_impl=None, scan_layers=None, remat_policy=None, remat_conv=None,
                 precision=None):
        expected = getattr(type(self), "model_type", None)
        if expected is not None and config.model_type != expected:
            raise ValueError(f"{type(self).__name__} needs a {expected} config, got model_type "
                             f"{config.model_type!r}")
        self.config = config
        self.opts = opts = make_options(opts, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                                        scan_layers=scan_layers, remat_policy=remat_policy,
                                        remat_conv=remat_conv, precision=precision)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.base_model_prefix = config.base_model_prefix
        base_cls = families.base_model_class(config.model_type)
        setattr(self, self.base_model_prefix, base_cls(config, opts=opts, rngs=rngs))
        self._build_head(config, opts, rngs)

    @property
    def base_model(self):
        return getattr(self, self.base_model_prefix)

    def _no_adapter(self, config, what: str):
        if config.uses_adapter:
            raise ValueError(f"{what} does not support the wav2vec2 adapter (config.add_adapter=True)")

    def _weighted_layers(self, config, opts, rngs):
        if config.use_weighted_layer_sum:
            n = config.num_hidden_layers + 1
            self.layer_weights = make_param(rngs, lambda k, s, d: jnp.full(s, 1.0 / n, d), (n,), (None,),
                                            opts.param_dtype)
        else:
            self.layer_weights = None

    def _encode(self, input_values, attention_mask, output_hidden_states, deterministic, dropout_rng,
                mask_time_indices=None, mask_feature_indices=None, group_norm_over_real_samples=False):
        need_all = output_hidden_states or self.layer_weights is not None
        out = self.base_model(input_values, attention_mask=attention_mask, output_hidden_states=need_all,
                              deterministic=deterministic, dropout_rng=dropout_rng,
                              mask_time_indices=mask_time_indices, mask_feature_indices=mask_feature_indices,
                              group_norm_over_real_samples=group_norm_over_real_samples)
        if self.layer_weights is not None:
            weights = jax.nn.softmax(self.layer_weights[...].astype(jnp.float32))
            stacked = jnp.stack(out.hidden_states, axis=0).astype(jnp.float32)
            hidden = jnp.einsum("l,lbtd->btd", weights, stacked).astype(out.last_hidden_state.dtype)
        else:
            hidden = out.last_hidden_state
        return hidden, (out.hidden_states if output_hidden_states else None)


def _cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


class ForCTC(_Head):
    """A CTC head (transformers' *ForCTC): dropout and lm_head on the last hidden state -> logits (B, frames,
    vocab_size)."""
    def _build_head(self, config, opts, rngs):
        if config.vocab_size is None:
            raise ValueError("config.vocab_size is None: a CTC head needs the vocabulary size")
        self.layer_weights = None  # transformers' CTC heads always read the last layer
        self.lm_head = Linear(config.encoder_output_size, config.vocab_size, axes=("embed", "vocab"),
                              std=config.initializer_range, opts=opts, rngs=rngs)

    @compiled_in_inference
    def __call__(self, input_values, attention_mask=None, labels=None, output_hidden_states=False,
                 deterministic=True, dropout_rng=None, mask_time_indices=None, mask_feature_indices=None,
                 group_norm_over_real_samples: bool = False) -> CTCOutput:
        """mask_time_indices / mask_feature_indices: SpecAugment masks (fine-tuning);
        group_norm_over_real_samples: padded rows equal their files alone (group-norm extractors); see the base
        model."""
        hidden, hidden_states = self._encode(input_values, attention_mask, output_hidden_states, deterministic,
                                             fold(dropout_rng, 0), mask_time_indices, mask_feature_indices,
                                             group_norm_over_real_samples)
        hidden = dropout(hidden, self.config.final_dropout, fold(dropout_rng, 1), deterministic)
        logits = self.lm_head(hidden)
        loss = self.ctc_loss(logits, input_values, attention_mask, labels) if labels is not None else None
        return CTCOutput(logits=logits, loss=loss, hidden_states=hidden_states)

    def ctc_loss(self, logits, input_values, attention_mask, labels):
        """transformers' CTC loss: labels padded with -100 (or < 0), blank = pad_token_id,
        reduction `ctc_loss_reduction` ('sum', or 'mean' = per-target-length then batch mean)."""
        import optax  # only needed when training

        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones(input_values.shape, jnp.int32)
        lengths = feat_extract_output_lengths(cfg, attention_mask.astype(jnp.int32).sum(-1))
        logit_pad = 1.0 - (jnp.arange(logits.shape[1])[None] < lengths[:, None]).astype(jnp.float32)
        label_mask = labels >= 0
        label_pad = 1.0 - label_mask.astype(jnp.float32)
        per_seq = optax.ctc_loss(logits.astype(jnp.float32), logit_pad, jnp.where(label_mask, labels, 0), label_pad,
                                 blank_id=cfg.pad_token_id)
        # optax scores an impossible alignment with a large finite number; torch says inf (or 0 with
        # zero_infinity). A target fits when frames >= labels + repeated neighbours (each needs a blank).
        label_len = label_mask.sum(-1)
        repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) & label_mask[:, 1:], axis=-1)
        feasible = lengths >= label_len + repeats
        per_seq = jnp.where(feasible, per_seq, 0.0 if cfg.ctc_zero_infinity else jnp.inf)
        if cfg.ctc_loss_reduction == "mean":
            return jnp.mean(per_seq / jnp.maximum(label_mask.sum(-1), 1))
        return jnp.sum(per_seq)


class ForSequenceClassification(_Head):
    """One label per utterance (transformers' *ForSequenceClassification): projector, mean over real frames,
    classifier."""
    def _build_head(self, config, opts, rngs):
        self._no_adapter(config, "sequence classification")
        self._weighted_layers(config, opts, rngs)
        std = config.initializer_range
        self.projector = Linear(config.hidden_size, config.classifier_proj_size, axes=("embed", None), std=std,
                                opts=opts, rngs=rngs)
        self.classifier = Linear(config.classifier_proj_size, config.num_labels, axes=(None, "classes"), std=std,
                                 opts=opts, rngs=rngs)

    @compiled_in_inference
    def __call__(self, input_values, attention_mask=None, labels=None, output_hidden_states=False,
                 deterministic=True, dropout_rng=None, mask_time_indices=None,
                 mask_feature_indices=None, group_norm_over_real_samples: bool = False) -> SequenceClassifierOutput:
        hidden, hidden_states = self._encode(input_values, attention_mask, output_hidden_states, deterministic,
                                             dropout_rng, mask_time_indices, mask_feature_indices,
                                             group_norm_over_real_samples)
        hidden = self.projector(hidden)
        if attention_mask is None:
            pooled = hidden.mean(axis=1)
        else:
            mask = feature_vector_mask(self.config, hidden.shape[1], attention_mask)
            summed = jnp.where(mask[..., None], hidden, 0).sum(axis=1)
            pooled = summed / mask.sum(axis=1, keepdims=True).astype(hidden.dtype)
        logits = self.classifier(pooled)
        loss = jnp.mean(_cross_entropy(logits, labels)) if labels is not None else None
        return SequenceClassifierOutput(logits=logits, loss=loss, hidden_states=hidden_states)


class ForAudioFrameClassification(_Head):
    """One label per frame (transformers' *ForAudioFrameClassification)."""
    def _build_head(self, config, opts, rngs):
        self._no_adapter(config, "audio frame classification")
        self._weighted_layers(config, opts, rngs)
        self.classifier = Linear(config.hidden_size, config.num_labels, axes=("embed", "classes"),
                                 std=config.initializer_range, opts=opts, rngs=rngs)

    @compiled_in_inference
    def __call__(self, input_values, attention_mask=None, labels=None, output_hidden_states=False,
                 deterministic=True, dropout_rng=None,
                 group_norm_over_real_samples: bool = False) -> TokenClassifierOutput:
        hidden, hidden_states = self._encode(input_values, attention_mask, output_hidden_states, deterministic,
                                             dropout_rng, group_norm_over_real_samples=group_norm_over_real_samples)
        logits = self.classifier(hidden)
        loss = None
        if labels is not None:
            # transformers: labels are (B, frames, num_labels) scores, the target is their argmax
            loss = jnp.mean(_cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           jnp.argmax(labels.reshape(-1, logits.shape[-1]), axis=-1)))
        return TokenClassifierOutput(logits=logits, loss=loss, hidden_states=hidden_states)


class TDNNLayer(nnx.Module):
    """x-vector TDNN: a Linear(in * k, out) run as a dilated conv (kernel viewed as (k, in, out))."""

    def __init__(self, config, layer_id: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.in_dim = config.tdnn_dim[layer_id - 1] if layer_id > 0 else config.tdnn_dim[layer_id]
        self.out_dim = config.tdnn_dim[layer_id]
        self.kernel_size, self.dilation = config.tdnn_kernel[layer_id], config.tdnn_dilation[layer_id]
        self.kernel = Linear(self.in_dim * self.kernel_size, self.out_dim, axes=(None, None),
                             std=config.initializer_range, opts=opts, rngs=rngs)

    def __call__(self, x):
        lin = self.kernel
        w = lin.kernel[...].astype(lin.dtype).reshape(self.kernel_size, self.in_dim, self.out_dim)
        y = conv1d(x.astype(lin.dtype), w, dilation=self.dilation, precision=lin.precision)
        return jax.nn.relu(y + lin.bias[...].astype(lin.dtype))


class AMSoftmaxLoss(nnx.Module):
    """Additive-margin softmax over cosine scores (x-vector training objective)."""

    def __init__(self, input_dim: int, num_labels: int, *, opts: ModelOptions, rngs: nnx.Rngs,
                 scale: float = 30.0, margin: float = 0.4):
        self.scale, self.margin, self.num_labels = scale, margin, num_labels
        self.weight = make_param(rngs, normal(1.0), (input_dim, num_labels), (None, "classes"), opts.param_dtype)

    def __call__(self, hidden, labels):
        w = self.weight[...].astype(jnp.float32)
        w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
        h = hidden.astype(jnp.float32)
        h = h / jnp.maximum(jnp.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        cos = h @ w
        labels = labels.reshape(-1)
        onehot = jax.nn.one_hot(labels, self.num_labels, dtype=bool)
        logits = self.scale * jnp.where(onehot, cos - self.margin, cos)
        return jnp.mean(_cross_entropy(logits, labels))


class ForXVector(_Head):
    """Speaker embeddings (transformers' *ForXVector): TDNN layers, statistics pooling, the embedding and an
    AM-softmax classifier."""
    def _build_head(self, config, opts, rngs):
        self._weighted_layers(config, opts, rngs)
        std = config.initializer_range
        self.projector = Linear(config.hidden_size, config.tdnn_dim[0], axes=("embed", None), std=std, opts=opts,
                                rngs=rngs)
        self.tdnn = nnx.List([TDNNLayer(config, i, opts=opts, rngs=rngs) for i in range(len(config.tdnn_dim))])
        self.feature_extractor = Linear(config.tdnn_dim[-1] * 2, config.xvector_output_dim, axes=(None, None),
                                        std=std, opts=opts, rngs=rngs)
        self.classifier = Linear(config.xvector_output_dim, config.xvector_output_dim, axes=(None, None), std=std,
                                 opts=opts, rngs=rngs)
        self.objective = AMSoftmaxLoss(config.xvector_output_dim, config.num_labels, opts=opts, rngs=rngs)

    def tdnn_output_lengths(self, lengths):
        """Frames left after the TDNN layers (transformers' formula, which ignores dilation; kept so padded batches
        pool the same frames)."""
        for kernel in self.config.tdnn_kernel:
            lengths = lengths - kernel + 1
        return lengths

    @compiled_in_inference
    def __call__(self, input_values, attention_mask=None, labels=None, output_hidden_states=False,
                 deterministic=True, dropout_rng=None,
                 group_norm_over_real_samples: bool = False) -> XVectorOutput:
        hidden, hidden_states = self._encode(input_values, attention_mask, output_hidden_states, deterministic,
                                             dropout_rng, group_norm_over_real_samples=group_norm_over_real_samples)
        hidden = self.projector(hidden)
        for layer in self.tdnn:
            hidden = layer(hidden)
        hidden = hidden.astype(jnp.float32)
        frames = hidden.shape[1]
        if attention_mask is None:
            lengths = jnp.full((hidden.shape[0],), frames)
        else:
            lengths = self.tdnn_output_lengths(
                feat_extract_output_lengths(self.config, attention_mask.astype(jnp.int32).sum(-1)))
            lengths = jnp.clip(lengths, 1, frames)  # torch slicing past the end takes what is there
        mask = (jnp.arange(frames)[None] < lengths[:, None])[..., None]
        n = lengths[:, None].astype(jnp.float32)
        mean = jnp.where(mask, hidden, 0).sum(1) / n
        var = jnp.where(mask, jnp.square(hidden - mean[:, None]), 0).sum(1) / jnp.maximum(n - 1, 1)  # unbiased
        pooled = jnp.concatenate([mean, jnp.sqrt(var)], axis=-1).astype(self.opts.dtype)
        embeddings = self.feature_extractor(pooled)
        logits = self.classifier(embeddings)
        loss = self.objective(logits, labels) if labels is not None else None
        return XVectorOutput(logits=logits, embeddings=embeddings, loss=loss, hidden_states=hidden_states)


GENERIC_HEADS = {cls.__name__: cls for cls in (ForCTC, ForSequenceClassification, ForAudioFrameClassification,
                                                ForXVector)}


def family_head(kind: str, model_type: str, name: str):
    """One family's `kind` head under transformers' class name, bound to that family's configs."""
    head_cls = GENERIC_HEADS[kind]
    return type(name, (head_cls,), {"model_type": model_type, "__module__": __name__,
                                    "__doc__": f"{name}: {head_cls.__doc__ or ''}"})


# transformers class name -> class, every family's heads (hubert_jax/families.py): HubertForCTC, WavLMForXVector, ...
HEAD_CLASSES = {f"{f.prefix}{kind}": family_head(kind, f.model_type, f"{f.prefix}{kind}")
                for f in families.FAMILIES.values() for kind in f.heads}
globals().update(HEAD_CLASSES)
__all__ = ["ForCTC", "ForSequenceClassification", "ForAudioFrameClassification", "ForXVector", *HEAD_CLASSES]
