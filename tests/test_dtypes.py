"""bf16 compute stays within a documented tolerance of float32; storage dtype is honoured; norms run in f32."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hubert_jax
from hubert_jax.weights.state import load_flat, model_to_flat
from hubert_jax.models.layers import LayerNorm, ModelOptions
from tests.reference import TINY, TINY_BY_FAMILY, audio

# Documented in README: bf16 compute (f32 params) vs f32, last hidden state of a 4-layer tiny model
BF16_REL_L2 = 2e-2
BF16_MAX_ABS = 0.15


@pytest.mark.parametrize("family,stable", [("hubert", False), ("wavlm", False), ("wav2vec2", True)])
def test_bf16_forward_within_tolerance(family, stable):
    config = hubert_jax.config_class_for(family).from_dict(
        {**TINY, **TINY_BY_FAMILY[family], "do_stable_layer_norm": stable, "num_hidden_layers": 4})
    ref = hubert_jax.BASE_MODELS[family](config)
    fast = hubert_jax.BASE_MODELS[family](config, dtype=jnp.bfloat16)
    load_flat(fast, model_to_flat(ref))
    x, mask = audio(pad_to=(4000, 3000))
    a = ref(jnp.asarray(x), attention_mask=jnp.asarray(mask)).last_hidden_state
    out = fast(jnp.asarray(x), attention_mask=jnp.asarray(mask), output_hidden_states=True)
    b = out.last_hidden_state
    assert b.dtype == jnp.bfloat16 and all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
    diff = a - b.astype(jnp.float32)
    assert float(jnp.linalg.norm(diff) / jnp.linalg.norm(a)) < BF16_REL_L2
    assert float(jnp.max(jnp.abs(diff))) < BF16_MAX_ABS


def test_param_dtype_is_storage_dtype():
    config = hubert_jax.HubertConfig.from_dict({**TINY})
    model = hubert_jax.HubertForCTC(config, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    x, _ = audio()
    assert model(jnp.asarray(x)).logits.dtype == jnp.bfloat16


def test_layer_norm_statistics_in_float32():
    # a large common offset destroys bf16 statistics unless they are computed in f32
    opts = ModelOptions(dtype=jnp.bfloat16)
    norm = LayerNorm(64, opts=opts, rngs=nnx.Rngs(0))
    x = np.asarray(jnp.asarray(np.random.RandomState(0).randn(4, 64) + 100.0, jnp.bfloat16), np.float32)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    out = norm(jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    # only the output rounding remains (~0.01 at |y| ~ 2); bf16 statistics would be off by ~0.25
    assert float(np.max(np.abs(np.asarray(out, np.float32) - ref))) < 0.02
