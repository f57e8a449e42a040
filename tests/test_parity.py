"""Numerical parity with transformers (PyTorch) on tiny random models: every family, extractor norm,
encoder order, head, padded batches, and every hidden state. Tolerance 1e-4 (float32)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference import HEADS, audio, build_pair, max_diff, run_torch

TOL = 1e-4
FAMILIES = ("hubert", "wavlm", "wav2vec2")


def assert_base_outputs_match(tout, jout, family):
    assert max_diff(tout.last_hidden_state, jout.last_hidden_state) < TOL
    assert len(jout.hidden_states) == len(tout.hidden_states)
    for i, (a, b) in enumerate(zip(tout.hidden_states, jout.hidden_states)):
        assert max_diff(a, b) < TOL, f"hidden_states[{i}]"
    if family != "hubert":  # transformers' HubertModel returns no extract_features
        assert max_diff(tout.extract_features, jout.extract_features) < TOL


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("norm,stable", [("group", False), ("layer", False), ("group", True), ("layer", True)])
def test_base_model_every_hidden_state(family, norm, stable):
    tmodel, jmodel, _ = build_pair(family, feat_extract_norm=norm, do_stable_layer_norm=stable,
                                   conv_bias=norm == "layer")
    for pad_to in (None, (4000, 2300)):
        x, mask = audio(pad_to=pad_to)
        tout = run_torch(tmodel, x, mask, output_hidden_states=True)
        jout = jmodel(jnp.asarray(x), attention_mask=None if mask is None else jnp.asarray(mask),
                      output_hidden_states=True)
        assert_base_outputs_match(tout, jout, family)


VARIANTS = {
    "hubert_conv_pos_batch_norm_odd_kernel": ("hubert", dict(conv_pos_batch_norm=True, num_conv_pos_embeddings=7)),
    "distilhubert_no_feat_proj_ln": ("hubert", dict(feat_proj_layer_norm=False, num_hidden_layers=2)),
    "hubert_attn_adapter": ("hubert", dict(do_stable_layer_norm=True, feat_extract_norm="layer",
                                           adapter_attn_dim=6)),
    "wav2vec2_odd_pos_kernel_groups": ("wav2vec2", dict(num_conv_pos_embeddings=5, num_conv_pos_embedding_groups=2)),
    "wav2vec2_activations": ("wav2vec2", dict(feat_extract_activation="relu", hidden_act="gelu_new")),
    "wav2vec2_adapter_projected": ("wav2vec2", dict(add_adapter=True, output_hidden_size=24, num_adapter_layers=2,
                                                    do_stable_layer_norm=True, feat_extract_norm="layer")),
    "wav2vec2_adapter_same_width": ("wav2vec2", dict(add_adapter=True, num_adapter_layers=1, adapter_stride=3)),
    "wav2vec2_attn_adapter": ("wav2vec2", dict(do_stable_layer_norm=True, feat_extract_norm="layer",
                                               adapter_attn_dim=6)),
    "wavlm_default_buckets": ("wavlm", dict(num_buckets=320, max_bucket_distance=800)),
    "wavlm_large_style": ("wavlm", dict(do_stable_layer_norm=True, feat_extract_norm="layer",
                                        num_conv_pos_embeddings=9)),
    "conv_stack_4_layers": ("hubert", dict(conv_dim=(8, 12, 16, 16), conv_stride=(4, 3, 2, 1),
                                           conv_kernel=(8, 5, 3, 1), conv_bias=True)),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_architecture_variants(name):
    family, overrides = VARIANTS[name]
    tmodel, jmodel, _ = build_pair(family, **overrides)
    if overrides.get("conv_pos_batch_norm"):
        # non-trivial running statistics, so the eval-mode BatchNorm path is really compared
        bn = tmodel.encoder.pos_conv_embed.batch_norm
        g = torch.Generator().manual_seed(1)
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
        from tests.reference import load_torch_state_dict
        load_torch_state_dict(jmodel, tmodel.state_dict())
    x, mask = audio(pad_to=(4000, 2900))
    tout = run_torch(tmodel, x, mask, output_hidden_states=True)
    jout = jmodel(jnp.asarray(x), attention_mask=jnp.asarray(mask), output_hidden_states=True)
    assert jout.last_hidden_state.shape == tuple(tout.last_hidden_state.shape)
    assert_base_outputs_match(tout, jout, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_time_indices_use_the_spec_augment_vector(family):
    tmodel, jmodel, _ = build_pair(family)
    x, _ = audio()
    frames = jmodel(jnp.asarray(x)).last_hidden_state.shape[1]
    mti = np.zeros((2, frames), bool)
    mti[0, 10:30] = True
    mti[1, 50:60] = True
    tout = run_torch(tmodel, x, mask_time_indices=torch.tensor(mti))
    jout = jmodel(jnp.asarray(x), mask_time_indices=jnp.asarray(mti))
    assert max_diff(tout.last_hidden_state, jout.last_hidden_state) < TOL
    # and the mask changes the output (the vector is really used)
    assert max_diff(jmodel(jnp.asarray(x)).last_hidden_state, jout.last_hidden_state) > 1e-3


def _labels_for(head, config, frames, rng):
    if head == "ForCTC":
        labels = rng.randint(1, config.vocab_size, size=(2, 9))
        labels[1, 6:] = -100
        return labels
    if head == "ForAudioFrameClassification":
        return rng.rand(2, frames, config.num_labels).astype(np.float32)
    return rng.randint(0, config.num_labels, size=(2,))


HEAD_CASES = [(f, h, w) for f in FAMILIES for h in HEADS[f] if h != "Model"
              for w in ((False, True) if h != "ForCTC" else (False,))]


@pytest.mark.parametrize("family,head,weighted", HEAD_CASES)
def test_heads_logits_loss_and_embeddings(family, head, weighted):
    tmodel, jmodel, config = build_pair(family, head, use_weighted_layer_sum=weighted)
    x, mask = audio(pad_to=(4000, 3100))
    frames = jmodel.base_model(jnp.asarray(x)).last_hidden_state.shape[1]
    labels = _labels_for(head, config, frames, np.random.RandomState(3))
    tout = run_torch(tmodel, x, mask, labels=torch.tensor(labels), output_hidden_states=True)
    jout = jmodel(jnp.asarray(x), attention_mask=jnp.asarray(mask), labels=jnp.asarray(labels),
                  output_hidden_states=True)
    assert jout.logits.shape == tuple(tout.logits.shape)
    assert max_diff(tout.logits, jout.logits) < TOL
    assert abs(float(tout.loss) - float(jout.loss)) < TOL * max(1.0, abs(float(tout.loss)))
    if head == "ForXVector":
        assert max_diff(tout.embeddings, jout.embeddings) < TOL
    for a, b in zip(tout.hidden_states, jout.hidden_states):
        assert max_diff(a, b) < TOL
    # unpadded batch too
    x2, _ = audio(seed=5)
    assert max_diff(run_torch(tmodel, x2).logits, jmodel(jnp.asarray(x2)).logits) < TOL


@pytest.mark.parametrize("family", ("hubert", "wavlm"))
def test_ctc_mean_reduction_and_zero_infinity(family):
    tmodel, jmodel, config = build_pair(family, "ForCTC", ctc_loss_reduction="mean", ctc_zero_infinity=True)
    x, mask = audio(pad_to=(4000, 1200))
    labels = np.random.RandomState(0).randint(1, config.vocab_size, size=(2, 120))  # too long for row 2: inf
    labels[0, 20:] = -100
    tloss = float(run_torch(tmodel, x, mask, labels=torch.tensor(labels)).loss)
    jloss = float(jmodel(jnp.asarray(x), attention_mask=jnp.asarray(mask), labels=jnp.asarray(labels)).loss)
    assert np.isfinite(jloss)
    assert abs(tloss - jloss) < TOL * max(1.0, abs(tloss))


def test_conv_pos_batch_norm_training_mode_uses_batch_statistics_and_updates_running_ones():
    # all dropouts off so torch's train() forward is deterministic; BatchNorm is the only train-mode change
    off = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
               layerdrop=0.0, mask_time_prob=0.0, conv_pos_batch_norm=True)  # no SpecAugment either
    tmodel, jmodel, _ = build_pair("hubert", **off)
    tmodel.train()
    x, mask = audio(pad_to=(4000, 3000))
    tout = run_torch(tmodel, x, mask)
    jout = jmodel(jnp.asarray(x), attention_mask=jnp.asarray(mask), deterministic=False,
                  dropout_rng=__import__("jax").random.key(0))
    assert max_diff(tout.last_hidden_state, jout.last_hidden_state) < TOL
    bn_t, bn_j = tmodel.encoder.pos_conv_embed.batch_norm, jmodel.encoder.pos_conv_embed.batch_norm
    assert max_diff(bn_t.running_mean, bn_j.mean[...]) < 1e-5
    assert max_diff(bn_t.running_var, bn_j.var[...]) < 1e-4


def test_loaded_weights_do_not_share_memory_with_torch_or_numpy():
    from hubert_jax.weights.state import load_flat, model_to_flat

    tmodel, jmodel, _ = build_pair("hubert")
    before = np.asarray(jmodel.encoder.layer_norm.scale[...]).copy()
    with torch.no_grad():
        tmodel.encoder.layer_norm.weight.add_(1.0)  # in place, as an optimizer step would
    np.testing.assert_array_equal(np.asarray(jmodel.encoder.layer_norm.scale[...]), before)
    flat = {k: v.copy() for k, v in model_to_flat(jmodel).items()}
    load_flat(jmodel, flat)
    flat["encoder.layer_norm.scale"] += 1.0
    np.testing.assert_array_equal(np.asarray(jmodel.encoder.layer_norm.scale[...]), before)


@pytest.mark.parametrize("stable", [False, True])
def test_wav2vec2_pretraining_head(stable):
    # codebook of 2 groups x 8 entries and a small tiny-model projection; negatives given as indices
    tmodel, jmodel, config = build_pair("wav2vec2", "ForPreTraining", do_stable_layer_norm=stable,
                                        num_codevector_groups=2, num_codevectors_per_group=8, codevector_dim=16,
                                        proj_codevector_dim=12, num_negatives=5)
    x, mask = audio(pad_to=(4000, 3300))
    frames = jmodel.base_model(jnp.asarray(x)).last_hidden_state.shape[1]
    rng = np.random.RandomState(0)
    mti = rng.rand(2, frames) < 0.3
    neg = rng.randint(0, frames, size=(2, frames, 5)) + np.arange(2)[:, None, None] * frames
    tout = run_torch(tmodel, x, mask, mask_time_indices=torch.tensor(mti),
                     sampled_negative_indices=torch.tensor(neg))
    jout = jmodel(jnp.asarray(x), attention_mask=jnp.asarray(mask), mask_time_indices=jnp.asarray(mti),
                  sampled_negative_indices=jnp.asarray(neg))
    assert max_diff(tout.projected_states, jout.projected_states) < TOL
    assert max_diff(tout.projected_quantized_states, jout.projected_quantized_states) < TOL
    assert abs(float(tout.codevector_perplexity) - float(jout.codevector_perplexity)) < TOL
    for name in ("contrastive_loss", "diversity_loss", "loss"):
        a, b = float(getattr(tout, name)), float(getattr(jout, name))
        assert abs(a - b) < TOL * max(1.0, abs(a)), name


def test_wav2vec2_pretraining_training_mode_runs_and_differentiates():
    import jax
    from flax import nnx

    _, jmodel, _ = build_pair("wav2vec2", "ForPreTraining", num_codevector_groups=2, num_codevectors_per_group=8,
                              codevector_dim=16, proj_codevector_dim=12)
    x, _ = audio()
    frames = jmodel.base_model(jnp.asarray(x)).last_hidden_state.shape[1]
    mti = jnp.asarray(np.random.RandomState(1).rand(2, frames) < 0.3)
    neg = jnp.asarray(np.random.RandomState(2).randint(0, 2 * frames, size=(2, frames, 4)))

    def loss(model):
        return model(jnp.asarray(x), mask_time_indices=mti, sampled_negative_indices=neg, deterministic=False,
                     dropout_rng=jax.random.key(0)).loss

    value, grads = nnx.value_and_grad(loss)(jmodel)
    assert np.isfinite(float(value))
    g = grads.quantizer.weight_proj.kernel.get_value()
    assert float(jnp.abs(g).sum()) > 0  # straight-through estimator reaches the codebook logits
