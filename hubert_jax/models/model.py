"""The base models: HubertModel, WavLMModel, Wav2Vec2Model (transformers' module tree)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from hubert_jax.config import HubertConfig, SpeechConfig, Wav2Vec2Config, WavLMConfig
from hubert_jax.lengths import feature_vector_mask
from hubert_jax.models.compiled import compiled_in_inference
from hubert_jax.models.encoder import Adapter, Encoder
from hubert_jax.models.frontend import FeatureEncoder, FeatureProjection, check_waveform
from hubert_jax.models.hub_mixin import PretrainedMixin
from hubert_jax.models.layers import ModelOptions, fold, scale_gradient, uniform
from hubert_jax.models.outputs import ModelOutput


def make_options(opts: ModelOptions | None, **kw) -> ModelOptions:
    """Model constructors take `opts=` or the same fields as keywords (dtype=, scan_layers= ...)."""
    given = {k: v for k, v in kw.items() if v is not None}
    if opts is None:
        return ModelOptions(**given)
    if given:
        raise ValueError(f"pass either opts= or {sorted(given)}, not both")
    return opts


class SpeechModel(PretrainedMixin, nnx.Module):
    """Feature encoder -> feature projection -> [SpecAugment vector] -> encoder -> [adapter]."""

    config_class: type[SpeechConfig] = SpeechConfig

    def __init__(self, config: SpeechConfig, *, rngs: nnx.Rngs | None = None, opts: ModelOptions | None = None,
                 dtype=None, param_dtype=None, attention_impl=None, scan_layers=None, remat_policy=None, remat_conv=None,
                 precision=None):
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                             f"{type(config).__name__}")
        config.validate()
        self.config = config
        self.opts = opts = make_options(opts, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                                        scan_layers=scan_layers, remat_policy=remat_policy,
                                        remat_conv=remat_conv, precision=precision)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.feature_extractor = FeatureEncoder(config, opts=opts, rngs=rngs)
        self.feature_projection = FeatureProjection(config, opts=opts, rngs=rngs)
        if config.has_masked_spec_embed:
            self.masked_spec_embed = nnx.Param(uniform(0.0, 1.0)(rngs.params(), (config.hidden_size,),
                                                                  opts.param_dtype),
                                               out_sharding=("embed",), eager_sharding=False)
        else:
            self.masked_spec_embed = None
        self.encoder = Encoder(config, opts=opts, rngs=rngs)
        self.adapter = Adapter(config, opts=opts, rngs=rngs) if config.uses_adapter else None

    @compiled_in_inference
    def __call__(self, input_values, attention_mask=None, mask_time_indices=None, output_hidden_states=False,
                 deterministic=True, dropout_rng=None, mask_feature_indices=None,
                 group_norm_over_real_samples: bool = False, feature_grad_mult: float = 1.0) -> ModelOutput:
        """input_values (B, T) float audio; attention_mask (B, T), 1 on real samples (right padding);
        mask_time_indices (B, frames) bool: frames replaced by the SpecAugment vector;
        mask_feature_indices (B, hidden) bool: channels zeroed on every frame (SpecAugment's feature mask);
        group_norm_over_real_samples: with an attention mask, a group-norm extractor's statistics cover the
        real samples only, so padded rows equal their utterances alone (not transformers' behaviour, which
        includes the padding; `hubert_jax.inference.extract` uses it), and features_pen is the mean over
        real frames;
        feature_grad_mult: fairseq's gradient scale on the conv features (pretraining; 0 freezes them)."""
        check_waveform(self.config, input_values, attention_mask)
        lengths = None
        if group_norm_over_real_samples and attention_mask is not None:
            lengths = attention_mask.astype(jnp.int32).sum(-1)
        features = self.conv_features(input_values, lengths=lengths, feature_grad_mult=feature_grad_mult)
        frame_mask = self.frame_mask(features.shape[1], attention_mask)
        squares = jnp.square(features.astype(jnp.float32))
        if lengths is not None:  # the real frames' mean, as for each row alone
            squares = jnp.where(frame_mask[..., None], squares, 0.0)
            features_pen = squares.sum() / jnp.maximum(frame_mask.sum() * squares.shape[-1], 1)
        else:
            features_pen = jnp.mean(squares)
        hidden, extract_features = self.project(features, deterministic=deterministic, dropout_rng=dropout_rng)
        if mask_time_indices is not None and self.config.apply_spec_augment:
            hidden = self.apply_time_mask(hidden, mask_time_indices)
        if mask_feature_indices is not None and self.config.apply_spec_augment:
            if tuple(mask_feature_indices.shape) != (hidden.shape[0], hidden.shape[2]):
                raise ValueError(f"mask_feature_indices shape {tuple(mask_feature_indices.shape)} does not match "
                                 f"the {(hidden.shape[0], hidden.shape[2])} (batch, hidden size) of the features")
            hidden = jnp.where(mask_feature_indices[:, None, :], jnp.zeros((), hidden.dtype), hidden)
        encoded = self.contextualize(hidden, frame_mask, deterministic=deterministic, dropout_rng=dropout_rng,
                                     output_hidden_states=output_hidden_states)
        last = encoded.last_hidden_state
        if self.adapter is not None:
            last = self.adapter(last)
        return ModelOutput(last_hidden_state=last, extract_features=extract_features,
                           hidden_states=encoded.hidden_states, features_pen=features_pen)

    # ------------------------------------------------------------------ the stages, for the models built on it
    # (pretraining, distillation): each folds `dropout_rng` as __call__ does, so that they draw the same masks
    def conv_features(self, input_values, *, lengths=None, feature_grad_mult: float = 1.0):
        """(B, frames, conv_dim): the conv feature encoder's output for (B, T) audio, its gradient scaled by
        `feature_grad_mult` (fairseq's; 0 freezes the convs). `lengths` (B,): a group norm over real samples."""
        return scale_gradient(self.feature_extractor(input_values, lengths), feature_grad_mult)

    def frame_mask(self, num_frames: int, attention_mask):
        """(B, frames) bool, True on the frames of real samples; None without an attention mask."""
        if attention_mask is None:
            return None
        return feature_vector_mask(self.config, num_frames, attention_mask, add_adapter=False)

    def project(self, features, *, deterministic: bool = True, dropout_rng=None):
        """(hidden (B, frames, hidden_size), extract_features): the feature projection of conv features."""
        return self.feature_projection(features, deterministic=deterministic, dropout_rng=fold(dropout_rng, 0))

    def contextualize(self, hidden, frame_mask=None, *, deterministic: bool = True, dropout_rng=None,
                      output_hidden_states: bool = False):
        """The transformer encoder over projected (and masked) features; `frame_mask` (B, frames) keys."""
        return self.encoder(hidden, key_mask=frame_mask, deterministic=deterministic,
                            dropout_rng=fold(dropout_rng, 1), output_hidden_states=output_hidden_states)

    def apply_time_mask(self, hidden, mask_time_indices):
        """Frames where `mask_time_indices` (B, frames) is True replaced by the learned mask vector."""
        if self.masked_spec_embed is None:
            raise ValueError("mask_time_indices given, but the model has no masked_spec_embed: set "
                             "config.mask_time_prob or config.mask_feature_prob > 0")
        if tuple(mask_time_indices.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"mask_time_indices shape {tuple(mask_time_indices.shape)} does not match the "
                             f"{tuple(hidden.shape[:2])} (batch, frames) of the features")
        vector = self.masked_spec_embed[...].astype(hidden.dtype)
        return jnp.where(mask_time_indices[..., None], vector, hidden)


class HubertModel(SpeechModel):
    """HuBERT's encoder (transformers' HubertModel): 16 kHz audio in, frame features (50 Hz) out."""
    config_class = HubertConfig


class WavLMModel(SpeechModel):
    """WavLM's encoder (transformers' WavLMModel): gated relative position bias in the attention."""
    config_class = WavLMConfig


class Wav2Vec2Model(SpeechModel):
    """wav2vec 2.0 / XLS-R's encoder (transformers' Wav2Vec2Model), with the optional adapter."""
    config_class = Wav2Vec2Config

