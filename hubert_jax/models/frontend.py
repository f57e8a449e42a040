"""The waveform front end: conv feature encoder, feature projection, positional conv embedding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax.lengths import conv_out_length, lengths_to_mask
from hubert_jax.models.layers import (BatchNorm1d, Conv1d, GroupNorm, LayerNorm, Linear, ModelOptions, activation,
                                      conv1d, dropout, make_param, normal, torch_linear_init,
                                      uniform, zeros)


class FeatureEncoderLayer(nnx.Module):
    """conv -> [GroupNorm | LayerNorm | nothing] -> activation (transformers' three conv layer kinds)."""

    def __init__(self, config, layer_id: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim, kernel = config.conv_dim[layer_id], config.conv_kernel[layer_id]
        # transformers: HuBERT zero-initialises conv biases, wav2vec2/WavLM draw them like torch does
        bias_init = zeros if config.hubert_front_end else uniform(-math.sqrt(1 / (in_dim * kernel)),
                                                             math.sqrt(1 / (in_dim * kernel)))
        self.conv = Conv1d(in_dim, out_dim, kernel, stride=config.conv_stride[layer_id], use_bias=config.conv_bias,
                           axes=("conv_kernel", "conv_in", "conv_out"), bias_init=bias_init, opts=opts, rngs=rngs)
        if config.feat_extract_norm == "layer":
            self.layer_norm = LayerNorm(out_dim, eps=1e-5, axes=("conv_out",), opts=opts, rngs=rngs)
        elif layer_id == 0:
            self.layer_norm = GroupNorm(out_dim, out_dim, eps=1e-5, opts=opts, rngs=rngs)
        else:
            self.layer_norm = None
        self.activation = activation(config.feat_extract_activation, "feat_extract_activation")

    def __call__(self, x, frame_mask=None):
        x = self.conv(x)
        if isinstance(self.layer_norm, GroupNorm):
            x = self.layer_norm(x, frame_mask)
        elif self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.activation(x)


class FeatureEncoder(nnx.Module):
    """The conv feature encoder: waveform (B, samples) -> features (B, frames, conv_dim[-1])."""
    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.conv_layers = nnx.List([FeatureEncoderLayer(config, i, opts=opts, rngs=rngs)
                                     for i in range(config.num_feat_extract_layers)])
        self.remat = opts.remat_conv
        self.first_conv = (config.conv_kernel[0], config.conv_stride[0])

    def __call__(self, input_values, lengths=None):
        """lengths (B,): real samples per row. Given, the group norm of a group-norm extractor takes its
        statistics over the frames of real samples only, so a padded row gives the unpadded utterance's
        features (transformers and fairseq take them over the whole padded row)."""
        x = input_values[:, :, None]
        for index, layer in enumerate(self.conv_layers):
            frame_mask = None
            if index == 0 and lengths is not None:
                frames = conv_out_length(jnp.asarray(lengths), *self.first_conv)
                frame_mask = lengths_to_mask(frames, conv_out_length(x.shape[1], *self.first_conv))
            if self.remat:  # at full-length crops the conv outputs are most of the step's activations
                graphdef, state = nnx.split(layer)
                x = jax.checkpoint(lambda s, h, m, g=graphdef: nnx.merge(g, s)(h, m))(state, x, frame_mask)
            else:
                x = layer(x, frame_mask)
        return x


class FeatureProjection(nnx.Module):
    """[LayerNorm] -> Linear -> dropout. Returns (projected, extract_features)."""

    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        in_dim = config.conv_dim[-1]
        self.hubert_style = config.hubert_front_end
        self.has_norm = config.feat_proj_layer_norm if self.hubert_style else True
        self.layer_norm = (LayerNorm(in_dim, eps=config.layer_norm_eps, axes=("conv_out",), opts=opts, rngs=rngs)
                           if self.has_norm else None)
        if self.hubert_style:
            self.projection = Linear(in_dim, config.hidden_size, axes=("conv_out", "embed"),
                                     std=config.initializer_range, opts=opts, rngs=rngs)
        else:
            k = math.sqrt(1 / in_dim)
            self.projection = Linear(in_dim, config.hidden_size, axes=("conv_out", "embed"),
                                     kernel_init=uniform(-k, k), bias_init=uniform(-k, k), opts=opts, rngs=rngs)
        self.rate = config.feat_proj_dropout

    def __call__(self, features, *, deterministic: bool = True, dropout_rng=None):
        normed = self.layer_norm(features) if self.layer_norm is not None else features
        hidden = dropout(self.projection(normed), self.rate, dropout_rng, deterministic)
        # transformers' wav2vec2/WavLM return the normalised features; HuBERT's conv output is what
        # its pretraining (feature penalty) uses, so it is returned there
        return hidden, (features if self.hubert_style else normed)


class WeightNormConv1d(nnx.Module):
    """torch weight_norm(Conv1d, dim=2): weight = g * v / ||v||, the norm taken per kernel position."""

    def __init__(self, channels: int, kernel_size: int, groups: int, *, opts: ModelOptions, rngs: nnx.Rngs,
                 std: float | None = None):
        self.dtype, self.param_dtype, self.precision = opts.dtype, opts.param_dtype, opts.precision
        self.kernel_size, self.groups = kernel_size, groups
        # transformers' own init does not reach the parametrised weight: torch's Conv1d default stays,
        # i.e. v ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and g = ||v||; with `std`, v ~ N(0, std) (fairseq's)
        bound = 1.0 / math.sqrt(channels // groups * kernel_size)
        init = uniform(-bound, bound) if std is None else normal(std)
        v = init(rngs.params(), (kernel_size, channels // groups, channels), jnp.float32)
        g = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))
        self.weight_v = nnx.Param(v.astype(opts.param_dtype), out_sharding=("conv_kernel", None, "embed"),
                                  eager_sharding=False)
        self.weight_g = nnx.Param(g.astype(opts.param_dtype), out_sharding=("conv_kernel", None, None),
                                  eager_sharding=False)
        self.bias = make_param(rngs, zeros, (channels,), ("embed",), opts.param_dtype)

    def kernel(self):
        """The weight-normed kernel g * v / ||v|| (norm over all but the kernel axis, as torch's weight_norm dim=2),
        float32."""
        v = self.weight_v[...].astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))
        return self.weight_g[...].astype(jnp.float32) * v / norm

    def __call__(self, x):
        pad = self.kernel_size // 2
        y = conv1d(x.astype(self.dtype), self.kernel().astype(self.dtype), padding=((pad, pad),),
                   groups=self.groups, precision=self.precision)
        return y + self.bias[...].astype(self.dtype)


class PositionalConvEmbedding(nnx.Module):
    """Grouped conv over time (K, groups), 'same' padding with the last frame dropped for even K.

    HuBERT's `conv_pos_batch_norm` puts a BatchNorm before a plain conv instead of weight norm.
    """

    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        k, g, c = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups, config.hidden_size
        self.kernel_size = k
        if getattr(config, "conv_pos_batch_norm", False):
            self.batch_norm = BatchNorm1d(c, opts=opts, rngs=rngs)
            self.conv = Conv1d(c, c, k, padding=k // 2, groups=g, axes=("conv_kernel", None, "embed"),
                               opts=opts, rngs=rngs)
        else:
            self.batch_norm = None
            self.conv = WeightNormConv1d(c, k, g, opts=opts, rngs=rngs)
        self.activation = activation(config.feat_extract_activation, "feat_extract_activation")

    def __call__(self, x, *, deterministic: bool = True):
        if self.batch_norm is not None:
            x = self.batch_norm(x, deterministic=deterministic)
        y = self.conv(x)
        if self.kernel_size % 2 == 0:
            y = y[:, :-1]
        return self.activation(y)


def init_front_end_as_fairseq(model, rngs: nnx.Rngs) -> None:
    """Draw again, in place, the two front-end tensors whose initialisation differs between transformers and
    the reference pretraining code (fairseq's HubertModel and Wav2Vec2Model; unilm's WavLM follows them):
    - HuBERT's feature projection (fairseq `post_extract_proj`, a torch Linear): weight and bias
      U(-1/sqrt(in), 1/sqrt(in)), where transformers draws N(0, 0.02) and a zero bias (wav2vec2's and WavLM's
      projection already start so);
    - the positional conv: N(0, sqrt(4 / (K * C))) before its weight norm (g = ||v||), a zero bias, where
      transformers keeps torch's Conv1d default (its init does not reach a weight-normed tensor).
    On the demo's HuBERT, training from transformers' draws fell behind fairseq's seeds, from fairseq's own
    update-0 weights it did not (README, "Learning as fairseq learns"). `model`: a base model."""
    config, opts = model.config, model.opts
    projection = model.feature_projection
    if projection.hubert_style:
        in_dim = config.conv_dim[-1]
        projection.projection = Linear(in_dim, config.hidden_size, axes=("conv_out", "embed"), opts=opts, rngs=rngs,
                                       **torch_linear_init(in_dim))
    pos = model.encoder.pos_conv_embed
    size, groups, channels = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups, config.hidden_size
    std = math.sqrt(4.0 / (size * channels))  # fairseq's make_conv_pos
    if pos.batch_norm is None:
        pos.conv = WeightNormConv1d(channels, size, groups, opts=opts, rngs=rngs, std=std)
    else:
        pos.conv = Conv1d(channels, channels, size, padding=size // 2, groups=groups,
                          axes=("conv_kernel", None, "embed"), kernel_init=normal(std), bias_init=zeros, opts=opts,
                          rngs=rngs)


def check_waveform(config, input_values, attention_mask=None) -> None:
    """Clear errors for inputs the conv stack cannot take (static shapes, so it also works under jit)."""
    from hubert_jax.lengths import receptive_field

    shape = getattr(input_values, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"input_values must be a (batch, samples) array of audio, got shape {shape}")
    if not jnp.issubdtype(input_values.dtype, jnp.floating):
        raise ValueError(f"input_values must be floating point audio, got dtype {input_values.dtype}")
    needed = receptive_field(config)
    if shape[1] < needed:
        raise ValueError(
            f"input_values has {shape[1]} samples, fewer than the feature encoder's receptive field of "
            f"{needed} samples (one output frame)")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_values "
                         f"shape {tuple(shape)}")
