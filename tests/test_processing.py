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
