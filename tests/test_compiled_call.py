"""A direct call in inference mode compiles once per input shape and equals the op-by-op call; calls inside
a user's jit, training-mode calls (dropout keys, BatchNorm statistics) run as written."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hubert_jax
from hubert_jax.models import compiled
from tests.reference import TINY


def tiny(**overrides):
    return hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict({**TINY, **overrides}), rngs=nnx.Rngs(0))


def test_direct_inference_calls_compile_once_per_shape():
    model = tiny()
    x = np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32)
    before = compiled.traces["count"]
    first = model(x)
    again = model(jnp.asarray(x) * 1.0)
    assert compiled.traces["count"] == before + 1  # the second call reused the program
    model(x, output_hidden_states=True)
    model(x[:, :3000])
    assert compiled.traces["count"] == before + 3  # a new flag setting, a new shape
    eager = type(model).__call__.eager(model, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(first.last_hidden_state), np.asarray(eager.last_hidden_state), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(first.last_hidden_state), np.asarray(again.last_hidden_state))


def test_calls_inside_a_users_jit_and_training_calls_run_as_written():
    model = tiny(hidden_dropout=0.5)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4000)), jnp.float32)
    before = compiled.traces["count"]
    inside = nnx.jit(lambda m, x: m(x).last_hidden_state)(model, x)
    np.testing.assert_allclose(np.asarray(inside), np.asarray(model(x).last_hidden_state), atol=1e-5)
    a = model(x, deterministic=False, dropout_rng=jax.random.key(0)).last_hidden_state
    b = model(x, deterministic=False, dropout_rng=jax.random.key(1)).last_hidden_state
    assert not np.allclose(np.asarray(a), np.asarray(b))  # dropout keys are honoured
    grads = jax.grad(lambda x: model(x).last_hidden_state.sum())(x)
    assert np.isfinite(np.asarray(grads)).all()
    assert compiled.traces["count"] == before + 1  # only the one direct inference call compiled


def test_batchnorm_statistics_update_in_training_only():
    model = tiny(conv_pos_batch_norm=True)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4000)), jnp.float32)
    stats = lambda: np.asarray(model.encoder.pos_conv_embed.batch_norm.mean[...]).copy()  # noqa: E731
    start = stats()
    model(x)
    np.testing.assert_array_equal(stats(), start)  # inference: running statistics untouched
    model(x, deterministic=False, dropout_rng=jax.random.key(0))
    assert not np.array_equal(stats(), start)
