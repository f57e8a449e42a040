"""scan_layers=True gives the same numbers as the unrolled stack, for outputs, gradients and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hubert_jax
from hubert_jax.weights.state import model_to_flat, stack_layers, load_flat, unstack_layers
from tests.reference import TINY, TINY_BY_FAMILY, audio


def _config(family, **kw):
    return hubert_jax.config_class_for(family).from_dict({**TINY, **TINY_BY_FAMILY[family], **kw})


def _pair(family, remat="none", remat_conv=False, **kw):
    config = _config(family, **kw)
    unrolled = hubert_jax.BASE_MODELS[family](config, rngs=nnx.Rngs(0))
    scanned = hubert_jax.BASE_MODELS[family](config, rngs=nnx.Rngs(1), scan_layers=True, remat_policy=remat,
                                             remat_conv=remat_conv)
    load_flat(scanned, stack_layers(model_to_flat(unrolled), config.num_hidden_layers))
    return unrolled, scanned


@pytest.mark.parametrize("family,stable", [("hubert", False), ("wavlm", False), ("wavlm", True), ("wav2vec2", True)])
def test_scan_equals_unrolled_forward(family, stable):
    unrolled, scanned = _pair(family, do_stable_layer_norm=stable)
    x, mask = audio(pad_to=(4000, 2500))
    a = unrolled(jnp.asarray(x), attention_mask=jnp.asarray(mask), output_hidden_states=True)
    b = scanned(jnp.asarray(x), attention_mask=jnp.asarray(mask), output_hidden_states=True)
    np.testing.assert_allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-5)
    assert len(a.hidden_states) == len(b.hidden_states) == unrolled.config.num_hidden_layers + 1
    for h1, h2 in zip(a.hidden_states, b.hidden_states):
        np.testing.assert_allclose(h1, h2, atol=1e-5)


def test_stack_unstack_roundtrip_moves_wavlm_bucket_embedding():
    unrolled, scanned = _pair("wavlm")
    flat = model_to_flat(unrolled)
    stacked = stack_layers(flat, 3)
    assert "encoder.rel_attn_embed.embedding" in stacked
    assert stacked["encoder.layers.attention.q_proj.kernel"].shape == (3, 32, 32)
    back = unstack_layers(stacked, 3)
    assert set(back) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(flat[k], back[k])


def _flat_grads(grads):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}


@pytest.mark.parametrize("remat,remat_conv", [("none", False), ("full", True), ("dots", False),
                                               ("dots_no_batch", False)])
def test_scan_with_remat_matches_gradients_and_dropout(remat, remat_conv):
    # dropout and layerdrop on: the same key draws the same masks in both layouts (keys fold in the layer index)
    unrolled, scanned = _pair("hubert", remat=remat, remat_conv=remat_conv, hidden_dropout=0.1, attention_dropout=0.1,
                              activation_dropout=0.1, layerdrop=0.3)
    x, mask = audio(pad_to=(4000, 3000))
    key = jax.random.key(7)

    def loss(model):
        out = model(jnp.asarray(x), attention_mask=jnp.asarray(mask), deterministic=False, dropout_rng=key)
        return jnp.mean(out.last_hidden_state ** 2)

    la, ga = nnx.value_and_grad(loss)(unrolled)
    lb, gb = nnx.value_and_grad(loss)(scanned)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    flat_a = stack_layers(_flat_grads(ga), 3)
    flat_b = _flat_grads(gb)
    assert set(flat_a) == set(flat_b)
    for k in flat_a:
        np.testing.assert_allclose(flat_a[k], flat_b[k], atol=2e-5, err_msg=k)


def test_dropout_needs_a_key_and_is_reproducible():
    config = _config("hubert", hidden_dropout=0.1)
    model = hubert_jax.HubertModel(config)
    x, _ = audio()
    with pytest.raises(ValueError, match="PRNG key"):
        model(jnp.asarray(x), deterministic=False)
    a = model(jnp.asarray(x), deterministic=False, dropout_rng=jax.random.key(1)).last_hidden_state
    b = model(jnp.asarray(x), deterministic=False, dropout_rng=jax.random.key(1)).last_hidden_state
    c = model(jnp.asarray(x), deterministic=False, dropout_rng=jax.random.key(2)).last_hidden_state
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-3
