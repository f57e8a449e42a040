"""fairseq / unilm / s3prl checkpoints, built here from their documented key names (REFERENCE.md section 1)
out of random transformers models, convert and match those models' outputs."""

import argparse
import json
import logging
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hubert_jax
from hubert_jax.convert.cli import main as convert_main
from hubert_jax.weights.files import read_safetensors
from tests.reference import PREFIX, audio, max_diff, run_torch, torch_config

TOL = 1e-4
CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 1 + [(16, 2, 2)]"  # the tiny test conv stack


def fairseq_names(state, *, layer_norm_extractor):
    """transformers state dict -> fairseq/unilm names (written out from the documented names)."""
    out = {}
    for key, value in state.items():
        k = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0.", key)
        norm = r"feature_extractor.conv_layers.\1.2.1." if layer_norm_extractor else r"feature_extractor.conv_layers.\1.2."
        k = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", norm, k)
        k = k.replace("feature_projection.projection", "post_extract_proj")
        k = k.replace("feature_projection.layer_norm", "layer_norm")
        k = k.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g")
        k = k.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v")
        k = k.replace("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
        k = k.replace("attention.gru_rel_pos_linear", "self_attn.grep_linear")
        k = k.replace("attention.gru_rel_pos_const", "self_attn.grep_a")
        k = k.replace("attention.rel_attn_embed", "self_attn.relative_attention_bias")
        k = re.sub(r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn.", k)
        k = re.sub(r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm.", k)
        k = k.replace("feed_forward.intermediate_dense", "fc1").replace("feed_forward.output_dense", "fc2")
        k = k.replace("masked_spec_embed", "mask_emb")
        k = k.replace("quantizer.codevectors", "quantizer.vars").replace("project_hid", "final_proj")
        out[k] = value.clone()
    return out


def model_cfg(stable=False, layer=False, **extra):
    return {**dict(encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=48, encoder_attention_heads=4,
                   activation_fn="gelu", layer_norm_first=stable, extractor_mode="layer_norm" if layer else "default",
                   conv_feature_layers=CONV, conv_bias=layer, conv_pos=8, conv_pos_groups=4, dropout=0.1,
                   attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.0,
                   mask_prob=0.8, mask_length=10), **extra}


def _torch(family, head="Model", stable=False, layer=False, **kw):
    import transformers

    torch.manual_seed(0)
    cfg = torch_config(family, do_stable_layer_norm=stable, feat_extract_norm="layer" if layer else "group",
                       conv_bias=layer, **kw)
    return getattr(transformers, PREFIX[family] + head)(cfg).eval()


def _compare(tmodel, out_dir, head="Model", key="last_hidden_state"):
    auto = {"Model": hubert_jax.FlaxAutoModel, "ForCTC": hubert_jax.FlaxAutoModelForCTC,
            "ForPreTraining": hubert_jax.FlaxAutoModelForPreTraining}[head]
    model = auto.from_pretrained(out_dir)
    x, mask = audio(pad_to=(4000, 2800))
    if head == "ForPreTraining":
        assert max_diff(run_torch(tmodel, x, mask).projected_states,
                        model(jnp.asarray(x), attention_mask=jnp.asarray(mask)).projected_states) < TOL
    else:
        assert max_diff(getattr(run_torch(tmodel, x, mask), key),
                        getattr(model(jnp.asarray(x), attention_mask=jnp.asarray(mask)), key)) < TOL
    return model


@pytest.mark.parametrize("stable,layer,cfg_style", [(False, False, "hydra"), (True, True, "namespace")])
def test_fairseq_hubert_keeps_pretraining_heads(tmp_path, stable, layer, cfg_style):
    tmodel = _torch("hubert", stable=stable, layer=layer)
    state = fairseq_names(tmodel.state_dict(), layer_norm_extractor=layer)
    final_proj_w, final_proj_b = torch.randn(12, 32), torch.randn(12)
    label_embs = torch.randn(100, 12)
    state.update({"final_proj.weight": final_proj_w, "final_proj.bias": final_proj_b, "label_embs_concat": label_embs})
    cfg = model_cfg(stable, layer, _name="hubert", final_dim=12, logit_temp=0.1, label_rate=50, untie_final_proj=False)
    ckpt = {"cfg": {"model": cfg, "task": {"labels": ["km"]}}, "model": state}
    if cfg_style == "namespace":  # older fairseq checkpoints keep an argparse.Namespace
        ckpt = {"args": argparse.Namespace(**cfg), "model": state}
    torch.save(ckpt, tmp_path / "hubert.pt")
    assert convert_main([str(tmp_path / "hubert.pt"), str(tmp_path / "out")]) == 0
    _compare(tmodel, tmp_path / "out")
    heads = read_safetensors(str(tmp_path / "out" / "pretraining_heads.safetensors"))
    np.testing.assert_array_equal(heads["final_proj.kernel"], final_proj_w.numpy().T)
    np.testing.assert_array_equal(heads["final_proj.bias"], final_proj_b.numpy())
    np.testing.assert_array_equal(heads["label_embs_concat"], label_embs.numpy())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hubert_pretraining"] == {"final_dim": 12, "logit_temp": 0.1, "untie_final_proj": False,
                                            "label_rate": 50, "num_label_embeddings": 100, "label_offset": 4,
                                            "num_classes": [100]}  # no task_state: one set, 4 specials
    assert config["do_stable_layer_norm"] == stable and config["mask_time_prob"] == 0.8


def test_unilm_wavlm(tmp_path):
    tmodel = _torch("wavlm", stable=True, layer=True)
    state = fairseq_names(tmodel.state_dict(), layer_norm_extractor=True)
    assert "encoder.layers.0.self_attn.relative_attention_bias.weight" in state
    cfg = model_cfg(True, True, relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True)
    torch.save({"cfg": cfg, "model": state}, tmp_path / "wavlm.pt")  # unilm keeps the model config flat
    assert convert_main([str(tmp_path / "wavlm.pt"), str(tmp_path / "out")]) == 0
    assert type(_compare(tmodel, tmp_path / "out")).__name__ == "WavLMModel"


def test_s3prl_distilhubert(tmp_path, caplog):
    tmodel = _torch("hubert", feat_proj_layer_norm=False, num_hidden_layers=2)
    state = fairseq_names(tmodel.state_dict(), layer_norm_extractor=False)
    state["output_layer.0.weight"] = torch.randn(32, 32)  # a prediction head of the distiller
    cfg = model_cfg(extractor_conv_feature_layers=CONV, encoder_layers=2)
    del cfg["conv_feature_layers"]
    torch.save({"Distiller": state, "Config": {"distiller": cfg}}, tmp_path / "distil.ckpt")
    with caplog.at_level(logging.WARNING, logger="hubert_jax.convert.fairseq"):
        assert convert_main([str(tmp_path / "distil.ckpt"), str(tmp_path / "out")]) == 0
    assert "output_layer.0.weight" in caplog.text
    model = _compare(tmodel, tmp_path / "out")
    assert not model.config.feat_proj_layer_norm and model.config.num_hidden_layers == 2


def test_fairseq_wav2vec2_finetuned_ctc(tmp_path):
    tmodel = _torch("wav2vec2", "ForCTC")
    base = fairseq_names(tmodel.wav2vec2.state_dict(), layer_norm_extractor=False)
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in base.items()}
    state["w2v_encoder.proj.weight"] = tmodel.lm_head.weight.detach().clone()
    state["w2v_encoder.proj.bias"] = tmodel.lm_head.bias.detach().clone()
    cfg = {"_name": "wav2vec_ctc", "w2v_args": {"model": model_cfg(_name="wav2vec2")}}
    torch.save({"cfg": {"model": cfg}, "model": state}, tmp_path / "ctc.pt")
    # fairseq's letter dictionary: "symbol count" lines after its 4 implicit specials (vocab_size is 11)
    (tmp_path / "dict.ltr.txt").write_text("| 100\nE 50\nT 40\nA 30\nO 20\nN 10\nI 5\n")
    assert convert_main([str(tmp_path / "ctc.pt"), str(tmp_path / "out"), "--dict",
                         str(tmp_path / "dict.ltr.txt")]) == 0
    model = _compare(tmodel, tmp_path / "out", "ForCTC", "logits")
    assert model.config.vocab_size == tmodel.config.vocab_size and model.config.pad_token_id == 0
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    assert vocab["<pad>"] == 0 and vocab["<s>"] == 1 and vocab["|"] == 4 and vocab["I"] == 10
    import transformers

    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path / "out")
    assert tok.decode([5, 5, 0, 6, 4, 7]) == "ET A"
    (tmp_path / "dict.ltr.txt").write_text("| 1\nE 1\n")
    with pytest.raises(ValueError, match="gives 6 symbols, the checkpoint's CTC head has 11 outputs"):
        convert_main([str(tmp_path / "ctc.pt"), str(tmp_path / "out2"), "--dict", str(tmp_path / "dict.ltr.txt")])


def test_fairseq_wav2vec2_pretraining_checkpoint(tmp_path):
    tmodel = _torch("wav2vec2", "ForPreTraining", num_codevector_groups=2, num_codevectors_per_group=8,
                    codevector_dim=16, proj_codevector_dim=12)
    unprefixed = {k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k: v for k, v in tmodel.state_dict().items()}
    state = fairseq_names(unprefixed, layer_norm_extractor=False)
    cfg = model_cfg(_name="wav2vec2", latent_groups=2, latent_vars=8, final_dim=12)
    torch.save({"cfg": {"model": cfg}, "model": state}, tmp_path / "w2v.pt")
    assert convert_main([str(tmp_path / "w2v.pt"), str(tmp_path / "out")]) == 0
    _compare(tmodel, tmp_path / "out", "ForPreTraining")


def test_bad_original_checkpoints(tmp_path):
    tmodel = _torch("hubert")
    state = fairseq_names(tmodel.state_dict(), layer_norm_extractor=False)
    state["encoder.mystery.weight"] = torch.zeros(3)
    state["decoder.proj.weight"] = torch.zeros(3)
    torch.save({"cfg": {"model": model_cfg(_name="hubert")}, "model": state}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"no transformers name \(2\): decoder.proj.weight, encoder.mystery.weight"):
        convert_main([str(tmp_path / "odd.pt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fairseq, unilm or s3prl checkpoint"):
        convert_main([str(tmp_path / "other.pt"), str(tmp_path / "out")])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable"):
        convert_main([str(tmp_path / "junk.pt"), str(tmp_path / "out")])
