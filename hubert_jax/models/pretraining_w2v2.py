"""wav2vec 2.0 pretraining head: Gumbel vector quantizer, projections and the contrastive + diversity loss
(transformers' Wav2Vec2ForPreTraining). Negatives are given as indices, sampled by the caller."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax.config import Wav2Vec2Config
from hubert_jax.masking import scored_frames
from hubert_jax.models.frontend import init_front_end_as_fairseq
from hubert_jax.models.hub_mixin import PretrainedMixin
from hubert_jax.models.layers import (Linear, ModelOptions, dropout, fold, make_param, normal, torch_linear_init,
                                      uniform, zeros)
from hubert_jax.models.model import Wav2Vec2Model, make_options
from hubert_jax.models.outputs import PreTrainingOutput


def _perplexity(probs, mask):
    """exp(entropy) of the codeword marginal per group, summed over groups; probs (N, G, V)."""
    if mask is None:
        marginal = probs.mean(axis=0)
    else:
        m = mask.reshape(-1)[:, None, None]
        marginal = jnp.where(m, probs, 0.0).sum(axis=0) / mask.sum()
    entropy = -jnp.sum(jnp.where(marginal > 0, marginal * jnp.log(jnp.where(marginal > 0, marginal, 1.0)), 0.0),
                       axis=-1)
    return jnp.exp(entropy).sum()


class GumbelVectorQuantizer(nnx.Module):
    """wav2vec 2.0's quantizer: groups of codevectors picked with a Gumbel softmax (hard in the forward pass, soft in
    the gradient)."""
    def __init__(self, config, *, opts: ModelOptions, rngs: nnx.Rngs):
        if config.codevector_dim % config.num_codevector_groups != 0:
            raise ValueError(f"config.codevector_dim ({config.codevector_dim}) must be divisible by "
                             f"config.num_codevector_groups ({config.num_codevector_groups})")
        self.num_groups, self.num_vars = config.num_codevector_groups, config.num_codevectors_per_group
        self.codevectors = make_param(rngs, uniform(0.0, 1.0),
                                      (1, self.num_groups * self.num_vars,
                                       config.codevector_dim // self.num_groups), (None, "vocab", None),
                                      opts.param_dtype)
        self.weight_proj = Linear(config.conv_dim[-1], self.num_groups * self.num_vars, axes=("conv_out", "vocab"),
                                  kernel_init=normal(1.0), bias_init=zeros, opts=opts, rngs=rngs)

    def __call__(self, features, *, mask_time_indices=None, deterministic=True, gumbel_rng=None,
                 temperature: float = 2.0):
        """(codevectors, perplexity, prob_perplexity, code_perplexity): the perplexity transformers reports
        (`prob_` in training, `code_` in evaluation); fairseq's soft-assignment (`prob_`) and hard-assignment
        (`code_`) perplexities of the codeword marginal over the masked frames. Logits and the softmax in
        float32 whatever the compute dtype."""
        b, t, _ = features.shape
        logits = self.weight_proj(features).astype(jnp.float32).reshape(b * t, self.num_groups, self.num_vars)
        hard = jax.nn.one_hot(jnp.argmax(logits, -1), self.num_vars, dtype=jnp.float32)
        prob_perplexity = _perplexity(jax.nn.softmax(logits, axis=-1), mask_time_indices)
        code_perplexity = _perplexity(hard, mask_time_indices)
        if deterministic:
            probs, perplexity = hard, code_perplexity
        else:
            if gumbel_rng is None:
                raise ValueError("the Gumbel quantizer needs a PRNG key when deterministic=False")
            gumbels = jax.random.gumbel(gumbel_rng, logits.shape, jnp.float32)
            soft = jax.nn.softmax((logits + gumbels) / temperature, axis=-1)
            chosen = jax.nn.one_hot(jnp.argmax(soft, -1), self.num_vars, dtype=jnp.float32)
            probs = chosen - jax.lax.stop_gradient(soft) + soft  # straight-through
            perplexity = prob_perplexity
        book = self.codevectors[...].astype(jnp.float32).reshape(self.num_groups, self.num_vars, -1)
        codevectors = jnp.einsum("ngv,gvd->ngd", probs, book).reshape(b, t, -1)
        return codevectors.astype(features.dtype), perplexity, prob_perplexity, code_perplexity


def _cosine(a, b, eps=1e-8):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    num = jnp.sum(a * b, axis=-1)
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return num / (na * nb)


class Wav2Vec2ForPreTraining(PretrainedMixin, nnx.Module):
    """wav2vec 2.0 / XLS-R pretraining: the base model, the quantizer and the two projections of the contrastive loss
    (transformers' Wav2Vec2ForPreTraining names)."""
    model_type = "wav2vec2"

    def __init__(self, config, *, rngs: nnx.Rngs | None = None, opts: ModelOptions | None = None, **opt_kw):
        if not isinstance(config, Wav2Vec2Config):
            raise ValueError(f"Wav2Vec2ForPreTraining needs a Wav2Vec2Config, got {type(config).__name__}")
        self.config = config
        self.opts = opts = make_options(opts, **opt_kw)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.base_model_prefix = "wav2vec2"
        self.wav2vec2 = Wav2Vec2Model(config, opts=opts, rngs=rngs)
        init_front_end_as_fairseq(self.wav2vec2, rngs)  # pretraining starts where fairseq's does
        self.quantizer = GumbelVectorQuantizer(config, opts=opts, rngs=rngs)
        self.project_hid = Linear(config.hidden_size, config.proj_codevector_dim, axes=("embed", None), opts=opts,
                                  rngs=rngs, **torch_linear_init(config.hidden_size))
        self.project_q = Linear(config.codevector_dim, config.proj_codevector_dim, axes=(None, None), opts=opts,
                                rngs=rngs, **torch_linear_init(config.codevector_dim))

    @property
    def base_model(self):
        return self.wav2vec2

    def __call__(self, input_values, attention_mask=None, mask_time_indices=None, sampled_negative_indices=None,
                 output_hidden_states=False, deterministic=True, dropout_rng=None,
                 gumbel_temperature: float = 2.0, feature_grad_mult: float = 1.0) -> PreTrainingOutput:
        """sampled_negative_indices (B, frames, K): flat indices into the (B * frames) quantized targets;
        feature_grad_mult: fairseq's gradient scale on the conv features."""
        cfg = self.config
        out = self.wav2vec2(input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices,
                            output_hidden_states=output_hidden_states, deterministic=deterministic,
                            dropout_rng=fold(dropout_rng, 0), feature_grad_mult=feature_grad_mult)
        predicted = self.project_hid(out.last_hidden_state)
        features = dropout(out.extract_features, cfg.feat_quantizer_dropout, fold(dropout_rng, 1), deterministic)
        quantized, perplexity, prob_perplexity, code_perplexity = self.quantizer(features, mask_time_indices=mask_time_indices,
                                               deterministic=deterministic, gumbel_rng=fold(dropout_rng, 2),
                                               temperature=gumbel_temperature)
        quantized = self.project_q(quantized)
        loss = contrastive = diversity = correct = None
        if sampled_negative_indices is not None:
            if mask_time_indices is None:
                raise ValueError("sampled_negative_indices needs mask_time_indices (the frames to predict)")
            b, t, c = quantized.shape
            negatives = quantized.reshape(-1, c)[sampled_negative_indices.reshape(-1)].reshape(b, t, -1, c)
            targets = jnp.concatenate([quantized[:, :, None], negatives], axis=2)  # (B, T, 1 + K, C)
            logits = _cosine(predicted[:, :, None], targets) / cfg.contrastive_logits_temperature
            # a negative identical to the positive (low codebook use) must not count
            neg_is_pos = jnp.all(quantized[:, :, None] == negatives, axis=-1)
            logits = logits.at[:, :, 1:].set(jnp.where(neg_is_pos, -jnp.inf, logits[:, :, 1:]))
            nll = -jax.nn.log_softmax(logits, axis=-1)[..., 0]
            contrastive = jnp.sum(jnp.where(mask_time_indices, nll, 0.0))
            # fairseq's accuracy: the positive scores highest, and not because every score is equal
            top, bottom = jnp.argmax(logits, -1) == 0, jnp.argmin(logits, -1) == 0
            correct = jnp.sum(scored_frames(mask_time_indices) & top & ~bottom)
            num_codevectors = cfg.num_codevectors_per_group * cfg.num_codevector_groups
            diversity = (num_codevectors - perplexity) / num_codevectors * mask_time_indices.sum()
            loss = contrastive + cfg.diversity_loss_weight * diversity
        return PreTrainingOutput(projected_states=predicted, projected_quantized_states=quantized,
                                 codevector_perplexity=perplexity, loss=loss, contrastive_loss=contrastive,
                                 diversity_loss=diversity, hidden_states=out.hidden_states,
                                 prob_perplexity=prob_perplexity, code_perplexity=code_perplexity,
                                 features_pen=out.features_pen, correct=correct)
