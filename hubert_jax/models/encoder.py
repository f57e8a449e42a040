"""The transformer encoder: attention (with WavLM's gated relative position bias), feed-forward,
post-LN and pre-LN ("stable") layers, the layer stack (unrolled or scanned, with remat) and the
wav2vec2 adapter."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hubert_jax.models.attention import attention
from hubert_jax.models.frontend import PositionalConvEmbedding
from hubert_jax.models.layers import (Conv1d, Embedding, LayerNorm, Linear, ModelOptions, activation, dropout,
                                      fold, make_param, ones, uniform)
from hubert_jax.sharding import constrain

ACT_SEQUENCE = ("act_batch", None, None)  # (batch, time, model dim) between blocks


# ----------------------------------------------------------------------------- WavLM position bias
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(T, T) bucket ids of key_pos - query_pos, as transformers' WavLMAttention computes them.

    Shapes are static, so this runs in NumPy at trace time (float32 like torch) and costs nothing
    at run time.
    """
    pos = np.arange(length, dtype=np.int64)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    is_small = rel < max_exact
    # log(0) is never selected (rel < max_exact there); guard it so no warning or NaN appears
    safe = np.maximum(rel, 1).astype(np.float32)
    large = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = (np.float32(max_exact) + large * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(is_small, rel, large)


def compute_position_bias(embed: Embedding, length: int, num_buckets: int, max_distance: int):
    """(H, T, T) float32 ungated bias from layer 0's bucket embedding."""
    ids = jnp.asarray(relative_position_buckets(length, num_buckets, max_distance), jnp.int32)
    return jnp.take(embed.embedding[...].astype(jnp.float32), ids, axis=0).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- blocks
class Attention(nnx.Module):
    """Multi-head self-attention (transformers' k/q/v/out_proj), with WavLM's gated relative position bias when the
    layer has one."""
    def __init__(self, config, *, has_relative_position_bias: bool, opts: ModelOptions, rngs: nnx.Rngs):
        d, h = config.hidden_size, config.num_attention_heads
        self.num_heads, self.head_dim = h, d // h
        self.impl, self.precision = opts.attention_impl, opts.precision
        self.dropout_rate = config.attention_dropout
        std = config.initializer_range
        self.k_proj = Linear(d, d, axes=("embed", "heads"), std=std, opts=opts, rngs=rngs)
        self.v_proj = Linear(d, d, axes=("embed", "heads"), std=std, opts=opts, rngs=rngs)
        self.q_proj = Linear(d, d, axes=("embed", "heads"), std=std, opts=opts, rngs=rngs)
        self.out_proj = Linear(d, d, axes=("heads", "embed"), std=std, opts=opts, rngs=rngs)
        self.gated = config.relative_position_bias
        if self.gated:
            self.gru_rel_pos_const = make_param(rngs, ones, (1, h, 1, 1), (None, "heads", None, None),
                                                opts.param_dtype)
            self.gru_rel_pos_linear = Linear(self.head_dim, 8, axes=("kv", None), std=std, opts=opts, rngs=rngs)
            if has_relative_position_bias:
                self.rel_attn_embed = Embedding(config.num_buckets, h, axes=(None, "heads"), std=std, opts=opts,
                                                rngs=rngs)

    def _gate(self, x, position_bias):
        """WavLM: gate the shared bias per head from this layer's attention input."""
        b, t, _ = x.shape
        heads = x.reshape(b, t, self.num_heads, self.head_dim)
        proj = self.gru_rel_pos_linear(heads).astype(jnp.float32)  # (B, T, H, 8)
        gate_a, gate_b = jnp.split(jax.nn.sigmoid(proj.reshape(b, t, self.num_heads, 2, 4).sum(-1)), 2, axis=-1)
        const = self.gru_rel_pos_const[...].astype(jnp.float32).reshape(1, 1, self.num_heads, 1)
        gate = gate_a * (gate_b * const - 1.0) + 2.0  # (B, T, H, 1)
        return gate.transpose(0, 2, 1, 3) * position_bias[None]  # (B, H, T, T)

    def __call__(self, x, *, key_mask=None, position_bias=None, deterministic=True, dropout_rng=None):
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        heads = ("act_batch", None, "act_heads", None)
        q = constrain(self.q_proj(x).reshape(shape), heads)
        k = constrain(self.k_proj(x).reshape(shape), heads)
        v = constrain(self.v_proj(x).reshape(shape), heads)
        bias = self._gate(x, position_bias) if self.gated else None
        out = attention(q, k, v, impl=self.impl, bias=bias, key_mask=key_mask, dropout_rate=self.dropout_rate,
                        dropout_key=dropout_rng, deterministic=deterministic, precision=self.precision)
        return self.out_proj(out.reshape(b, t, -1))


class FeedForward(nnx.Module):
    """The transformer layer's feed-forward block: intermediate_dense, activation, output_dense (with dropouts)."""
    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        std = config.initializer_range
        self.intermediate_dense = Linear(config.hidden_size, config.intermediate_size, axes=("embed", "mlp"),
                                         std=std, opts=opts, rngs=rngs)
        self.output_dense = Linear(config.intermediate_size, config.hidden_size, axes=("mlp", "embed"), std=std,
                                   opts=opts, rngs=rngs)
        self.act = activation(config.hidden_act)
        self.activation_dropout, self.hidden_dropout = config.activation_dropout, config.hidden_dropout

    def __call__(self, x, *, deterministic=True, dropout_rng=None):
        x = constrain(self.act(self.intermediate_dense(x)), ("act_batch", None, "act_mlp"))
        x = dropout(x, self.activation_dropout, fold(dropout_rng, 0), deterministic)
        x = self.output_dense(x)
        return dropout(x, self.hidden_dropout, fold(dropout_rng, 1), deterministic)


class AttnAdapterLayer(nnx.Module):
    """MMS attention adapter (`adapter_attn_dim`): LayerNorm -> Linear -> ReLU -> Linear."""

    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        std = config.initializer_range
        self.norm = LayerNorm(config.hidden_size, eps=1e-5, opts=opts, rngs=rngs)
        self.linear_1 = Linear(config.hidden_size, config.adapter_attn_dim, axes=("embed", "mlp"), std=std,
                               opts=opts, rngs=rngs)
        self.linear_2 = Linear(config.adapter_attn_dim, config.hidden_size, axes=("mlp", "embed"), std=std,
                               opts=opts, rngs=rngs)

    def __call__(self, x):
        return self.linear_2(jax.nn.relu(self.linear_1(self.norm(x))))


class EncoderLayer(nnx.Module):
    """Post-LN (`do_stable_layer_norm=False`) or pre-LN (True) transformer block."""

    def __init__(self, config, *, has_relative_position_bias: bool = False, opts: ModelOptions, rngs: nnx.Rngs):
        self.pre_ln = config.do_stable_layer_norm
        self.attention = Attention(config, has_relative_position_bias=has_relative_position_bias, opts=opts,
                                   rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, opts=opts, rngs=rngs)
        self.feed_forward = FeedForward(config, opts=opts, rngs=rngs)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, opts=opts, rngs=rngs)
        has_adapter = self.pre_ln and getattr(config, "adapter_attn_dim", None) is not None
        self.adapter_layer = AttnAdapterLayer(config, opts=opts, rngs=rngs) if has_adapter else None
        self.hidden_dropout = config.hidden_dropout

    def __call__(self, x, *, key_mask=None, position_bias=None, deterministic=True, dropout_rng=None):
        kw = dict(deterministic=deterministic)
        residual = x
        if self.pre_ln:
            x = self.layer_norm(x)
        x = self.attention(x, key_mask=key_mask, position_bias=position_bias,
                           dropout_rng=fold(dropout_rng, 0), **kw)
        x = residual + dropout(x, self.hidden_dropout, fold(dropout_rng, 1), deterministic)
        if self.pre_ln:
            x = x + self.feed_forward(self.final_layer_norm(x), dropout_rng=fold(dropout_rng, 2), **kw)
            if self.adapter_layer is not None:
                x = x + self.adapter_layer(x)
            return x
        x = self.layer_norm(x)
        x = x + self.feed_forward(x, dropout_rng=fold(dropout_rng, 2), **kw)
        return self.final_layer_norm(x)


# ----------------------------------------------------------------------------- the stack
def _remat(fn, policy: str):
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    return jax.checkpoint(fn, policy=policies[policy])


class EncoderOutput(NamedTuple):
    """The encoder's output: last_hidden_state (B, frames, hidden), and every layer's when asked."""
    last_hidden_state: jax.Array
    hidden_states: tuple | None


class Encoder(nnx.Module):
    """pos conv -> [LayerNorm] -> layers -> [LayerNorm]; scan_layers stacks the layers on a `layers` axis.

    With scan, WavLM's bucket embedding (held by layer 0 in transformers) lives at `encoder.rel_attn_embed`
    so that all stacked layers have one structure; the converter moves it.
    """

    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        self.config = config
        self.num_layers = config.num_hidden_layers
        self.pre_ln = config.do_stable_layer_norm
        self.scan, self.remat_policy = opts.scan_layers, opts.remat_policy
        self.wavlm = config.relative_position_bias
        self.pos_conv_embed = PositionalConvEmbedding(config, opts=opts, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, opts=opts, rngs=rngs)
        self.hidden_dropout, self.layerdrop = config.hidden_dropout, config.layerdrop
        if self.scan:
            if self.wavlm:
                self.rel_attn_embed = Embedding(config.num_buckets, config.num_attention_heads,
                                                axes=(None, "heads"), std=config.initializer_range, opts=opts,
                                                rngs=rngs)

            @nnx.split_rngs(splits=self.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=self.num_layers,
                      transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(layer_rngs):
                return EncoderLayer(config, opts=opts, rngs=layer_rngs)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List([
                EncoderLayer(config, has_relative_position_bias=self.wavlm and i == 0, opts=opts, rngs=rngs)
                for i in range(self.num_layers)])

    def _position_bias(self, length: int):
        if not self.wavlm:
            return None
        embed = self.rel_attn_embed if self.scan else self.layers[0].attention.rel_attn_embed
        return compute_position_bias(embed, length, self.config.num_buckets, self.config.max_bucket_distance)

    def _layer_fn(self, graphdef, *, key_mask, position_bias, deterministic, dropout_rng):
        """(state, x, index) -> x: one layer as a pure function, with layerdrop and remat."""
        layerdrop = 0.0 if deterministic else self.layerdrop

        def run(state, x, index):
            layer = nnx.merge(graphdef, state)
            key = fold(dropout_rng, index)
            y = layer(x, key_mask=key_mask, position_bias=position_bias, deterministic=deterministic,
                      dropout_rng=fold(key, 0))
            y = constrain(y, ACT_SEQUENCE)  # the block boundary: batch-sharded, model dimension whole
            if layerdrop > 0.0:
                skip = jax.random.uniform(fold(key, 1)) < layerdrop
                if self.wavlm:  # transformers never drops WavLM's first layer
                    skip = jnp.logical_and(skip, index > 0)
                y = jnp.where(skip, x, y)
            return y

        return _remat(run, self.remat_policy)

    def __call__(self, x, *, key_mask=None, deterministic=True, dropout_rng=None, output_hidden_states=False):
        if key_mask is not None:
            x = jnp.where(key_mask[..., None], x, jnp.zeros_like(x))
        x = x + self.pos_conv_embed(x, deterministic=deterministic)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = constrain(dropout(x, self.hidden_dropout, fold(dropout_rng, 0), deterministic), ACT_SEQUENCE)
        position_bias = self._position_bias(x.shape[1])
        layers_rng = fold(dropout_rng, 1)
        fn_kw = dict(key_mask=key_mask, position_bias=position_bias, deterministic=deterministic,
                     dropout_rng=layers_rng)
        hidden_states = [x]
        if self.scan:
            graphdef, state = nnx.split(self.layers)
            run = self._layer_fn(graphdef, **fn_kw)

            def body(carry, xs):
                y = run(xs[0], carry, xs[1])
                return y, (y if output_hidden_states else None)

            x, stacked = jax.lax.scan(body, x, (state, jnp.arange(self.num_layers)))
            if output_hidden_states:
                hidden_states += [stacked[i] for i in range(self.num_layers)]
        else:
            for i, layer in enumerate(self.layers):
                graphdef, state = nnx.split(layer)
                x = self._layer_fn(graphdef, **fn_kw)(state, x, i)
                hidden_states.append(x)
        last = self.layer_norm(x) if self.pre_ln else x
        # hidden_states[i] is layer i's raw output (transformers v5: before the final pre-LN norm)
        return EncoderOutput(last, tuple(hidden_states) if output_hidden_states else None)


# ----------------------------------------------------------------------------- wav2vec2 adapter
class AdapterLayer(nnx.Module):
    """One wav2vec 2.0 adapter layer: a strided conv to twice the width, then a GLU."""
    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        c, k = config.output_hidden_size, config.adapter_kernel_size
        bound = math.sqrt(1 / (c * k))
        self.conv = Conv1d(c, 2 * c, k, stride=config.adapter_stride, padding=1, axes=("conv_kernel", "embed", "mlp"),
                           bias_init=uniform(-bound, bound), opts=opts, rngs=rngs)

    def __call__(self, x):
        a, b = jnp.split(self.conv(x), 2, axis=-1)
        return a * jax.nn.sigmoid(b)


class Adapter(nnx.Module):
    """Optional down-projection, then strided conv + GLU layers (halve the frame rate each)."""

    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        if config.output_hidden_size != config.hidden_size:
            self.proj = Linear(config.hidden_size, config.output_hidden_size, axes=("embed", None),
                               std=config.initializer_range, opts=opts, rngs=rngs)
            self.proj_layer_norm = LayerNorm(config.output_hidden_size, eps=1e-5, axes=(None,), opts=opts, rngs=rngs)
        else:
            self.proj = self.proj_layer_norm = None
        self.layers = nnx.List([AdapterLayer(config, opts=opts, rngs=rngs) for _ in range(config.num_adapter_layers)])

    def __call__(self, x):
        # transformers skips adapter layers at random in training (layerdrop), which changes the output
        # length; static shapes rule that out here, so every adapter layer always runs
        if self.proj is not None:
            x = self.proj_layer_norm(self.proj(x))
        for layer in self.layers:
            x = layer(x)
        return x
