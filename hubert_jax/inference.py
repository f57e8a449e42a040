"""Features of many utterances of any lengths, batched: what a Flax user runs over a corpus.

    from hubert_jax import FlaxAutoModel
    from hubert_jax.inference import extract
    model = FlaxAutoModel.from_pretrained("my-hubert")
    features = extract(model, waveforms, layer=6)      # one (frames, hidden) array per waveform, in order

Utterances are padded up to the lengths of a fixed grid (1 s x 1.25^k by default, so at most a fifth of
a row is padding, and the same lengths in every call), batched by a budget of samples per call, and run
with an attention mask; each compiled shape is reused, across calls too. The result equals running each utterance alone: padded frames are masked out of attention and
the positional conv, and a group-norm extractor (HuBERT base, wav2vec 2.0 base) takes its statistics over
the real samples only (`group_norm_over_real_samples`). transformers instead includes the padding in those
statistics, which is why it advises not to batch group-norm models with padding.
"""

from __future__ import annotations

import numpy as np

from hubert_jax.data.audio import as_waveform
from hubert_jax.data.buckets import grid_length
from hubert_jax.lengths import feat_extract_output_lengths, receptive_field
from hubert_jax.lengths import SAMPLE_RATE

_FORWARD: dict = {}


def _forward(layer: int | None):
    """One jitted forward per output kind; nnx.jit keeps a compilation per model structure and shape."""
    if layer not in _FORWARD:
        from flax import nnx

        def run(model, x, mask):
            out = model(x, attention_mask=mask, output_hidden_states=layer is not None,
                        group_norm_over_real_samples=True)
            return out.last_hidden_state if layer is None else out.hidden_states[layer]

        _FORWARD[layer] = nnx.jit(run)
    return _FORWARD[layer]


def extract(model, waveforms, *, layer: int | None = None, max_tokens: int = 64 * SAMPLE_RATE,
            ratio: float = 1.25) -> list[np.ndarray]:
    """Each waveform's features: `last_hidden_state` (layer None) or `hidden_states[layer]` (the input of
    layer 0 for 0, else layer `layer`'s output), float32 (frames, hidden), in input order.

    `max_tokens`: samples per call (rows = max_tokens // padded length, at least 1); `ratio`: the spacing
    of the grid of padded lengths (`buckets.grid_length`)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "feature_extractor"):
        raise TypeError(f"extract takes a base model (HubertModel, WavLMModel, Wav2Vec2Model), got "
                        f"{type(model).__name__}")
    if layer is not None and not 0 <= layer <= config.num_hidden_layers:
        raise ValueError(f"layer {layer}: the model has hidden states 0..{config.num_hidden_layers}")
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
    forward = _forward(layer)
    add_adapter = None if layer is None else False  # hidden states come before the adapter
    for size in sorted(set(padded.tolist())):
        members = np.flatnonzero(padded == size)
        rows = max(1, max_tokens // size)
        for start in range(0, len(members), rows):
            batch = members[start: start + rows]
            x = np.zeros((rows, size), np.float32)
            mask = np.zeros((rows, size), np.int32)
            mask[len(batch):] = 1  # filler rows keep the shape; they are silent and discarded
            for row, index in enumerate(batch):
                x[row, : lengths[index]] = audio[index]
                mask[row, : lengths[index]] = 1
            features = np.asarray(forward(model, x, mask), np.float32)
            for row, index in enumerate(batch):
                frames = int(feat_extract_output_lengths(config, int(lengths[index]), add_adapter))
                out[index] = features[row, :frames]
    return out
