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

from typing import NamedTuple, Sequence

import numpy as np

from hubert_jax.data.audio import as_waveform
from hubert_jax.lengths import SAMPLE_RATE, feat_extract_output_lengths, grid_length, receptive_field

_FORWARD: dict = {}


def _forward(layers: tuple[int, ...] | None | str):
    """One jitted forward per output kind (the last hidden state, a stack of hidden states, or "logits" of a
    head); nnx.jit keeps a compilation per model structure and shape."""
    if layers not in _FORWARD:
        import jax.numpy as jnp
        from flax import nnx

        def run(model, x, mask):
            if layers == "logits":
                return model(x, attention_mask=mask, group_norm_over_real_samples=True).logits
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


def default_max_tokens() -> int:
    """Samples per call: 16 s on CPU, 64 s on an accelerator. On CPU small calls run faster per row and a
    corpus compiles fewer programs: the shipped corpus' layer-6 features of hubert-base took 60 s at 16 s
    against 70 s at 64 s, compiled (benchmarks/inference.py --corpus); an accelerator wants bigger calls."""
    import jax

    return (16 if jax.default_backend() == "cpu" else 64) * SAMPLE_RATE


def _checked_audio(model, waveforms) -> list[np.ndarray]:
    audio = [as_waveform(w, i) for i, w in enumerate(waveforms)]
    needed = receptive_field(model.config)
    for i, a in enumerate(audio):
        if len(a) < needed:
            raise ValueError(f"waveform {i} has {len(a)} samples: too short for one frame ({needed})")
    return audio


def _batched(audio: list[np.ndarray], run, *, max_tokens: int, ratio: float, full_rows: bool):
    """(index, run's output row) for every waveform, grouped by padded length: each call's rows are the
    waveforms padded to their grid length (`lengths.grid_length`) with a mask, `row_count` of them (or the
    budget's with `full_rows`); run(x, mask) -> an array whose first axis is the rows."""
    lengths = np.array([len(a) for a in audio])
    padded = np.array([grid_length(int(n), ratio) for n in lengths])
    for size in sorted(set(padded.tolist())):
        members = np.flatnonzero(padded == size)
        budget = max(1, (max_tokens or default_max_tokens()) // size)
        several = full_rows or len(members) > budget  # then the last call runs the full calls' program too
        for start in range(0, len(members), budget):
            batch = members[start: start + budget]
            rows = budget if several else row_count(len(batch), budget)
            x = np.zeros((rows, size), np.float32)
            mask = np.zeros((rows, size), np.int32)
            mask[len(batch):] = 1  # filler rows keep the shape; they are silent and discarded
            for row, index in enumerate(batch):
                x[row, : lengths[index]] = audio[index]
                mask[row, : lengths[index]] = 1
            out = run(x, mask)
            for row, index in enumerate(batch):
                yield int(index), out[row]


def extract(model, waveforms, *, layer: int | Sequence[int] | None = None, max_tokens: int | None = None,
            ratio: float = 1.25, full_rows: bool = False, chunk_length_s: float | None = None,
            stride_length_s: float | Sequence[float] | None = None) -> list[np.ndarray]:
    """Each waveform's features, float32, in input order: `last_hidden_state` (layer None) or
    `hidden_states[layer]` (the input of layer 0 for 0, else layer `layer`'s output), (frames, hidden) each;
    several layers at once (a sequence of them, one forward pass): (len(layer), frames, hidden) each.

    `max_tokens`: samples per call at most (default `default_max_tokens()`; rows <= max_tokens // padded
    length, at least 1). The files of a padded length that fit one call make one call of their count rounded
    up to a power of two (`row_count`: one file, one row); more make calls of the budget's rows, the last
    one too, so that a length compiles one program. `ratio`: the spacing of the grid of
    padded lengths (`lengths.grid_length`); `full_rows`: every call of a length has the budget's rows, so the
    same utterance gets bit-identical features whatever else is in the call (XLA's float results can differ
    in the last bit between batch sizes): what a sharded dump needs to equal a one-host dump.
    `chunk_length_s` (and `stride_length_s`, as `transcribe` takes them): long files are cut into overlapping
    chunks, each run alone and trimmed by its strides, and the chunks' frames joined: a file's features have
    its frame count, every frame computed with at least a stride of context on either side (but at the file's
    ends), and memory holds chunks, not the file's attention."""
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
    audio = _checked_audio(model, waveforms)
    forward = _forward(layers)
    add_adapter = None if layer is None else False  # hidden states come before the adapter
    if chunk_length_s and add_adapter is None and config.uses_adapter:
        raise ValueError("chunk_length_s: the adapter's output frames do not line up with the strides; ask for a "
                         "layer (its hidden states come before the adapter) or leave the files whole")
    pieces = _pieces(audio, config, chunk_length_s, stride_length_s)

    def run(x, mask):
        features = np.asarray(forward(model, x, mask), np.float32)
        if layers is None:
            return features
        features = np.moveaxis(features, 0, 1)  # (B, layers, frames, hidden)
        return features if several else features[:, 0]

    out: list = [None] * len(pieces)
    for index, features in _batched([p.samples for p in pieces], run, max_tokens=max_tokens, ratio=ratio,
                                    full_rows=full_rows):
        frames = int(feat_extract_output_lengths(config, len(pieces[index].samples), add_adapter))
        out[index] = features[..., :frames, :][..., pieces[index].kept, :]
    joined = [np.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]
              for parts in _per_file(pieces, out, len(audio))]
    for index, features in enumerate(joined):
        frames = int(feat_extract_output_lengths(config, len(audio[index]), add_adapter))
        if features.shape[-2] != frames:  # strides under a frame's receptive field leave a chunk without frames
            raise ValueError(f"waveform {index}: its chunks gave {features.shape[-2]} frames, not {frames}: give "
                             f"stride_length_s of at least {receptive_field(config) / SAMPLE_RATE:g} s")
    return joined


def transcribe(model, waveforms, processor, *, chunk_length_s: float | None = None,
               stride_length_s: float | Sequence[float] | None = None, max_tokens: int | None = None,
               ratio: float = 1.25) -> list[str]:
    """Greedy CTC transcripts of waveforms of any lengths (16 kHz floats), in input order, batched as
    `extract` batches: each equals its file alone (group-norm extractors included), as transformers decodes it.

    `model`: a CTC head (HubertForCTC, WavLMForCTC, Wav2Vec2ForCTC); `processor`: a `processing.Processor`, or a
    directory holding its files (the model's own, as the converter and fine-tuning write them).
    `chunk_length_s`: files are cut into chunks of that length overlapping by `stride_length_s` on each side
    (default chunk_length_s / 6; a pair gives left and right), each chunk normalised alone, its logits trimmed
    by the strides and the ids of all chunks decoded as one: what transformers' ASR pipeline does with the
    same settings, so memory holds chunks, not the file's attention."""
    from hubert_jax.processing import Processor

    if not hasattr(model, "lm_head"):
        raise TypeError(f"transcribe takes a CTC model (HubertForCTC, WavLMForCTC, Wav2Vec2ForCTC), got "
                        f"{type(model).__name__}")
    if not isinstance(processor, Processor):
        processor = Processor.from_pretrained(str(processor))
    config = model.config
    pieces = _pieces(_checked_audio(model, waveforms), config, chunk_length_s, stride_length_s)
    inputs = _checked_audio(model, [processor.feature_extractor([p.samples], sampling_rate=SAMPLE_RATE)["input_values"][0]
                                    for p in pieces])  # normalised: still finite float32 audio
    forward = _forward("logits")
    ids: list = [None] * len(pieces)
    for index, logits in _batched(inputs, lambda x, mask: np.asarray(forward(model, x, mask)), max_tokens=max_tokens,
                                  ratio=ratio, full_rows=False):
        frames = int(feat_extract_output_lengths(config, len(inputs[index])))
        ids[index] = logits[:frames].argmax(-1)[pieces[index].kept]
    return [processor.tokenizer.decode(np.concatenate(p).tolist() if p else [])
            for p in _per_file(pieces, ids, len(waveforms))]


class _Piece(NamedTuple):
    file: int
    samples: np.ndarray
    kept: slice  # its own frames: all of a whole file's; a chunk's without its strides


def _pieces(audio: list[np.ndarray], config, chunk_length_s, stride_length_s) -> list[_Piece]:
    """Every file whole, or (with `chunk_length_s`) cut into chunks as transformers' ASR pipeline cuts it
    (`_chunks`), each with the frames it keeps (`rescale_stride`, then frames[left:token_n - right]). A last
    chunk shorter than one frame's receptive field (which transformers' model cannot run) is left out: its
    strides leave none of its frames."""
    if not chunk_length_s:
        return [_Piece(index, wave, slice(None)) for index, wave in enumerate(audio)]
    needed, align = receptive_field(config), config.inputs_to_logits_ratio
    pieces = []
    for index, wave in enumerate(audio):
        for chunk, (input_n, left, right) in _chunks(wave, align, needed, chunk_length_s, stride_length_s):
            if len(chunk) >= needed:
                token_n = int(round(input_n / align))
                kept = slice(int(round(left / input_n * token_n)), token_n - int(round(right / input_n * token_n)))
                pieces.append(_Piece(index, chunk, kept))
    return pieces


def _per_file(pieces: list[_Piece], outputs: list, files: int) -> list[list]:
    """The pieces' outputs gathered by file, in order."""
    grouped: list[list] = [[] for _ in range(files)]
    for piece, output in zip(pieces, outputs):
        grouped[piece.file].append(output)
    return grouped


def _chunks(wave: np.ndarray, align_to: int, needed: int, chunk_length_s: float, stride_length_s):
    """(chunk, (samples, left stride, right stride)) as transformers' ASR pipeline cuts a file (`chunk_iter`):
    lengths rounded to whole frames, a step of chunk - left - right, no left stride on the first chunk and no
    right stride on the last. A chunk shorter than one frame's receptive field (which transformers' model
    cannot run) is dropped by the caller: its strides leave none of its frames."""
    if stride_length_s is None:
        stride_length_s = chunk_length_s / 6
    if isinstance(stride_length_s, (int, float)):
        stride_length_s = (stride_length_s, stride_length_s)
    chunk_len, left, right = (int(round(s * SAMPLE_RATE / align_to) * align_to)
                              for s in (chunk_length_s, *stride_length_s))
    if chunk_len <= left + right:
        raise ValueError(f"chunk_length_s={chunk_length_s} must be longer than the strides {tuple(stride_length_s)} "
                         f"together")
    if chunk_len < needed:
        raise ValueError(f"chunk_length_s={chunk_length_s}: {chunk_len} samples, too short for one frame ({needed})")
    for start in range(0, len(wave), chunk_len - left - right):
        chunk = wave[start: start + chunk_len]
        last = start + chunk_len >= len(wave)
        stride = (len(chunk), 0 if start == 0 else left, 0 if last else right)
        if len(chunk) > stride[1]:
            yield chunk, stride
        if last:
            break
