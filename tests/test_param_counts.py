"""Full-size presets: parameter counts computed abstractly (no memory) equal transformers' models."""

import math

import pytest
from flax import nnx

import hubert_jax
from hubert_jax.config import PRESETS, preset


def count_ours(config, scan=False) -> int:
    model = nnx.eval_shape(lambda: hubert_jax.BASE_MODELS[config.model_type](config, scan_layers=scan))
    return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def count_transformers(config) -> int:
    import torch
    import transformers

    tcls = {"hubert": (transformers.HubertConfig, transformers.HubertModel),
            "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
            "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model)}[config.model_type]
    with torch.device("meta"):
        model = tcls[1](tcls[0].from_dict(config.to_dict()))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_equals_transformers(name):
    config = preset(name)
    assert count_ours(config) == count_transformers(config)


def _fairseq_pretraining_heads(config, final_dim, clusters=504) -> int:
    # final_proj (hidden -> final_dim) + label_embs_concat (clusters x final_dim), kept by fairseq checkpoints
    return config.hidden_size * final_dim + final_dim + clusters * final_dim


def test_headline_sizes():
    base, large = preset("hubert-base"), preset("hubert-large")
    assert count_ours(base) == 94_371_712  # transformers HubertModel
    assert count_ours(large) == 315_438_720
    # the often quoted 94.7M / 316.6M count fairseq's pretraining heads too (504 label embeddings)
    assert round((count_ours(base) + _fairseq_pretraining_heads(base, 256)) / 1e6, 1) == 94.7
    assert round((count_ours(large) + _fairseq_pretraining_heads(large, 768)) / 1e6, 1) == 316.6
    assert count_ours(large, scan=True) == count_ours(large)
