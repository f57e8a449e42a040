"""Attention kernel choice, the cuDNN wrapper's conventions, and WavLM's relative position buckets."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hubert_jax.models import attention as attn
from hubert_jax.models.encoder import relative_position_buckets


def test_auto_is_xla_off_gpu_and_cudnn_request_falls_back_with_reason(caplog):
    attn._log_fallback.cache_clear()
    assert attn.resolve_impl("auto", dtype=jnp.bfloat16, head_dim=64, with_dropout=False) == "xla"
    with caplog.at_level(logging.WARNING, logger="hubert_jax.models.attention"):
        assert attn.resolve_impl("cudnn", dtype=jnp.bfloat16, head_dim=64, with_dropout=False) == "xla"
    assert "backend is cpu" in caplog.text


@pytest.mark.parametrize("dtype,head_dim,dropout,reason", [
    (jnp.float32, 64, False, "bfloat16 or float16"),
    (jnp.bfloat16, 12, False, "multiple of 8"),
    (jnp.bfloat16, 256, False, "up to 128"),
    (jnp.bfloat16, 64, True, "dropout"),
    (jnp.float16, 64, False, None),
])
def test_cudnn_eligibility_on_gpu(monkeypatch, dtype, head_dim, dropout, reason):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    got = attn.cudnn_unsupported_reason(dtype=dtype, head_dim=head_dim, with_dropout=dropout)
    if reason is None:
        assert got is None
        assert attn.resolve_impl("auto", dtype=dtype, head_dim=head_dim, with_dropout=dropout) == "cudnn"
    else:
        assert reason in got


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_wrapper_conventions_match_the_xla_kernel(with_bias):
    # the cuDNN wrapper (lengths from the mask, BTNH layout, bias broadcast) run through jax's XLA
    # implementation of the same API must equal our reference kernel
    rng = np.random.RandomState(0)
    b, t, h, d = 2, 20, 4, 8
    q, k, v = (jnp.asarray(rng.randn(b, t, h, d), jnp.float32) for _ in range(3))
    mask = jnp.arange(t)[None] < jnp.asarray([[20], [13]])
    bias = jnp.asarray(rng.randn(b, h, t, t), jnp.float32) if with_bias else None
    ref = attn.xla_attention(q, k, v, bias=bias, key_mask=mask)
    fused = attn.cudnn_attention(q, k, v, bias=bias, key_mask=mask, implementation="xla")
    np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("num_buckets,max_distance,length", [(320, 800, 1500), (32, 64, 300)])
def test_relative_position_buckets_equal_transformers(num_buckets, max_distance, length):
    import transformers
    import torch

    layer = transformers.models.wavlm.modeling_wavlm.WavLMAttention(
        embed_dim=8, num_heads=2, num_buckets=num_buckets, max_distance=max_distance)
    pos = torch.arange(length)
    theirs = layer._relative_positions_bucket(pos[None, :] - pos[:, None]).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length, num_buckets, max_distance), theirs)
