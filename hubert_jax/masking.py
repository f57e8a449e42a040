"""Span masking for masked prediction, with fairseq's `compute_mask_indices` semantics, in JAX.

fairseq (data_utils.compute_mask_indices, mask_type "static", no_overlap False, as HuBERT and wav2vec 2.0
pretraining call it) does, per utterance of `sz` valid frames:
  num_spans = max(min_masks, int(mask_prob * sz / mask_length + u)),  u ~ U(0, 1)
  (one u for the whole batch when there is no padding, one per utterance otherwise);
  span starts: num_spans distinct positions drawn uniformly from [0, sz - mask_length)
  (from [0, num_spans + 1) when the utterance is too short for that); each span covers mask_length
  frames, spans may overlap, frames past sz are dropped;
  then (require_same_masks) every utterance keeps a random subset of its masked frames, as many as the
  batch's least-masked utterance has, so every row masks the same number of frames.

Here the same draws are made from an explicit key with static shapes, so the function jits and a
resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _keep_top(scores, count):
    """Boolean mask of each row's `count` highest scores (ties broken by position)."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return ranks < count[:, None]


def span_mask(key, shape: tuple[int, int], *, mask_prob: float, mask_length: int, min_masks: int = 2,
              lengths=None, require_same_masks: bool = True):
    """(B, T) boolean mask of masked frames. `lengths` (B,) are the valid frames per row (None: all T)."""
    batch, frames = shape
    if mask_prob <= 0:
        return jnp.zeros(shape, bool)
    if mask_length < 1:
        raise ValueError(f"mask_length must be at least 1, got {mask_length}")
    k_num, k_start, k_subset = jax.random.split(key, 3)
    if lengths is None:
        sizes = jnp.full((batch,), frames, jnp.int32)
        u = jnp.broadcast_to(jax.random.uniform(k_num, ()), (batch,))
    else:
        sizes = jnp.minimum(jnp.asarray(lengths, jnp.int32), frames)
        u = jax.random.uniform(k_num, (batch,))
    num_spans = jnp.maximum(min_masks, jnp.floor(mask_prob * sizes / mask_length + u).astype(jnp.int32))
    min_len = jnp.where(sizes - mask_length <= num_spans, sizes - num_spans - 1, mask_length)
    start_range = jnp.maximum(sizes - min_len, 1)
    num_spans = jnp.minimum(num_spans, start_range)

    positions = jnp.arange(frames)[None, :]
    scores = jnp.where(positions < start_range[:, None], jax.random.uniform(k_start, shape), -1.0)
    starts = _keep_top(scores, num_spans).astype(jnp.int32)
    covered = jnp.cumsum(starts, axis=-1)
    shifted = jnp.pad(covered, ((0, 0), (mask_length, 0)))[:, :frames]
    mask = ((covered - shifted) > 0) & (positions < sizes[:, None])

    if require_same_masks:
        target = jnp.min(mask.sum(-1))
        scores = jnp.where(mask, jax.random.uniform(k_subset, shape), -1.0)
        mask = _keep_top(scores, jnp.broadcast_to(target, (batch,))) & mask
    return mask


def scored_frames(mask):
    """The masked frames whose row has distractors (another masked frame): a row with one masked frame
    scores its positive against nothing, so fairseq would count it as correct; it does not count here."""
    mask = jnp.asarray(mask, bool)
    return mask & (mask.sum(-1, keepdims=True) >= 2)


def sample_negatives(key, mask, num: int):
    """wav2vec 2.0's distractors (fairseq `sample_negatives`, `cross_sample_negatives` 0): for every masked
    frame of each row, `num` frames drawn uniformly, with replacement, from the row's *other* masked frames.

    mask (B, T) bool. Returns (B, T, num) int32 indices into the flattened (B * T) frames; rows of unmasked
    frames hold indices too (of masked frames of the same row), which the loss ignores. A row with fewer
    than two masked frames has no distractor to draw: its indices point at its own frames and the loss
    masks them as equal to the positive."""
    batch, frames = mask.shape
    mask = jnp.asarray(mask, bool)
    count = mask.sum(-1).astype(jnp.int32)  # (B,)
    # the masked frames of each row in time order, then the rest: position r of `order` is the r-th masked
    order = jnp.argsort(~mask, axis=-1, stable=True).astype(jnp.int32)
    rank = jnp.cumsum(mask, axis=-1).astype(jnp.int32) - 1  # a masked frame's rank among its row's masked
    others = jnp.maximum(count - 1, 1)[:, None, None]
    draw = jnp.floor(jax.random.uniform(key, (batch, frames, num)) * others).astype(jnp.int32)
    draw = jnp.minimum(draw, others - 1)
    draw = jnp.where(draw >= rank[..., None], draw + 1, draw)  # skip the frame itself
    draw = jnp.minimum(draw, jnp.maximum(count - 1, 0)[:, None, None])
    chosen = jnp.take_along_axis(order[:, None, :], draw.reshape(batch, 1, frames * num), axis=-1)
    chosen = chosen.reshape(batch, frames, num)
    return chosen + (jnp.arange(batch, dtype=jnp.int32) * frames)[:, None, None]
