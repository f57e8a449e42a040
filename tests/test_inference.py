"""hubert_jax.inference.extract: utterances of any lengths, bucketed and batched, give each utterance's
features alone, in input order, for layer-norm and group-norm extractors of every family."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hubert_jax
from hubert_jax.inference import extract
from tests.reference import PREFIX, TINY, TINY_BY_FAMILY


def model_of(family, norm):
    config = hubert_jax.SpeechConfig.from_dict({**TINY, **TINY_BY_FAMILY[family], "model_type": family,
                                                "feat_extract_norm": norm, "do_stable_layer_norm": norm == "layer",
                                                "conv_bias": norm == "layer"})
    return getattr(hubert_jax, PREFIX[family] + "Model")(config, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("family,norm", [("hubert", "group"), ("hubert", "layer"), ("wavlm", "group"),
                                         ("wav2vec2", "layer")])
def test_batched_features_equal_each_utterance_alone(family, norm):
    model = model_of(family, norm)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(900, 6000, 9)]
    outputs = [model(jnp.asarray(wave)[None], output_hidden_states=True) for wave in waves]  # each alone, once
    for layer in (None, 1, (0, 2)):
        batched = extract(model, waves, layer=layer, max_tokens=4 * 6000)
        assert len(batched) == len(waves)
        for out, features in zip(outputs, batched):
            if isinstance(layer, tuple):  # several layers: stacked, from one forward pass
                alone = jnp.stack([out.hidden_states[i] for i in layer], axis=1)
            else:
                alone = out.last_hidden_state if layer is None else out.hidden_states[layer]
            np.testing.assert_allclose(features, np.asarray(alone[0]), atol=1e-4)


def test_long_files_are_extracted_in_strided_chunks_whose_frames_join_into_the_files_frames():
    """The tiny model's frame is 20 samples; its layer 0 sees 4 frames either side (the positional conv), so
    with 16-frame strides a layer-norm extractor's chunked layer 0 equals the whole file's on every frame."""
    model = model_of("hubert", "layer")
    rng = np.random.default_rng(8)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (22_013, 5_000, 1_200)]
    whole = extract(model, waves, layer=(0, 3))
    chunked = extract(model, waves, layer=(0, 3), chunk_length_s=0.1, stride_length_s=0.02)
    for w, c in zip(whole, chunked):
        assert c.shape == w.shape
        np.testing.assert_allclose(c[0], w[0], atol=1e-5)  # layer 0: local, so the joins are exact
    assert np.abs(chunked[0][1] - whole[0][1]).max() > 1e-3  # layer 3 attends within its chunk only
    # each chunk's kept frames are its own: chunk 2 of file 0 starts at 1600 - 2 * 320 samples, keeps 16:64
    second = extract(model, [waves[0][960: 960 + 1600]], layer=(0, 3))[0]
    np.testing.assert_allclose(chunked[0][:, 64: 64 + 48], second[:, 16: 64], atol=1e-5)
    assert len(chunked[2][0]) == len(whole[2][0])  # shorter than a chunk: whole
    with pytest.raises(ValueError, match="give stride_length_s of at least"):
        extract(model, waves[:1], layer=0, chunk_length_s=0.1, stride_length_s=0)
    adapter = hubert_jax.Wav2Vec2Model(hubert_jax.Wav2Vec2Config.from_dict(
        {**TINY, "add_adapter": True, "output_hidden_size": 32, "num_adapter_layers": 1}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="the adapter's output frames do not line up"):
        extract(adapter, waves[:1], chunk_length_s=0.1)
    assert extract(adapter, waves[:1], layer=1, chunk_length_s=0.1)[0].shape[0] == whole[0].shape[1]


def test_a_call_computes_its_real_rows_rounded_up_to_a_power_of_two(monkeypatch):
    """One file: one row, one forward pass (not the budget's max_tokens // length rows); a length whose files
    fill several calls runs one program."""
    from hubert_jax import inference

    model = model_of("hubert", "layer")
    shapes = []
    real = inference._forward

    def recording(layers):
        forward = real(layers)
        return lambda m, x, mask: shapes.append(x.shape) or forward(m, x, mask)

    monkeypatch.setattr(inference, "_forward", recording)
    rng = np.random.default_rng(2)
    extract(model, [rng.standard_normal(4000).astype(np.float32)], layer=1)
    assert shapes == [(1, inference.grid_length(4000, 1.25))]
    shapes.clear()
    # five of one grid length, a budget of 8 rows: one call of 8 rows; twelve: 8, then 8 again (the last call
    # runs the program of the full ones: one program a length); three: 4
    for count, calls in ((5, [8]), (12, [8, 8]), (3, [4])):
        extract(model, [rng.standard_normal(4000).astype(np.float32) for _ in range(count)],
                max_tokens=8 * inference.grid_length(4000, 1.25))
        assert [rows for rows, _ in shapes] == calls, count
        shapes.clear()
    assert [inference.row_count(n, 16) for n in (1, 2, 3, 5, 9, 16, 17)] == [1, 2, 4, 8, 16, 16, 16]
    # full_rows (what labels dump uses): the budget's rows in every call, so shards equal one host bit for bit
    extract(model, [rng.standard_normal(4000).astype(np.float32) for _ in range(3)], full_rows=True,
            max_tokens=8 * inference.grid_length(4000, 1.25))
    assert [rows for rows, _ in shapes] == [8]


def test_padding_without_the_real_samples_rule_changes_group_norm_models():
    """Why extract uses group_norm_over_real_samples: transformers' statistics include the padding."""
    model = model_of("hubert", "group")
    wave = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    x = np.zeros((1, 6000), np.float32)
    x[0, :3000] = wave
    mask = (np.arange(6000) < 3000).astype(np.int32)[None]
    alone = np.asarray(model(jnp.asarray(wave)[None]).last_hidden_state[0])
    plain = np.asarray(model(jnp.asarray(x), attention_mask=jnp.asarray(mask)).last_hidden_state[0, : len(alone)])
    real = np.asarray(model(jnp.asarray(x), attention_mask=jnp.asarray(mask),
                            group_norm_over_real_samples=True).last_hidden_state[0, : len(alone)])
    assert np.abs(plain - alone).max() > 1e-2
    np.testing.assert_allclose(real, alone, atol=1e-4)


def test_bad_input():
    model = model_of("hubert", "layer")
    assert extract(model, []) == []
    # the tiny conv stack's receptive field is 30 samples (hubert-base's: 400)
    with pytest.raises(ValueError, match=r"waveform 1 has 20 samples: too short for one frame \(30\)"):
        extract(model, [np.zeros(1000), np.zeros(20)])
    with pytest.raises(ValueError, match="layer 7: the model has hidden states 0..3"):
        extract(model, [np.zeros(1000)], layer=7)
    with pytest.raises(ValueError, match="layer 4: the model has hidden states 0..3"):
        extract(model, [np.zeros(1000)], layer=(0, 4))
    with pytest.raises(ValueError, match="give at least one layer"):
        extract(model, [np.zeros(1000)], layer=())


def test_stereo_integer_and_non_finite_waveforms_are_refused_by_index():
    """A (T, 2) array would otherwise be read as interleaved samples (twice the frames, of garbage), int16
    PCM as samples 32768 times too loud, and a NaN sample would give NaN features without a word."""
    model = model_of("hubert", "layer")
    wave = np.random.default_rng(2).standard_normal(2000).astype(np.float32)
    with pytest.raises(ValueError, match=r"waveform 1 has shape \(2000, 2\): expected mono audio, shape "
                                         r"\(samples,\); downmix it first, e.g. waveform.mean\(axis=1\)"):
        extract(model, [wave, np.stack([wave, wave], axis=1)])
    with pytest.raises(ValueError, match=r"waveform 0 has shape \(2, 2000\).*mean\(axis=0\)"):
        extract(model, [np.stack([wave, wave])])
    with pytest.raises(ValueError, match=r"waveform 0 holds int16 samples: expected float audio in \[-1, 1\] "
                                         r"\(for PCM, divide by 32768\)"):
        extract(model, [(wave * 1000).astype(np.int16)])
    broken = wave.copy()
    broken[700] = np.nan
    with pytest.raises(ValueError, match="waveform 2 has 1 NaN or infinite samples \\(the first at sample 700\\)"):
        extract(model, [wave, wave, broken])
    # a (T, 1) column or (1, T) row is mono: the same features as the flat waveform
    flat = extract(model, [wave])[0]
    np.testing.assert_array_equal(extract(model, [wave[:, None]])[0], flat)
    np.testing.assert_array_equal(extract(model, [wave[None, :]])[0], flat)


# ---------------------------------------------------------------------------------------------- transcription
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6, "C": 7, "D": 8, "E": 9, "F": 10}


@pytest.fixture(scope="module")
def ctc_pair(tmp_path_factory):
    """A group-norm HubertForCTC (torch and ours, the same weights), its processor, and transformers'
    ASR pipeline over the torch model."""
    import json

    import transformers

    from hubert_jax.processing import Processor
    from tests.reference import build_pair

    folder = tmp_path_factory.mktemp("ctc")
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    tmodel, model, _ = build_pair("hubert", "ForCTC", seed=4, feat_extract_norm="group")
    asr = transformers.pipeline("automatic-speech-recognition", model=tmodel, tokenizer=tokenizer,
                                feature_extractor=extractor, device="cpu")
    return model, Processor.from_pretrained(folder), asr, folder


def test_a_padded_batch_through_a_ctc_head_equals_each_file_alone_with_group_norm_over_real_samples(ctc_pair):
    model = ctc_pair[0]
    rng = np.random.default_rng(5)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (3000, 1700)]
    x = np.zeros((2, 3000), np.float32)
    mask = np.zeros((2, 3000), np.int32)
    for row, wave in enumerate(waves):
        x[row, : len(wave)], mask[row, : len(wave)] = wave, 1
    batched = np.asarray(model(x, attention_mask=mask, group_norm_over_real_samples=True).logits)
    default = np.asarray(model(x, attention_mask=mask).logits)  # transformers' way: the padding in the norm
    alone = np.asarray(model(waves[1][None]).logits[0])
    np.testing.assert_allclose(batched[1, : len(alone)], alone, atol=1e-5)
    assert np.abs(default[1, : len(alone)] - alone).max() > 1e-3


def test_transcripts_of_files_of_any_length_equal_transformers_on_each_file_alone(ctc_pair):
    from hubert_jax.inference import transcribe

    model, processor, asr, folder = ctc_pair
    rng = np.random.default_rng(6)
    waves = [rng.standard_normal(int(n)).astype(np.float32) * rng.uniform(0.1, 3) for n in
             rng.integers(600, 7000, 7)]
    ours = transcribe(model, waves, str(folder), max_tokens=3 * 7000)  # several calls, padded rows
    theirs = [asr(wave)["text"] for wave in waves]
    assert ours == theirs and len(set(ours)) == len(ours) and all(len(t) > 5 for t in ours), (ours, theirs)
    assert transcribe(model, waves[2:3], processor) == ours[2:3]


@pytest.mark.parametrize("chunk,stride", [(0.05, None), (0.08, (0.01, 0.02))])
def test_long_files_are_chunked_with_strides_as_transformers_pipeline_chunks_them(ctc_pair, chunk, stride):
    """The tiny model's frame is 20 samples, so chunks of 0.05 s (800 samples) cut a 1.1 s file in dozens."""
    from hubert_jax.inference import transcribe

    model, processor, asr, _ = ctc_pair
    rng = np.random.default_rng(7)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (17_600, 9_013)]
    ours = transcribe(model, waves, processor, chunk_length_s=chunk, stride_length_s=stride)
    kw = {} if stride is None else {"stride_length_s": list(stride)}
    theirs = [asr(wave, chunk_length_s=chunk, **kw)["text"] for wave in waves]
    assert ours == theirs and all(len(t) > 20 for t in ours), (ours, theirs)
    assert ours != transcribe(model, waves, processor)  # the chunks were normalised and cut: not the whole file
    with pytest.raises(ValueError, match="must be longer than the strides"):
        transcribe(model, waves, processor, chunk_length_s=0.05, stride_length_s=0.03)
    with pytest.raises(ValueError, match=r"chunk_length_s=0.001: 20 samples, too short for one frame \(30\)"):
        transcribe(model, waves, processor, chunk_length_s=0.001)
    with pytest.raises(ValueError, match=r"waveform 1 has 25 samples: too short for one frame \(30\)"):
        transcribe(model, [waves[0], waves[1][:25]], processor, chunk_length_s=chunk)
