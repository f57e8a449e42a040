"""wav2vec 2.0 / XLSR contrastive pretraining (`config.task = "wav2vec2"`), with fairseq's semantics
(fairseq `Wav2Vec2Model` and its wav2vec criterion, infonce):

- span masks over the latent frames (`config.masking`; base: mask_prob 0.65, length 10), the masked
  frames replaced by the mask embedding;
- targets: the Gumbel product quantizer's codewords of the masked frames, its temperature annealed per
  update, max(start * decay^step, floor) (`config.wav2vec2.gumbel`; base: 2 -> 0.5, x0.999995), from the
  train state's step;
- distractors: `num_negatives` (model config; 100) per masked frame, drawn uniformly from the other masked
  frames of the same utterance (`hubert_jax.masking.sample_negatives`), one equal to the positive scored -inf;
- the loss per masked frame: cross-entropy over cosine similarity / `contrastive_logits_temperature`
  (0.1), positive first, plus `diversity_loss_weight` (0.1) x (V - prob perplexity) / V plus
  `config.loss.features_pen` (10) x the conv features' mean square: fairseq's loss / sample_size.

What keeps bf16 stable: the quantizer's logits and softmax and the similarity logits are float32 whatever
the compute dtype (models/pretraining_w2v2.py); the Trainer's non-finite guard skips (and counts) a step
whose loss or gradient is not finite. Logged: contrastive accuracy (fairseq's), prob and code perplexity,
the temperature, the loss's parts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax.lengths import feat_extract_output_lengths, feature_vector_mask
from hubert_jax.masking import sample_negatives, scored_frames, span_mask
from hubert_jax.training.resolve import model_config
from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.base import Task, batch_means, check_family, crop_data
from hubert_jax.training.trainer import model_options


def gumbel_temperature(step, start: float, floor: float, decay: float):
    """fairseq's per-update annealing: max(start * decay^step, floor), as exp(step * log decay): a float32
    power of 0.999995 itself would be off by 0.07% after 100k steps."""
    return jnp.maximum(start * jnp.exp(jnp.asarray(step, jnp.float32) * math.log(decay)), floor)


def check_distractors(cfg) -> None:
    """Refuse settings under which a row has no distractor to tell its masked frames from: the loss would
    be the diversity and feature terms alone, and the accuracy meaningless."""
    from hubert_jax.lengths import feat_extract_output_lengths as frames_of

    m = cfg.masking
    negatives = model_config(cfg.model).num_negatives
    if m.mask_prob <= 0:
        raise ValueError(f"config.masking.mask_prob={m.mask_prob}: wav2vec 2.0 predicts the masked frames, so "
                         f"nothing would be predicted (fairseq base: 0.65)")
    if negatives < 1:
        raise ValueError(f"model num_negatives={negatives}: the contrastive loss needs distractors (fairseq: 100)")
    shortest = int(frames_of(model_config(cfg.model), max(int(cfg.data.min_samples), 400), add_adapter=False))
    fewest = min(shortest, int(m.mask_length) + max(int(m.min_masks), 1) - 1)
    if fewest < 2:
        raise ValueError(f"config.masking: mask_length {m.mask_length} with min_masks {m.min_masks} can leave a "
                         f"row with one masked frame, which has no other masked frame to draw distractors from; "
                         f"use mask_length >= 2 or min_masks >= 2")


@register_task("wav2vec2")
class Wav2Vec2Task(Task):
    """wav2vec 2.0 / XLS-R contrastive pretraining with the diversity loss and Gumbel temperature annealing (fairseq's
    wav2vec criterion)."""
    # the Gumbel temperature's start, floor and per-update decay (fairseq base: 2 -> 0.5 by x0.999995);
    # distractors, logit temperature and the diversity weight are the model config's (num_negatives,
    # contrastive_logits_temperature, diversity_loss_weight), the feature penalty config.loss.features_pen
    sections = {"wav2vec2": dict(gumbel=(2.0, 0.5, 0.999995))}
    log_keys = ("loss", "accuracy", "code_perplexity")

    def __init__(self, cfg):
        super().__init__(cfg)
        check_family(self.cfg, "wav2vec2", "configs/wav2vec2_base.py")
        check_distractors(self.cfg)

    def data(self, workdir):
        return crop_data(self.cfg, labels=False)  # contrastive targets come from the audio itself

    def build(self):
        from hubert_jax.models import Wav2Vec2ForPreTraining

        return Wav2Vec2ForPreTraining(model_config(self.cfg.model), rngs=nnx.Rngs(self.cfg.seed),
                                      opts=model_options(self.cfg.model))

    def setup(self, abstract, mesh, rules) -> None:
        self.config = abstract.config

    def masks(self, key, batch):
        """(frame mask of real frames, span mask, distractor indices) of a batch."""
        config = self.config
        m = self.cfg.masking
        frames = int(feat_extract_output_lengths(config, batch["input_values"].shape[1], add_adapter=False))
        real = feature_vector_mask(config, frames, batch["attention_mask"], add_adapter=False)
        k_mask, k_neg = jax.random.split(key)
        mask = span_mask(k_mask, real.shape, mask_prob=m.mask_prob, mask_length=m.mask_length,
                         min_masks=m.min_masks, lengths=real.sum(-1))
        return real, mask, sample_negatives(k_neg, mask, config.num_negatives)

    def loss(self, model, batch, mask, negatives, *, temperature, deterministic: bool, dropout_rng=None):
        """fairseq's wav2vec criterion / sample_size, and the metrics, for given masks and distractors."""
        config = self.config
        out = model(batch["input_values"], attention_mask=batch["attention_mask"], mask_time_indices=mask,
                    sampled_negative_indices=negatives, deterministic=deterministic, dropout_rng=dropout_rng,
                    gumbel_temperature=temperature, feature_grad_mult=self.cfg.loss.feature_grad_mult)
        n = jnp.maximum(mask.sum(), 1).astype(jnp.float32)
        scored = jnp.sum(scored_frames(mask))
        vars_ = config.num_codevectors_per_group * config.num_codevector_groups
        contrastive = out.contrastive_loss / n
        diversity = (vars_ - out.prob_perplexity) / vars_
        loss = contrastive + config.diversity_loss_weight * diversity + self.cfg.loss.features_pen * out.features_pen
        metrics = {"loss": loss, "contrastive": contrastive, "diversity": diversity,
                   "features_pen": out.features_pen, "accuracy": out.correct / jnp.maximum(scored, 1), "correct": out.correct,
                   "masked_frames": mask.sum(), "scored_frames": scored, "prob_perplexity": out.prob_perplexity,
                   "code_perplexity": out.code_perplexity, "temperature": jnp.asarray(temperature, jnp.float32)}
        return loss, metrics

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        mask_key, dropout_key = jax.random.split(key)
        _, mask, negatives = self.masks(mask_key, batch)
        g = self.cfg.wav2vec2.gumbel
        temperature = gumbel_temperature(step, *g)
        return self.loss(model, batch, mask, negatives, temperature=temperature, deterministic=deterministic,
                         dropout_rng=None if deterministic else dropout_key)

    def summarize(self, metrics: list[dict]) -> dict:
        frames = max(sum(int(m["scored_frames"]) for m in metrics), 1)
        out = batch_means(metrics, "loss", "contrastive", "prob_perplexity", "code_perplexity")
        out["accuracy"] = sum(int(m["correct"]) for m in metrics) / frames
        return out

    def load_initial(self, model, directory: str) -> None:
        """The whole model (quantizer and projections too) from a wav2vec2 pretraining directory, else its
        encoder (the heads start fresh)."""
        from hubert_jax.pretrained import load_weights_into

        load_weights_into(model, directory)
