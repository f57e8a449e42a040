"""Features of many utterances of any lengths, batched: what a Flax user runs over a corpus.

    from hubert_jax import FlaxAutoModel
    from hubert_jax.inference import extract
    model = FlaxAutoModel.from_pretrained("my-hubert")
    features = extract(model, waveforms, layer=6)      # one (frames, hidden) array per waveform, in order

Utterances are padded up to the lengths of a fixed grid (1 s x 1.25^k by default, so at most a fifth of
a row is padding, and the same lengths in every call), batched by a budget of samples per call (a call's
rows: its utterances rounded up to a power of two), and run with an attention mask; each compiled shape is
reused, across calls too. The result equals running each utterance alone: padded frames are masked out of
attention and the positional conv, and a group-norm extractor (HuBERT base, wav2vec 2.0 base) takes its
statistics over the real samples only (`group_norm_over_real_samples`). transformers instead includes the
padding in those statistics, which is why it advises not to batch group-norm models with padding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hubert_jax.data.audio import as_waveform
from hubert_jax.data.buckets import grid_length
from hubert_jax.lengths import feat_extract_output_lengths, receptive_field
from hubert_jax.lengths import SAMPLE_RATE

_FORWARD: dict = {}


def _forward(layers: tuple[int, ...] | None):
    """One jitted forward per output kind (the last hidden state, or a stack of hidden states); nnx.jit keeps a
    compilation per model structure and shape."""
    if layers not in _FORWARD:
        import jax.numpy as jnp
        from flax import nnx

        def run(model, x, mask):
            out = model(x, attention_mask=mask, output_hidden_states=layers is not None,
                        group_norm_over_real_samples=True)
            if layers is None:
                return out.last_hidden_state
            return jnp.stack([out.hidden_states[i] for i in layers])  # (layers, B, frames, hidden)

        _FORWARD[layers] = nnx.jit(run)
    return _FORWARD[layers]


def row_count(members: int, budget: int) -> int:
    """Rows of a call holding `members` utterances: the next power of two, within the budget of rows. A call
    computes its real rows and few filler rows (one utterance: one row), and the shapes stay few."""
    return min(budget, 1 << max(0, members - 1).bit_length())


def extract(model, waveforms, *, layer: int | Sequence[int] | None = None, max_tokens: int = 64 * SAMPLE_RATE,
            ratio: float = 1.25, full_rows: bool = False) -> list[np.ndarray]:
    """Each waveform's features, float32, in input order: `last_hidden_state` (layer None) or
    `hidden_states[layer]` (the input of layer 0 for 0, else layer `layer`'s output), (frames, hidden) each;
    several layers at once (a sequence of them, one forward pass): (len(layer), frames, hidden) each.

    `max_tokens`: samples per call at most (rows <= max_tokens // padded length, at least 1; a call's rows are
    its utterances' count rounded up to a power of two, `row_count`); `ratio`: the spacing of the grid of
    padded lengths (`buckets.grid_length`); `full_rows`: every call of a length has the budget's rows, so the
    same utterance gets bit-identical features whatever else is in the call (XLA's float results can differ
    in the last bit between batch sizes): what a sharded dump needs to equal a one-host dump."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "feature_extractor"):
        raise TypeError(f"extract takes a base model (HubertModel, WavLMModel, Wav2Vec2Model), got "
                        f"{type(model).__name__}")
    several = layer is not None and not isinstance(layer, (int, np.integer))
    layers = None if layer is None else tuple(int(i) for i in layer) if several else (int(layer),)
    for i in layers or ():
        if not 0 <= i <= config.num_hidden_layers:
            raise ValueError(f"layer {i}: the model has hidden states 0..{config.num_hidden_layers}")
    if layers == ():
        raise ValueError("layer: give at least one layer (or None for the last hidden state)")
    audio = [as_waveform(w, i) for i, w in enumerate(waveforms)]
    if not audio:
        return []
    lengths = np.array([len(a) for a in audio])
    needed = receptive_field(config)
    if lengths.min() < needed:
        short = int(np.argmin(lengths))
        raise ValueError(f"waveform {short} has {lengths[short]} samples: too short for one frame ({needed})")
    padded = np.array([grid_length(int(n), ratio) for n in lengths])
    out: list = [None] * len(audio)
    forward = _forward(layers)
    add_adapter = None if layer is None else False  # hidden states come before the adapter
    for size in sorted(set(padded.tolist())):
        members = np.flatnonzero(padded == size)
        budget = max(1, max_tokens // size)
        for start in range(0, len(members), budget):
            batch = members[start: start + budget]
            rows = budget if full_rows else row_count(len(batch), budget)
            x = np.zeros((rows, size), np.float32)
            mask = np.zeros((rows, size), np.int32)
            mask[len(batch):] = 1  # filler rows keep the shape; they are silent and discarded
            for row, index in enumerate(batch):
                x[row, : lengths[index]] = audio[index]
                mask[row, : lengths[index]] = 1
            features = np.asarray(forward(model, x, mask), np.float32)
            if layers is not None:
                features = np.moveaxis(features, 0, 1)  # (B, layers, frames, hidden)
                if not several:
                    features = features[:, 0]
            for row, index in enumerate(batch):
                frames = int(feat_extract_output_lengths(config, int(lengths[index]), add_adapter))
                out[index] = features[row, ..., :frames, :]
    return out
