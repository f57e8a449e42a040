"""Checkpoints written by fairseq, unilm and s3prl themselves (tests/fixtures/peer, made by
scripts/make_peer_fixtures.py) convert through convert_pt_to_flax.py and give those tools' own outputs,
recorded by the tools on fixed audio: every layer, the CTC logits, the wav2vec 2.0 projections."""

import json
import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import hubert_jax
from hubert_jax.convert.cli import main as convert_main
from hubert_jax.convert.fairseq import read_fairseq_dictionary

PEER = os.path.join(os.path.dirname(__file__), "fixtures", "peer")
TOL = 1e-4
# folder -> (checkpoint file, loader, family, pre-LN, extra converter arguments)
FIXTURES = {
    "hubert_base": ("checkpoint_last.pt", "Model", "hubert", False, ()),
    "hubert_large": ("checkpoint_last.pt", "Model", "hubert", True, ()),
    "hubert_large_dictconfig": ("checkpoint_dictconfig.pt", "Model", "hubert", True, ()),
    "hubert_ctc": ("checkpoint_last.pt", "ForCTC", "hubert", False,
                   ("--w2v-checkpoint", os.path.join(PEER, "hubert_base", "checkpoint_last.pt"))),
    "wav2vec2": ("checkpoint_last.pt", "ForPreTraining", "wav2vec2", False, ()),
    "wav2vec2_ctc": ("checkpoint_last.pt", "ForCTC", "wav2vec2", False, ()),
    "wavlm_base": ("wavlm.pt", "Model", "wavlm", False, ()),
    "wavlm_large": ("wavlm.pt", "Model", "wavlm", True, ()),
    "distilhubert": ("states-1.ckpt", "Model", "hubert", False, ()),
}
AUTO = {"Model": hubert_jax.FlaxAutoModel, "ForCTC": hubert_jax.FlaxAutoModelForCTC,
        "ForPreTraining": hubert_jax.FlaxAutoModelForPreTraining}


def folder(name):
    return os.path.join(PEER, name.replace("_dictconfig", ""))


def expected(name):
    return dict(np.load(os.path.join(folder(name), "expected.npz")))


def clips():
    data = np.load(os.path.join(PEER, "audio.npz"))
    return [data["audio_0"], data["audio_1"]]


def convert(name, out):
    file, _, _, _, extra = FIXTURES[name]
    assert convert_main([os.path.join(folder(name), file), str(out), *extra]) == 0
    return out


def outputs(model, x, head):
    out = model(jnp.asarray(x)[None], output_hidden_states=True)
    return out, [np.asarray(h[0]) for h in out.hidden_states]


def check_layers(ref, hidden, i):
    """hidden_states[L] against the tool's layer L: the input of layer 0 for L=0, else layer L's output
    (as transformers v5 gives it: pre-LN models apply the encoder LayerNorm to last_hidden_state only)."""
    assert len(hidden) == sum(k.startswith(f"hidden_{i}_") for k in ref)
    for layer, value in enumerate(hidden):
        np.testing.assert_allclose(value, ref[f"hidden_{i}_{layer}"], atol=TOL, rtol=0,
                                   err_msg=f"hidden_states[{layer}]")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_peer_checkpoint_matches_its_tool(tmp_path, name):
    _, head, family, pre_ln, _ = FIXTURES[name]
    out = convert(name, tmp_path / "out")
    model = AUTO[head].from_pretrained(out)
    assert model.config.model_type == family and model.config.do_stable_layer_norm == pre_ln
    ref = expected(name)
    for i, x in enumerate(clips()):
        result, hidden = outputs(model, x, head)
        check_layers(ref, hidden, i)
        if head == "ForCTC":
            np.testing.assert_allclose(np.asarray(result.logits[0]), ref[f"logits_{i}"], atol=TOL, rtol=0)
        elif head == "ForPreTraining":
            np.testing.assert_allclose(np.asarray(result.projected_states[0]), ref[f"projected_states_{i}"],
                                       atol=TOL, rtol=0)
            np.testing.assert_allclose(np.asarray(result.projected_quantized_states[0]),
                                       ref[f"projected_quantized_{i}"], atol=TOL, rtol=0)
        else:
            np.testing.assert_allclose(np.asarray(result.last_hidden_state[0]), ref[f"last_{i}"], atol=TOL, rtol=0)


def test_dictconfig_cfg_converts_like_the_plain_one(tmp_path):
    """fairseq's own loader+saver keep cfg as an omegaconf DictConfig (as released files have it)."""
    a = json.loads((convert("hubert_large", tmp_path / "a") / "config.json").read_text())
    b = json.loads((convert("hubert_large_dictconfig", tmp_path / "b") / "config.json").read_text())
    assert a == b


@pytest.mark.parametrize("name,sizes", [("hubert_base", [16]), ("hubert_large", [16, 11])])
def test_hubert_label_dictionaries_give_sizes_and_offset(tmp_path, name, sizes):
    """12 and 7 k-means clusters after fairseq's 4 specials; cluster k scores against row 4 + k of its set."""
    config = json.loads((convert(name, tmp_path / "out") / "config.json").read_text())
    head = config["hubert_pretraining"]
    assert head["num_classes"] == sizes and head["label_offset"] == 4 and head["num_label_embeddings"] == sum(sizes)
    assert head["untie_final_proj"] is True and head["final_dim"] == 16 and head["label_rate"] == 50


@pytest.mark.parametrize("name,normalize", [("hubert_base", False), ("hubert_large", True),
                                            ("hubert_large_dictconfig", True), ("wav2vec2_ctc", False),
                                            ("wavlm_base", False), ("wavlm_large", True), ("distilhubert", False)])
def test_feature_extractor_follows_the_training_normalisation(tmp_path, name, normalize):
    """fairseq's task.normalize (unilm: the model's normalize) becomes do_normalize; masks go with
    layer-norm extractors, as transformers' own configs have them."""
    pre = json.loads((convert(name, tmp_path / "out") / "preprocessor_config.json").read_text())
    assert pre["do_normalize"] is normalize and pre["return_attention_mask"] is normalize
    assert pre["sampling_rate"] == 16000


def test_ctc_vocabulary_comes_from_the_checkpoint(tmp_path):
    out = convert("wav2vec2_ctc", tmp_path / "out")
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab == read_fairseq_dictionary(os.path.join(PEER, "dict.ltr.txt"))
    assert vocab["<pad>"] == 0 and vocab["|"] == 4
    import transformers

    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(out)
    assert tok.decode([5, 5, 0, 6, 4, 7]) == "ET A"
    # --dict still wins: the same symbols in another order
    (tmp_path / "dict.txt").write_text("".join(f"{c} 1\n" for c in "SHINOATE|"))
    assert convert_main([os.path.join(PEER, "wav2vec2_ctc", "checkpoint_last.pt"), str(tmp_path / "out2"),
                         "--dict", str(tmp_path / "dict.txt")]) == 0
    assert json.loads((tmp_path / "out2" / "vocab.json").read_text())["S"] == 4


def test_hubert_ctc_without_its_encoder_settings(tmp_path):
    """Current fairseq writes hubert_ctc with w2v_args None: the error says what is missing and where it looked."""
    shutil.copyfile(os.path.join(PEER, "hubert_ctc", "checkpoint_last.pt"), tmp_path / "ctc.pt")
    with pytest.raises(ValueError, match=r"ctc.pt: a fine-tuned checkpoint whose cfg.model.w2v_args is None.*"
                                         r"looked for it at: /tmp/\S+/hubert_base/ckpt/checkpoint_last.pt, "
                                         r".*--w2v-checkpoint"):
        convert_main([str(tmp_path / "ctc.pt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    # the pretrained file found beside the fine-tuned one, under the name w2v_path gives
    os.makedirs(tmp_path / "beside")
    shutil.copyfile(os.path.join(PEER, "hubert_base", "checkpoint_last.pt"), tmp_path / "beside" / "checkpoint_last.pt")
    shutil.copyfile(os.path.join(PEER, "hubert_ctc", "checkpoint_last.pt"), tmp_path / "beside" / "ctc.pt")
    assert convert_main([str(tmp_path / "beside" / "ctc.pt"), str(tmp_path / "out")]) == 0
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    assert len(vocab) == 13


def test_distilhubert_has_no_mask_embedding(tmp_path):
    config = json.loads((convert("distilhubert", tmp_path / "out") / "config.json").read_text())
    assert config["mask_time_prob"] == 0.0 and not config["feat_proj_layer_norm"]
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 32 and config["conv_dim"][-1] == 48


@pytest.mark.parametrize("name", ["hubert_base", "hubert_large", "wav2vec2_ctc", "wavlm_base", "distilhubert"])
def test_export_back_to_transformers(tmp_path, name):
    """Converted -> transformers directory (the converter verifies it against transformers itself) ->
    transformers gives the tool's numbers."""
    import torch
    import transformers

    _, head, family, _, _ = FIXTURES[name]
    convert(name, tmp_path / "jax")
    assert convert_main([str(tmp_path / "jax"), str(tmp_path / "pt"), "--to-pytorch"]) == 0
    cls = getattr(transformers, {"hubert": "Hubert", "wavlm": "WavLM", "wav2vec2": "Wav2Vec2"}[family] + head)
    tmodel = cls.from_pretrained(tmp_path / "pt").eval()
    ref = expected(name)
    for i, x in enumerate(clips()):
        with torch.no_grad():
            out = tmodel(torch.from_numpy(x)[None], output_hidden_states=True)
        check_layers(ref, [h[0].numpy() for h in out.hidden_states], i)
        if head == "Model":
            np.testing.assert_allclose(out.last_hidden_state[0].numpy(), ref[f"last_{i}"], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["hubert_base", "hubert_large"])
def test_init_from_continues_the_fairseq_run(tmp_path, name):
    """A converted fairseq HuBERT continues pretraining with no hand-set heads: the run takes the label-set
    sizes and the specials' offset from the directory, its loss with fairseq's mask equals the loss
    fairseq's hubert criterion gave, and train steps update every parameter."""
    import jax

    from hubert_jax.models.pretraining_hubert import LossWeights, pretraining_loss
    from hubert_jax.sharding import mesh_from_config
    from hubert_jax.training.config import pretraining_defaults
    from hubert_jax.training.resolve import with_init_from_heads
    from hubert_jax.training.tasks import make_trainer

    out = convert(name, tmp_path / "out")
    cfg = pretraining_defaults()
    cfg.model.init_from = str(out)
    cfg.optim.schedule.warmup_steps = 1  # so that the second step moves every parameter visibly
    cfg = with_init_from_heads(cfg)
    sets = 1 if name == "hubert_base" else 2
    assert cfg.model.head.num_classes == (16,) * 1 + (11,) * (sets - 1) and cfg.model.head.label_offset == 4
    assert cfg.model.head.label_rate == 50.0 and cfg.model.head.final_dim == 16
    trainer = make_trainer(cfg, mesh_from_config(cfg.mesh))
    state = trainer.load_initial(trainer.init(), str(out))

    ref = expected(name)
    x = clips()[0][None]
    labels = [ref[f"loss_labels_{k}"] for k in range(sets)]
    model = trainer.host_model(state)
    result = model(jnp.asarray(x), [jnp.asarray(lab) for lab in labels], mask_time_indices=jnp.asarray(ref["loss_mask"]))
    loss, _ = pretraining_loss(result, LossWeights(masked=1.0, unmasked=0.0, features_pen=10.0))
    np.testing.assert_allclose(float(loss), float(ref["loss"]), rtol=1e-5)
    # unmasked frames scored too (pred_nomask_weight 0.5): fairseq's sample size counts them as well
    loss, _ = pretraining_loss(result, LossWeights(masked=1.0, unmasked=0.5, features_pen=10.0))
    assert int(ref["sample_size_nomask"]) == ref["loss_mask"].size > int(ref["sample_size"])
    np.testing.assert_allclose(float(loss), float(ref["loss_nomask"]), rtol=1e-5)

    batch = {"input_values": np.repeat(x, 8, 0), "attention_mask": np.ones((8, x.shape[1]), np.int32),
             "labels": np.repeat(np.stack(labels, 1), 8, 0).astype(np.int32)}
    batch = {k: jax.make_array_from_process_local_data(trainer.batch_sharding, v) for k, v in batch.items()}
    before = jax.device_get(state["params"])
    for _ in range(2):  # the warmup's first learning rate is 0
        state, metrics = trainer.train_step(state, batch)
        assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, jax.device_get(state["params"]))
    still = [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(moved) if not m]
    assert not still, still


def test_padding_rule_differs_from_fairseq_hubert_and_unilm(tmp_path):
    """fairseq's HuBERT and unilm's WavLM call a frame padding only when all of its samples are padding;
    transformers and hubert-jax (and fairseq's wav2vec 2.0) use the conv output length. For the 11840-sample
    clip padded to 16000 that is 37 frames against 36, and the whole padded row differs (README:
    "Padding frames"). Our padded layer-norm models give their unpadded outputs; the label pipeline's
    feature dump (inference.extract) gives each utterance's unpadded frames and values."""
    from hubert_jax.inference import extract
    from hubert_jax.lengths import feat_extract_output_lengths

    audio = clips()
    x = np.zeros((2, len(audio[0])), np.float32)
    mask = np.zeros(x.shape, np.int32)
    for i, clip in enumerate(audio):
        x[i, : len(clip)], mask[i, : len(clip)] = clip, 1
    for name, fairseq_frames in (("hubert_large", 37), ("wavlm_large", 37), ("wav2vec2", 36)):
        ref = expected(name)
        model = hubert_jax.FlaxAutoModel.from_pretrained(convert(name, tmp_path / name))
        ours = int(feat_extract_output_lengths(model.config, len(audio[1])))
        assert ours == 36 and ref["padded_mask"].sum(1).tolist() == [49, fairseq_frames]
        padded = np.asarray(model(jnp.asarray(x), attention_mask=jnp.asarray(mask)).last_hidden_state)
        np.testing.assert_allclose(padded[0], ref["padded_last"][0], atol=TOL, rtol=0)  # the unpadded row
        gap = np.abs(padded[1, :ours] - ref["padded_last"][1, :ours]).max()
        assert (gap > 0.1) == (fairseq_frames != ours), (name, gap)
        layer_norm = model.config.feat_extract_norm == "layer"
        if layer_norm:  # (a group norm's statistics take in the padded samples, in every implementation)
            np.testing.assert_allclose(padded[1, :ours], ref["last_1"], atol=TOL, rtol=0)  # = the clip alone
        # the feature dump (extract) pads to its grid with a mask and keeps the conv length: fairseq's
        # unpadded frames and values, group norm included
        dumped = extract(model, [audio[0], audio[1]], layer=2, max_tokens=4 * 16000)[1]
        np.testing.assert_allclose(dumped, ref["hidden_1_2"], atol=TOL, rtol=0)


def test_a_fine_tuned_conversion_takes_its_own_fine_tuning_settings_and_no_pretraining_heads(tmp_path, caplog):
    """The fixture was fine-tuned with masks 0.5 x 4 and no dropout from a checkpoint pretrained with 0.8 x 10
    and dropout 0.1: the converted CTC config has the fine-tuning run's, and fine-tuning's leftover
    label_embs_concat becomes no hubert_pretraining section."""
    pretrained = os.path.join(PEER, "hubert_base", "checkpoint_last.pt")
    with caplog.at_level(logging.WARNING):
        assert convert_main([os.path.join(PEER, "hubert_ctc", "checkpoint_last.pt"), str(tmp_path / "out"),
                             "--w2v-checkpoint", pretrained]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["mask_time_prob"], config["mask_time_length"]) == (0.5, 4)
    assert config["feat_proj_dropout"] == config["hidden_dropout"] == config["layerdrop"] == 0.0
    assert "hubert_pretraining" not in config
    assert "assuming one label set" not in caplog.text


def test_a_w2v_checkpoint_of_another_model_is_refused_naming_it(tmp_path, caplog):
    other = os.path.join(PEER, "hubert_large", "checkpoint_last.pt")  # as tiny, but another run's weights
    with pytest.raises(ValueError, match=rf"{other}: not the pretrained checkpoint .*ctc.pt was fine-tuned from: its "
                                         rf"conv feature weights .* differ"):
        shutil.copyfile(os.path.join(PEER, "hubert_ctc", "checkpoint_last.pt"), tmp_path / "ctc.pt")
        convert_main([str(tmp_path / "ctc.pt"), str(tmp_path / "out"), "--w2v-checkpoint", other])
    assert not (tmp_path / "out").exists()
    # the right weights under another name than w2v_path's: converted, with a warning naming both
    shutil.copyfile(os.path.join(PEER, "hubert_base", "checkpoint_last.pt"), tmp_path / "renamed.pt")
    with caplog.at_level(logging.WARNING):
        assert convert_main([str(tmp_path / "ctc.pt"), str(tmp_path / "out"), "--w2v-checkpoint",
                             str(tmp_path / "renamed.pt")]) == 0
    assert "was fine-tuned from /tmp/" in caplog.text and "renamed.pt, a file of another name" in caplog.text
