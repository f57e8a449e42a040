"""Tiny random transformers (PyTorch) models and their hubert-jax twins, built on the spot."""

from __future__ import annotations

import numpy as np

import hubert_jax
from hubert_jax.weights.state import load_torch_state_dict

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 2), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4, vocab_size=11, classifier_proj_size=12, num_labels=3)
TINY_BY_FAMILY = {
    "hubert": {},
    # small bucket counts so the logarithmic bucket branch is exercised at ~200 frames
    "wavlm": dict(num_buckets=32, max_bucket_distance=64, tdnn_dim=(16, 16, 24), tdnn_kernel=(5, 3, 1),
                  tdnn_dilation=(1, 2, 1), xvector_output_dim=12),
    "wav2vec2": dict(tdnn_dim=(16, 16, 24), tdnn_kernel=(5, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=12),
}
HEADS = {
    "hubert": ("Model", "ForCTC", "ForSequenceClassification"),
    "wavlm": ("Model", "ForCTC", "ForSequenceClassification", "ForAudioFrameClassification", "ForXVector"),
    "wav2vec2": ("Model", "ForCTC", "ForSequenceClassification", "ForAudioFrameClassification", "ForXVector"),
}
PREFIX = {"hubert": "Hubert", "wavlm": "WavLM", "wav2vec2": "Wav2Vec2"}


def torch_config(family: str, **overrides):
    import transformers

    cls = {"hubert": transformers.HubertConfig, "wavlm": transformers.WavLMConfig,
           "wav2vec2": transformers.Wav2Vec2Config}[family]
    return cls(**{**TINY, **TINY_BY_FAMILY[family], **overrides})


def build_pair(family: str, head: str = "Model", seed: int = 0, opts=None, attn_implementation="eager",
               **overrides):
    """(torch model in eval mode, hubert-jax model with the same weights, our config)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tcfg = torch_config(family, **overrides)
    tmodel = getattr(transformers, PREFIX[family] + head)(tcfg)
    if family != "wavlm":  # WavLM runs torch's own MHA
        tmodel.config._attn_implementation = attn_implementation
    tmodel.eval()
    config = hubert_jax.SpeechConfig.from_dict(tcfg.to_dict())
    jmodel = getattr(hubert_jax, PREFIX[family] + head)(config, opts=opts)
    load_torch_state_dict(jmodel, tmodel.state_dict())
    return tmodel, jmodel, config


def audio(batch: int = 2, samples: int = 4000, seed: int = 0, pad_to: tuple | None = None):
    """Random audio and a right-padded attention mask (row i keeps pad_to[i] samples)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, samples).astype(np.float32)
    mask = None
    if pad_to is not None:
        mask = np.zeros((batch, samples), np.int64)
        for i, n in enumerate(pad_to):
            mask[i, :n] = 1
        x = (x * mask).astype(np.float32)  # what a feature extractor's zero padding gives
    return x, mask


def run_torch(tmodel, x, mask=None, **kw):
    import torch

    with torch.no_grad():
        return tmodel(torch.tensor(x), attention_mask=None if mask is None else torch.tensor(mask), **kw)


def max_diff(a, b) -> float:
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    return float(np.max(np.abs(a - np.asarray(b, dtype=np.float32))))
