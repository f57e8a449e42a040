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


# ----------------------------------------------------------------------------- fused kernels vs XLA
# Tolerances: the flash kernel and XLA both accumulate in float32; they differ only by summation order.
FUSED_ATOL = 1e-5  # outputs, inputs ~N(0, 1)
FUSED_GRAD_RTOL = 1e-5  # gradients, relative to each gradient's largest entry


def _qkv(b=2, t=50, h=2, d=16, lengths=(50, 31), seed=0):
    rng = np.random.RandomState(seed)
    q, k, v = (jnp.asarray(rng.randn(b, t, h, d), jnp.float32) for _ in range(3))
    mask = jnp.arange(t)[None] < jnp.asarray(lengths)[:, None]
    bias = jnp.asarray(rng.randn(b, h, t, t), jnp.float32)
    return q, k, v, mask, bias


def _valid_loss(kernel, mask):
    def loss(q, k, v, bias):
        out = kernel(q, k, v, bias=bias, key_mask=mask)
        return (jnp.where(mask[:, :, None, None], out, 0.0) ** 2).sum()
    return loss


def _assert_grads_close(got, want):
    for g, w in zip(got, want):
        scale = float(jnp.abs(w).max())
        assert float(jnp.abs(g - w).max()) <= FUSED_GRAD_RTOL * scale, (float(jnp.abs(g - w).max()), scale)


@pytest.mark.parametrize("with_bias", [False, True])
def test_pallas_flash_kernel_equals_xla_outputs_and_gradients(with_bias):
    # 50 frames pad to one 128 block; row 2 has 31 valid frames (segment ids mask the rest)
    q, k, v, mask, bias = _qkv()
    bias = bias if with_bias else None
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    want = attn.xla_attention(q, k, v, bias=bias, key_mask=mask)
    want_grads = jax.grad(_valid_loss(attn.xla_attention, mask), argnums=argnums)(q, k, v, bias)
    with attn.pallas_interpret():
        got = jax.jit(lambda q, k, v, b: attn.pallas_attention(q, k, v, bias=b, key_mask=mask))(q, k, v, bias)
        grads = jax.jit(jax.grad(_valid_loss(attn.pallas_attention, mask), argnums=argnums))(q, k, v, bias)
    valid = np.asarray(mask)[:, :, None, None]
    np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, want, 0), atol=FUSED_ATOL)
    _assert_grads_close(grads, want_grads)


def test_cudnn_wrapper_pads_odd_frame_counts_for_the_bias_gradient():
    # cuDNN wants even lengths when the bias takes a gradient: 49 frames run as 50, sliced back
    q, k, v, mask, bias = _qkv(t=49, lengths=(49, 30))
    seen = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[1], kw["bias"].shape))
        return real(q, k, v, **kw)

    try:
        jax.nn.dot_product_attention = spy
        loss = _valid_loss(lambda *a, **kw: attn.cudnn_attention(*a, **kw, implementation="xla"), mask)
        got = attn.cudnn_attention(q, k, v, bias=bias, key_mask=mask, implementation="xla")
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)
    finally:
        jax.nn.dot_product_attention = real
    assert seen[0] == (50, (2, 2, 50, 50)) and got.shape == q.shape
    np.testing.assert_allclose(got, attn.xla_attention(q, k, v, bias=bias, key_mask=mask), atol=FUSED_ATOL)
    _assert_grads_close(grads, jax.grad(_valid_loss(attn.xla_attention, mask), argnums=(0, 1, 2, 3))(q, k, v, bias))


def test_pallas_is_chosen_on_tpu_and_falls_back_off_tpu(monkeypatch, caplog):
    attn._log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hubert_jax.models.attention"):
        assert attn.resolve_impl("pallas", dtype=jnp.float32, head_dim=64, with_dropout=False) == "xla"
    assert "Pallas flash attention needs a TPU" in caplog.text
    with attn.pallas_interpret():
        assert attn.resolve_impl("pallas", dtype=jnp.float32, head_dim=64, with_dropout=False) == "pallas"
        assert attn.resolve_impl("auto", dtype=jnp.float32, head_dim=64, with_dropout=False) == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert attn.resolve_impl("auto", dtype=jnp.bfloat16, head_dim=64, with_dropout=False) == "pallas"
    assert attn.resolve_impl("auto", dtype=jnp.bfloat16, head_dim=64, with_dropout=True) == "xla"


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_pallas_model_matches_xla_model_hidden_states_and_gradients(family):
    # a whole model (WavLM: gated relative-position bias through `ab`), padded batch, both kernels
    from flax import nnx

    import hubert_jax
    from hubert_jax.weights.state import load_flat, model_to_flat
    from tests.reference import TINY, TINY_BY_FAMILY, audio

    config = hubert_jax.config_class_for(family).from_dict({**TINY, **TINY_BY_FAMILY[family],
                                                            "num_hidden_layers": 2})
    ref = hubert_jax.BASE_MODELS[family](config, attention_impl="xla")
    fused = hubert_jax.BASE_MODELS[family](config, attention_impl="pallas")
    load_flat(fused, model_to_flat(ref))
    x, mask = (jnp.asarray(a) for a in audio(pad_to=(4000, 2600)))
    # a fixed random read-out of the 199 frames: sum(out**2) would be constant after the final layer norm (zero gradient)
    readout = jnp.asarray(np.random.RandomState(1).randn(2, 199, TINY["hidden_size"]), jnp.float32)

    def loss(model):
        out = model(x, attention_mask=mask).last_hidden_state
        return (out * readout).sum(), out

    (_, want), want_grads = nnx.value_and_grad(loss, has_aux=True)(ref)
    with attn.pallas_interpret():
        (_, got), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(fused)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
    want_flat, got_flat = (dict(nnx.to_flat_state(g)) for g in (want_grads, grads))
    assert want_flat.keys() == got_flat.keys()
    for path, w in want_flat.items():
        w, g = np.asarray(w.get_value()), np.asarray(got_flat[path].get_value())
        # 1e-6 floor: k_proj's bias gradient is zero in theory, float noise in practice
        np.testing.assert_allclose(g, w, atol=FUSED_GRAD_RTOL * 10 * float(np.abs(w).max()) + 1e-6,
                                   err_msg=str(path))
