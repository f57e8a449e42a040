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


def test_new_lengths_share_a_grid_program_and_each_call_gets_its_own_frames():
    """3000, 3100 and 3300 samples pad to the grid's 3520 (with a mask over the real samples, a group norm over
    them), so three lengths compile one program; the outputs are trimmed to each length's frames and equal the
    exact call. A length called a third time gets its own program; a caller's own mask keeps its shape."""
    from hubert_jax.lengths import grid_length

    rng = np.random.default_rng(3)
    assert {grid_length(n, compiled.GRID_RATIO) for n in (3000, 3100, 3300)} == {3520}
    for norm in ("group", "layer"):
        model = tiny(feat_extract_norm=norm, conv_bias=norm == "layer")
        waves = {n: rng.standard_normal((2, n)).astype(np.float32) for n in (3000, 3100, 3300)}
        before = compiled.traces["count"]
        for n, x in waves.items():
            out = model(x, output_hidden_states=True)
            exact = type(model).__call__.eager(model, jnp.asarray(x), output_hidden_states=True)
            assert out.last_hidden_state.shape == exact.last_hidden_state.shape, n
            for a, b in zip((out.last_hidden_state, out.extract_features, *out.hidden_states),
                            (exact.last_hidden_state, exact.extract_features, *exact.hidden_states)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
            np.testing.assert_allclose(float(out.features_pen), float(exact.features_pen), rtol=1e-5)
        assert compiled.traces["count"] == before + 1, norm  # one program for the three lengths
        model(waves[3000], output_hidden_states=True)
        assert compiled.traces["count"] == before + 1  # the second call of a length: the grid's program
        third = model(waves[3000], output_hidden_states=True)
        assert compiled.traces["count"] == before + 2  # the third: its own, exact shape
        np.testing.assert_allclose(np.asarray(third.last_hidden_state), np.asarray(
            type(model).__call__.eager(model, jnp.asarray(waves[3000])).last_hidden_state), atol=1e-5)
        mask = np.ones((2, 3100), np.int32)
        mask[1, 2500:] = 0
        masked = model(waves[3100], attention_mask=mask)
        assert compiled.traces["count"] == before + 3 and masked.last_hidden_state.shape[1] == 154


def test_a_head_called_directly_on_a_new_length_gives_its_frames_and_pooled_outputs():
    from hubert_jax.models import HubertForCTC, HubertForSequenceClassification

    config = hubert_jax.HubertConfig.from_dict({**TINY, "feat_extract_norm": "group"})
    x = np.random.default_rng(4).standard_normal((1, 3100)).astype(np.float32)
    for head in (HubertForCTC(config, rngs=nnx.Rngs(1)), HubertForSequenceClassification(config, rngs=nnx.Rngs(1))):
        out = head(x).logits
        exact = type(head).__call__.eager(head, jnp.asarray(x)).logits
        assert out.shape == exact.shape
        np.testing.assert_allclose(np.asarray(out), np.asarray(exact), atol=2e-5)
