"""Fine-tuning: CTC loss and greedy decoding against torch/transformers, the vocabulary and targets (with their
bad-input errors), freezing, and short CTC / classification runs whose exports transformers loads."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hubert_jax
from hubert_jax.data.targets import TextConfig, build_vocab, encode_texts
from hubert_jax.processing import CTCTokenizer
from hubert_jax.training.tasks.ctc import error_rates
from tests import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "demo")


def _demo_texts(split="train"):
    with open(os.path.join(DEMO, f"{split}.wrd"), encoding="utf-8") as f:
        return [TextConfig().normalize(t) for t in f.read().splitlines()]


# ----------------------------------------------------------------------------- loss and decoding
def test_ctc_loss_equals_torch_ctc_loss():
    import torch

    config = hubert_jax.HubertConfig.from_dict({**tiny_config.TINY_MODEL, "vocab_size": 12,
                                                "ctc_loss_reduction": "mean", "ctc_zero_infinity": True})
    model = hubert_jax.HubertForCTC(config)
    rng = np.random.RandomState(0)
    audio = rng.randn(3, 16000).astype(np.float32)
    mask = np.ones((3, 16000), np.int32)
    mask[1, 11000:] = 0
    mask[2, 6000:] = 0
    lengths = [9, 5, 3]
    labels = np.full((3, 9), -100, np.int32)
    for i, n in enumerate(lengths):
        labels[i, :n] = rng.randint(1, 12, n)
    out = model(jnp.asarray(audio), jnp.asarray(mask), labels=jnp.asarray(labels))
    frames = np.asarray(hubert_jax.lengths.feat_extract_output_lengths(config, mask.sum(-1)))
    logp = torch.log_softmax(torch.tensor(np.asarray(out.logits, np.float32)), -1).transpose(0, 1)
    targets = torch.tensor(np.concatenate([labels[i, :n] for i, n in enumerate(lengths)]), dtype=torch.long)
    theirs = torch.nn.functional.ctc_loss(logp, targets, torch.tensor(frames), torch.tensor(lengths), blank=0,
                                          reduction="mean", zero_infinity=True)
    # float32 forward-backward recursions in different orders: equal to 1e-5 relative
    np.testing.assert_allclose(float(out.loss), float(theirs), rtol=1e-5)


def test_greedy_decode_equals_transformers_tokenizer(tmp_path):
    import transformers

    tokenizer = CTCTokenizer(vocab=build_vocab(_demo_texts()))
    tokenizer.save_pretrained(tmp_path)
    theirs = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    rng = np.random.RandomState(0)
    # peaked logits with runs, blanks and word delimiters, as a CTC model emits
    ids = rng.choice(len(tokenizer.vocab), size=(4, 60), p=_peaked(len(tokenizer.vocab)))
    ids = np.repeat(ids, rng.randint(1, 4, size=ids.shape).max(), axis=1)[:, :80]
    logits = np.eye(len(tokenizer.vocab), dtype=np.float32)[ids] * 5 + rng.randn(*ids.shape, len(tokenizer.vocab))
    assert tokenizer.decode_logits(logits) == theirs.batch_decode(np.argmax(logits, -1))
    # and the ids of real text come back as the text
    texts = _demo_texts("valid")[:3]
    assert [tokenizer.decode(tokenizer.encode(t), group_tokens=False) for t in texts] == texts
    assert [theirs.decode(tokenizer.encode(t), group_tokens=False) for t in texts] == texts


def _peaked(n):
    p = np.ones(n)
    p[0] = n  # the blank is the most frequent output
    p[4] = n / 4  # word delimiter
    return p / p.sum()


def test_error_rates():
    assert error_rates(["AB CD", "EF"], ["AB CD", "EF"]) == {"cer": 0.0, "wer": 0.0}
    rates = error_rates(["AB CD", ""], ["AB CX", "ignored"])  # empty references are left out
    assert rates["wer"] == 0.5 and rates["cer"] == pytest.approx(1 / 5)


# ----------------------------------------------------------------------------- targets and bad input
def test_vocabulary_layout_and_unknown_characters(caplog):
    vocab = build_vocab(_demo_texts())
    assert list(vocab)[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and vocab["<pad>"] == 0
    assert list(vocab)[5:] == sorted(list(vocab)[5:])
    tokenizer = CTCTokenizer(vocab=vocab)
    with caplog.at_level(logging.WARNING):
        ids = encode_texts(["A Ü"], tokenizer, path="x.wrd", unknown="unk")[0]
    assert list(ids) == [vocab["A"], vocab["|"], vocab["<unk>"]] and "'Ü' in 1 lines" in caplog.text
    with pytest.raises(ValueError, match=r"x.wrd:2: characters not in the vocabulary: 'Ü'"):
        encode_texts(["A", "A Ü"], tokenizer, path="x.wrd", unknown="error")


def _ctc_config(tmp_path, steps=6):
    from hubert_jax.training.config import load_config

    c = load_config(os.path.join(tiny_config.ROOT, "configs", "ctc_demo.py"))
    c.model.overrides.update(tiny_config.TINY_MODEL)
    c.data.train.update(dict(manifest=os.path.join(DEMO, "train.tsv"), targets=os.path.join(DEMO, "train.wrd")))
    c.data.valid.update(dict(manifest=os.path.join(DEMO, "valid.tsv"), targets=os.path.join(DEMO, "valid.wrd")))
    c.data.update(dict(batch_size=8, num_threads=1))
    c.train.update(dict(steps=steps, log_every=2, eval_every=steps, eval_batches=1, checkpoint_every=3))
    c.optim.schedule.update(dict(total_steps=steps))
    c.finetune.freeze_encoder_steps = 3
    return c


def _write(path, lines):
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return str(path)


def test_bad_targets_are_refused_with_the_file_named(tmp_path):
    from hubert_jax.training.tasks import make_task

    def finetune_sources(cfg):
        return make_task(cfg).data(None)

    cfg = _ctc_config(tmp_path)
    lines = open(os.path.join(DEMO, "train.wrd"), encoding="utf-8").read().splitlines()
    cfg.data.train.targets = _write(tmp_path / "short.wrd", lines[:-1])  # misaligned with the manifest
    with pytest.raises(ValueError, match=r"short.wrd: 192 lines, but .*train.tsv has 193 utterances"):
        finetune_sources(cfg)
    cfg.data.train.targets = _write(tmp_path / "blank.wrd", ["..."] + lines[1:])
    with pytest.raises(ValueError, match=r"empty transcripts .*blank.wrd:1"):
        finetune_sources(cfg)
    # fairseq's letter targets (.ltr) as they sit beside the .wrd: read as words, every letter would be a word
    letters = [" ".join("|".join(line.split())) + " |" for line in lines]
    assert letters[0].endswith(" |") and " | " in letters[0]
    cfg.data.train.targets = _write(tmp_path / "train.ltr", letters)
    with pytest.raises(ValueError, match=r"train.ltr: these are fairseq letter targets \(.ltr: '.* \| .*', one letter "
                                         r"per token, '\|' between words\), not word transcripts: give the .wrd file"):
        finetune_sources(cfg)
    cfg.data.train.targets = os.path.join(DEMO, "train.wrd")
    empty = tmp_path / "empty.tsv"
    empty.write_text(DEMO + "\n")
    cfg.data.valid.update(dict(manifest=str(empty), targets=_write(tmp_path / "empty.wrd", [])))
    with pytest.raises(ValueError, match=r"empty.tsv: no utterances \(an empty valid split\)"):
        finetune_sources(cfg)
    cfg.data.valid.update(dict(manifest=os.path.join(DEMO, "valid.tsv"), targets=""))
    with pytest.raises(ValueError, match=r"config.data.valid.targets"):
        finetune_sources(cfg)
    cfg.task = "classify"
    cfg.data.train.targets = os.path.join(DEMO, "train.lang")
    cfg.data.valid.targets = _write(tmp_path / "valid.lang", ["en"] * 26 + ["fr"])
    with pytest.raises(ValueError, match=r"valid.lang:27: label 'fr' is not one of the training split's 2 classes"):
        finetune_sources(cfg)


# ----------------------------------------------------------------------------- runs
def _params(state):
    return jax.device_get(state["params"])


def test_ctc_run_freezes_then_trains_and_exports_what_transformers_decodes_the_same(tmp_path):
    import torch
    import transformers

    from hubert_jax.training.run import run

    cfg = _ctc_config(tmp_path)
    first = run(cfg, str(tmp_path), stop_after=3)
    start = run(_ctc_config(tmp_path), str(tmp_path / "fresh"), stop_after=0).state  # the same initial state
    p0, p3 = _params(start), _params(first.state)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert same(p0["hubert"], p3["hubert"])  # steps 0-2: only the head trains
    assert not same(p0["lm_head"], p3["lm_head"])
    done = run(_ctc_config(tmp_path), str(tmp_path))
    p6 = _params(done.state)
    assert same(p0["hubert"]["feature_extractor"], p6["hubert"]["feature_extractor"])  # frozen throughout
    assert not same(p0["hubert"]["encoder"], p6["hubert"]["encoder"])
    assert {"cer", "wer", "loss"} <= set(done.valid) and 0 <= done.valid["cer"]

    export = tmp_path / "model"
    meta = json.loads((tmp_path / "finetune.json").read_text())
    assert json.loads((export / "vocab.json").read_text()) == meta["vocab"]
    tmodel = transformers.HubertForCTC.from_pretrained(export).eval()
    processor = transformers.Wav2Vec2Processor.from_pretrained(export)
    ours = hubert_jax.FlaxAutoModelForCTC.from_pretrained(str(export))
    audio = np.random.RandomState(0).randn(2, 24000).astype(np.float32)
    with torch.no_grad():
        their_logits = tmodel(torch.tensor(audio)).logits.numpy()
    our_logits = np.asarray(ours(jnp.asarray(audio)).logits)
    np.testing.assert_allclose(our_logits, their_logits, atol=1e-4)
    tokenizer = CTCTokenizer.from_pretrained(str(export))
    assert tokenizer.decode_logits(our_logits) == processor.batch_decode(np.argmax(their_logits, -1))


def test_classification_run_exports_a_transformers_classifier(tmp_path):
    import torch
    import transformers

    from hubert_jax.training.run import run

    cfg = _ctc_config(tmp_path)
    cfg.task = "classify"
    cfg.data.train.targets = os.path.join(DEMO, "train.lang")
    cfg.data.valid.targets = os.path.join(DEMO, "valid.lang")
    cfg.data.max_samples = 24000  # 1.5 s crops
    result = run(cfg, str(tmp_path))
    assert 0.0 <= result.valid["accuracy"] <= 1.0 and np.isfinite(result.valid["loss"])
    tmodel = transformers.HubertForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert tmodel.config.id2label == {0: "en", 1: "ko"}
    ours = hubert_jax.FlaxAutoModelForAudioClassification.from_pretrained(str(tmp_path / "model"))
    audio = np.random.RandomState(0).randn(2, 24000).astype(np.float32)
    with torch.no_grad():
        theirs = tmodel(torch.tensor(audio)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(audio)).logits), theirs, atol=1e-4)


def test_frame_classification_run_on_phone_labels(tmp_path):
    import torch
    import transformers

    from hubert_jax.training.run import run

    cfg = _ctc_config(tmp_path, steps=4)
    cfg.task = "frames"
    cfg.data.train.targets = os.path.join(DEMO, "train.phn")  # 100 Hz phone ids
    cfg.data.valid.targets = os.path.join(DEMO, "valid.phn")
    cfg.data.max_samples = 24000
    with pytest.raises(ValueError, match="transformers has no ForAudioFrameClassification head for hubert models"):
        run(cfg, str(tmp_path / "hubert"))
    cfg.model.preset = "wav2vec2-base"
    result = run(cfg, str(tmp_path / "w2v2"))
    assert 0.0 <= result.valid["accuracy"] <= 1.0 and np.isfinite(result.valid["loss"])
    tmodel = transformers.Wav2Vec2ForAudioFrameClassification.from_pretrained(tmp_path / "w2v2" / "model").eval()
    ours = hubert_jax.FlaxAutoModelForAudioFrameClassification.from_pretrained(str(tmp_path / "w2v2" / "model"))
    audio = np.random.RandomState(0).randn(2, 24000).astype(np.float32)
    with torch.no_grad():
        theirs = tmodel(torch.tensor(audio)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(audio)).logits), theirs, atol=1e-4)


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
def test_spec_augment_masks_equal_transformers(family):
    # transformers draws its masks inside forward; given the same masks, its _mask_hidden_states (time spans
    # -> masked_spec_embed, feature channels -> 0) followed by the encoder must equal ours
    import torch

    from tests.reference import audio, build_pair, max_diff

    tmodel, jmodel, config = build_pair(family, "ForCTC", mask_time_prob=0.3, mask_feature_prob=0.3)
    x, mask = audio(pad_to=(4000, 3000))
    rng = np.random.RandomState(1)
    frames = int(hubert_jax.lengths.feat_extract_output_lengths(config, 4000))
    time = rng.rand(2, frames) < 0.3
    feature = rng.rand(2, config.hidden_size) < 0.3
    base = tmodel.base_model
    with torch.no_grad():
        xt, mt = torch.tensor(x), torch.tensor(mask)
        features = base.feature_extractor(xt).transpose(1, 2)
        hidden = base.feature_projection(features)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden = base._mask_hidden_states(hidden, mask_time_indices=torch.tensor(time))  # noqa: SLF001
        hidden[torch.tensor(feature)[:, None, :].expand(-1, frames, -1)] = 0
        frame_mask = base._get_feature_vector_attention_mask(frames, mt)  # noqa: SLF001
        theirs = tmodel.lm_head(base.encoder(hidden, attention_mask=frame_mask).last_hidden_state)
    ours = jmodel(jnp.asarray(x), jnp.asarray(mask), mask_time_indices=jnp.asarray(time),
                  mask_feature_indices=jnp.asarray(feature)).logits
    valid = np.asarray(frame_mask)[..., None].astype(bool)
    assert max_diff(np.where(valid, theirs.numpy(), 0), np.where(valid, ours, 0)) < 1e-4
    plain = jmodel(jnp.asarray(x), jnp.asarray(mask)).logits
    assert max_diff(plain, ours) > 1e-2  # the masks did something
