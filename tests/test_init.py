"""Random initialisation follows transformers' scheme: per-parameter statistics match a torch-initialised twin."""

import numpy as np
import pytest
from flax import nnx

import hubert_jax
from hubert_jax.weights.state import model_to_flat, torch_to_flat

MEDIUM = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
              conv_dim=(64, 64), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4, num_labels=5, classifier_proj_size=64)
CASES = [
    ("hubert", "ForSequenceClassification", dict(use_weighted_layer_sum=True)),
    ("hubert", "Model", dict(conv_pos_batch_norm=True, feat_extract_norm="layer", conv_bias=True)),
    ("wavlm", "ForXVector", dict(tdnn_dim=(64, 64), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=64,
                                 conv_bias=True)),
    ("wav2vec2", "ForCTC", dict(add_adapter=True, output_hidden_size=64, num_adapter_layers=1, conv_bias=True,
                                do_stable_layer_norm=True, adapter_attn_dim=32)),
    ("wav2vec2", "ForPreTraining", dict(num_codevector_groups=2, num_codevectors_per_group=64, codevector_dim=64,
                                        proj_codevector_dim=64)),
]


@pytest.mark.parametrize("family,head,overrides", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_init_statistics_match_transformers(family, head, overrides):
    import torch
    import transformers

    from tests.reference import PREFIX

    tcfg = getattr(transformers, PREFIX[family] + "Config")(**MEDIUM, **overrides)
    torch.manual_seed(0)
    tmodel = getattr(transformers, PREFIX[family] + head)(tcfg)
    config = hubert_jax.SpeechConfig.from_dict(tcfg.to_dict())
    ours = model_to_flat(getattr(hubert_jax, PREFIX[family] + head)(config, rngs=nnx.Rngs(0)))
    theirs = torch_to_flat(tmodel.state_dict(), getattr(hubert_jax, PREFIX[family] + head)(config))
    assert set(ours) == set(theirs)
    for name, ref in theirs.items():
        if head == "ForPreTraining" and name == f"{family}.encoder.pos_conv_embed.conv.weight_v":
            continue  # pretraining draws it as fairseq does (test_pretraining_models_start_from_fairseqs_statistics)
        mine = ours[name]
        assert mine.shape == ref.shape, name
        if ref.std() == 0:  # constants: ones, zeros, 1/(L+1), running stats
            np.testing.assert_allclose(mine, ref, atol=1e-7, err_msg=name)
        elif ref.size >= 64:
            ratio = mine.std() / ref.std()
            assert 0.8 < ratio < 1.25, f"{name}: std {mine.std():.4g} vs transformers {ref.std():.4g}"
            assert abs(mine.mean() - ref.mean()) < 4 * ref.std() / np.sqrt(ref.size) + 0.02 * ref.std(), name


@pytest.mark.parametrize("name", ["hubert_base", "hubert_large", "wav2vec2"])
def test_pretraining_models_start_from_fairseqs_statistics(tmp_path, name):
    """A fresh HubertForPreTraining / Wav2Vec2ForPreTraining is drawn as fairseq draws its pretraining model:
    per-tensor statistics equal those of the fairseq checkpoints of the same architecture
    (tests/fixtures/peer, two updates at learning rate <= 5e-4 from fairseq's own init). The two front-end
    tensors where transformers' scheme differs (HuBERT's feature projection, the positional conv) are
    checked to differ from transformers' as well."""
    from hubert_jax.auto import FlaxAutoModelForPreTraining
    from tests.test_peer_checkpoints import convert

    directory = convert(name, tmp_path / "out")
    trained = FlaxAutoModelForPreTraining.from_pretrained(str(directory))
    theirs = model_to_flat(trained)
    fresh = type(trained)(trained.config, *(() if name == "wav2vec2" else (trained.head,)), rngs=nnx.Rngs(1))
    ours = model_to_flat(fresh)
    prefix = "wav2vec2" if name == "wav2vec2" else "hubert"
    front = [f"{prefix}.encoder.pos_conv_embed.conv.weight_v"]
    if name != "wav2vec2":
        front.append(f"{prefix}.feature_projection.projection.kernel")
    checked = 0
    for key, ref in theirs.items():
        if ref.size < 64 or ref.std() < 0.05 * abs(ref.mean()) or ref.std() < 1e-3:
            continue  # norms' scales and biases: constants moved a little by two updates
        ratio = ours[key].std() / ref.std()
        assert 0.8 < ratio < 1.25, f"{key}: std {ours[key].std():.4g} vs fairseq {ref.std():.4g}"
        checked += 1
    assert checked >= 10
    base = model_to_flat(type(fresh.base_model)(trained.config, rngs=nnx.Rngs(1)))  # transformers' scheme
    for key in front:
        ratio = theirs[key].std() / base[key[len(prefix) + 1:]].std()
        assert not 0.8 < ratio < 1.25, f"{key}: transformers' draw has fairseq's statistics; the check is void"
