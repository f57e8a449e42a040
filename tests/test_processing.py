"""Preprocessing and CTC vocabulary: same numbers and files as transformers' Wav2Vec2FeatureExtractor and
Wav2Vec2CTCTokenizer."""

import json

import numpy as np
import pytest

from hubert_jax.processing import CTCTokenizer, FeatureExtractor


@pytest.mark.parametrize("return_mask", [True, False])
@pytest.mark.parametrize("padding", [True, "max_length"])
def test_feature_extractor_matches_transformers(tmp_path, return_mask, padding):
    import transformers

    theirs = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=return_mask, padding_value=0.0)
    theirs.save_pretrained(tmp_path)
    ours = FeatureExtractor.from_pretrained(tmp_path)
    assert ours.return_attention_mask == return_mask
    rng = np.random.RandomState(0)
    batch = [rng.randn(n).astype(np.float32) * 3 + 1 for n in (1600, 900, 1234)]
    kw = dict(padding=padding, max_length=2000 if padding == "max_length" else None)
    a = theirs(batch, sampling_rate=16000, return_tensors="np", **kw)
    b = ours(batch, sampling_rate=16000, **kw)
    np.testing.assert_allclose(b["input_values"], a["input_values"], atol=1e-5)
    assert ("attention_mask" in b) == return_mask
    if return_mask:
        np.testing.assert_array_equal(b["attention_mask"], a["attention_mask"])
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "ours")
    assert again.return_attention_mask == return_mask and again.do_normalize


def test_feature_extractor_bad_input():
    fe = FeatureExtractor()
    with pytest.raises(ValueError, match="44100 Hz; this model expects 16000 Hz"):
        fe(np.zeros(100), sampling_rate=44100)
    with pytest.raises(ValueError, match="mono"):
        fe(np.zeros((2, 2, 100)))
    with pytest.raises(ValueError, match="waveform 1 is empty"):
        fe([np.zeros(10), np.zeros(0)])


@pytest.fixture()
def vocab_dir(tmp_path):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6, "C": 7, "한": 8}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return tmp_path


def test_tokenizer_matches_transformers(vocab_dir, tmp_path):
    import transformers

    theirs = transformers.Wav2Vec2CTCTokenizer(str(vocab_dir / "vocab.json"))
    ours = CTCTokenizer.from_pretrained(vocab_dir)
    for text in ("ABC AB", "A한 C", "AXB"):  # X is outside the vocabulary: unk, as transformers
        assert ours.encode(text) == theirs(text).input_ids
    rng = np.random.RandomState(0)
    for _ in range(50):
        ids = rng.randint(0, 9, size=rng.randint(0, 30)).tolist()
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), ids
        assert ours.decode(ids, group_tokens=False) == theirs.decode(ids, group_tokens=False), ids
    logits = rng.randn(2, 20, 9)
    assert ours.decode_logits(logits) == theirs.batch_decode(logits.argmax(-1))
    ours.save_pretrained(tmp_path / "saved")
    again = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path / "saved")
    assert again.decode([5, 5, 0, 5, 4, 6]) == ours.decode([5, 5, 0, 5, 4, 6]) == "AA B"


def test_tokenizer_needs_pad_and_unk(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"|": 0, "A": 1}))
    with pytest.raises(ValueError, match="no pad_token '<pad>'"):
        CTCTokenizer.from_pretrained(tmp_path)


def test_a_transformers_5_processor_directory_is_read_and_written_back(vocab_dir, tmp_path):
    """transformers 5 saves a Wav2Vec2Processor as processor_config.json (the feature extractor's settings
    nested) with no preprocessor_config.json. Ours reads it as transformers reads it, and a conversion carries
    it both ways, so transformers 5 loads the result as the processor it saved."""
    import transformers

    from hubert_jax.export import copy_processor_files

    theirs = transformers.Wav2Vec2Processor(
        feature_extractor=transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=False),
        tokenizer=transformers.Wav2Vec2CTCTokenizer(str(vocab_dir / "vocab.json"), word_delimiter_token="|"))
    saved = tmp_path / "v5"
    theirs.save_pretrained(saved)
    files = {p.name for p in saved.iterdir()}
    assert "processor_config.json" in files and "preprocessor_config.json" not in files  # what v5 writes
    ours = FeatureExtractor.from_pretrained(saved)
    assert (ours.return_attention_mask, ours.do_normalize) == (True, False)
    batch = [np.random.RandomState(1).randn(n).astype(np.float32) for n in (800, 500)]
    a = theirs(audio=batch, sampling_rate=16000, padding=True, return_tensors="np")
    b = ours(batch, sampling_rate=16000)
    np.testing.assert_array_equal(b["input_values"], a["input_values"])
    np.testing.assert_array_equal(b["attention_mask"], a["attention_mask"])
    assert CTCTokenizer.from_pretrained(saved).encode("AB C") == theirs.tokenizer("AB C").input_ids

    (tmp_path / "carried").mkdir()
    assert "processor_config.json" in copy_processor_files(str(saved), str(tmp_path / "carried"))
    again = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "carried")
    assert again.feature_extractor.return_attention_mask and not again.feature_extractor.do_normalize
    # the nested settings win over a v4 file beside them, as in transformers 5
    FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "carried")
    assert FeatureExtractor.from_pretrained(tmp_path / "carried").do_normalize is False


def test_a_directory_without_feature_extractor_settings_names_both_files(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Wav2Vec2Processor"}))
    with pytest.raises(FileNotFoundError, match=r"neither preprocessor_config.json .* nor processor_config.json "
                                                r"with a \"feature_extractor\" section"):
        FeatureExtractor.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"feature_extractor": "yes"}))
    with pytest.raises(ValueError, match=r"processor_config.json: 'feature_extractor' is str: expected an object"):
        FeatureExtractor.from_pretrained(tmp_path)
