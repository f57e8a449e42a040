"""HuBERT masked prediction: span masking with fairseq's semantics, and the head and loss against fairseq's
formulas evaluated in PyTorch on a transformers HubertModel with the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hubert_jax.config import HubertConfig, preset
from hubert_jax.weights.state import load_torch_state_dict
from hubert_jax.masking import span_mask
from hubert_jax.models.pretraining_hubert import (
    HeadConfig,
    HubertForPreTraining,
    LossWeights,
    frames_for_labels,
    pretraining_loss,
)
from tests.reference import audio, torch_config


def fairseq_mask_numpy(rng, shape, padding, mask_prob, mask_length, min_masks):
    """fairseq's compute_mask_indices (static lengths, overlap allowed, require_same_masks), as its text
    reads, driven by a NumPy generator: the distribution the JAX version must reproduce."""
    bsz, all_sz = shape
    all_num = max(min_masks, int(mask_prob * all_sz / float(mask_length) + rng.random()))
    idcs = []
    for i in range(bsz):
        if padding is not None:
            sz = all_sz - int(padding[i].sum())
            num = max(min_masks, int(mask_prob * sz / float(mask_length) + rng.random()))
        else:
            sz, num = all_sz, all_num
        min_len = mask_length
        if sz - min_len <= num:
            min_len = sz - num - 1
        starts = rng.choice(sz - min_len, num, replace=False)
        idc = np.asarray([s + o for s in starts for o in range(mask_length)])
        idcs.append(np.unique(idc[idc < sz]))
    least = min(len(m) for m in idcs)
    mask = np.zeros(shape, bool)
    for i, idc in enumerate(idcs):
        mask[i, rng.choice(idc, least, replace=False) if len(idc) > least else idc] = True
    return mask


@pytest.mark.parametrize("lengths", [None, (200, 150, 90, 40)])
def test_span_mask_matches_fairseq_distribution(lengths):
    shape, draws = (4, 200), 1200
    padding = None if lengths is None else np.arange(200)[None, :] >= np.asarray(lengths)[:, None]
    rng = np.random.default_rng(0)
    ref = np.stack([fairseq_mask_numpy(rng, shape, padding, 0.8, 10, 2) for _ in range(draws)])
    fn = jax.jit(jax.vmap(lambda k: span_mask(k, shape, mask_prob=0.8, mask_length=10, min_masks=2,
                                              lengths=None if lengths is None else jnp.asarray(lengths))))
    ours = np.asarray(fn(jax.random.split(jax.random.key(0), draws)))
    # every row masks the same number of frames, never past its length
    counts = ours.sum(-1)
    assert (counts == counts[:, :1]).all()
    if lengths is not None:
        assert not (ours & padding[None]).any()
    # masked count per row and masked rate per position agree with fairseq's algorithm
    assert abs(counts.mean() - ref.sum(-1).mean()) < 0.03 * ref.sum(-1).mean()
    per_position = ours.mean(0)
    ref_position = ref.mean(0)
    windows = lambda a: a.reshape(4, 20, 10).mean(-1)
    assert np.abs(windows(per_position) - windows(ref_position)).max() < 0.06
    assert abs(per_position.mean() - ref_position.mean()) < 0.01
    # the same key gives the same mask; a different one does not
    np.testing.assert_array_equal(fn(jax.random.split(jax.random.key(0), 2)), ours[:2])
    assert (np.asarray(fn(jax.random.split(jax.random.key(1), 2))) != ours[:2]).any()


def test_frames_for_labels_follows_fairseq_forward_targets():
    config = HubertConfig()  # 320x downsampling
    assert (frames_for_labels(config, HeadConfig(label_rate=100), 49, 100) == np.arange(49) * 2).all()
    assert len(frames_for_labels(config, HeadConfig(label_rate=100), 50, 97)) == 48  # features cut to the labels
    assert (frames_for_labels(config, HeadConfig(label_rate=50), 49, 49) == np.arange(49)).all()


def build(seed=0, label_rate=1600.0, num_classes=(7,), untie=False, **overrides):
    torch.manual_seed(seed)
    tcfg = torch_config("hubert", mask_time_prob=0.05, **overrides)
    import transformers

    tmodel = transformers.HubertModel(tcfg).eval()
    config = HubertConfig.from_dict(tcfg.to_dict())
    head = HeadConfig(num_classes=num_classes, final_dim=12, logit_temp=0.1, untie_final_proj=untie,
                      label_rate=label_rate)
    model = HubertForPreTraining(config, head, rngs=nnx.Rngs(seed))
    load_torch_state_dict(model.hubert, tmodel.state_dict())
    return tmodel, model


def fairseq_logits_torch(proj, target, label_embs, temp):
    """fairseq HubertModel.compute_pred + compute_nce: positive first, all embeddings as negatives."""
    pos = label_embs[target]
    negs = label_embs.unsqueeze(1).expand(-1, proj.size(0), -1)
    neg_is_pos = (pos == negs).all(-1)
    targets = torch.cat([pos.unsqueeze(0), negs], dim=0)
    logits = torch.cosine_similarity(proj.float(), targets.float(), dim=-1) / temp
    logits[1:][neg_is_pos] = float("-inf")
    return logits.transpose(0, 1)


@pytest.mark.parametrize("padded", [False, True])
def test_loss_matches_fairseq_formulas_in_torch(padded):
    tmodel, model = build()
    x, attn = audio(batch=2, samples=4000, pad_to=(4000, 2600) if padded else None)
    frames = 199  # (4000 samples through strides 5,2,2)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (2, 2 * frames + 3))  # ratio 2: label_rate 1600 over 800 Hz features
    mask = np.asarray(span_mask(jax.random.key(3), (2, frames), mask_prob=0.5, mask_length=4))
    out = model(jnp.asarray(x), jnp.asarray(labels), None if attn is None else jnp.asarray(attn),
                mask_time_indices=jnp.asarray(mask))
    loss, metrics = pretraining_loss(out, LossWeights(masked=1.0, unmasked=0.5, features_pen=10.0))

    with torch.no_grad():
        tx = torch.tensor(x)
        conv = tmodel.feature_extractor(tx).transpose(1, 2)
        pen = conv.float().pow(2).mean()
        hidden = tmodel(tx, attention_mask=None if attn is None else torch.tensor(attn),
                        mask_time_indices=torch.tensor(mask)).last_hidden_state
        w = torch.tensor(np.asarray(model.final_proj.kernel[...]).T.copy())
        b = torch.tensor(np.asarray(model.final_proj.bias[...]))
        proj = hidden @ w.T + b
        embs = torch.tensor(np.asarray(model.label_embs_concat[...]))
        target = torch.tensor(labels[:, ::2][:, :frames])
        valid = torch.ones(2, frames, dtype=torch.bool)
        if attn is not None:
            valid[1, tmodel._get_feat_extract_output_lengths(torch.tensor(2600)):] = False
        tm = torch.tensor(mask) & valid
        tu = ~torch.tensor(mask) & valid
        lm = torch.nn.functional.cross_entropy(fairseq_logits_torch(proj[tm], target[tm], embs, 0.1),
                                               torch.zeros(int(tm.sum()), dtype=torch.long), reduction="sum")
        lu = torch.nn.functional.cross_entropy(fairseq_logits_torch(proj[tu], target[tu], embs, 0.1),
                                               torch.zeros(int(tu.sum()), dtype=torch.long), reduction="sum")
        sample_size = int(tm.sum()) + int(tu.sum())  # fairseq adds the unmasked frames when they are scored
        expected = (lm + 0.5 * lu + 10.0 * pen * sample_size) / sample_size
        correct_m = (fairseq_logits_torch(proj[tm], target[tm], embs, 0.1).argmax(-1) == 0).sum()

    assert int(metrics["masked_frames"]) == int(tm.sum())
    assert abs(float(out.features_pen) - float(pen)) < 1e-4 * float(pen)
    assert abs(float(loss) - float(expected)) < 1e-4 * float(expected)
    assert int(metrics["correct_m"]) == int(correct_m)
    # logits over the K embeddings equal fairseq's (positive, negatives) logits with the -inf removed
    ours = np.asarray(out.logits[0])[np.asarray(tm)]
    ref = fairseq_logits_torch(proj[tm], target[tm], embs, 0.1).numpy()
    np.testing.assert_allclose(ours[np.arange(len(ours)), target[tm].numpy()], ref[:, 0], atol=1e-4)


def test_untied_heads_score_each_label_set_with_its_own_slice():
    _, model = build(num_classes=(5, 9), untie=True)
    x, _ = audio(batch=2, samples=4000)
    labels = [np.zeros((2, 398), np.int64), np.ones((2, 398), np.int64)]
    out = model(jnp.asarray(x), [jnp.asarray(a) for a in labels], mask_rng=jax.random.key(0), mask_prob=0.5,
                mask_length=4)
    assert out.logits[0].shape == (2, 199, 5) and out.logits[1].shape == (2, 199, 9)
    loss, metrics = pretraining_loss(out)
    assert np.isfinite(float(loss)) and "correct_m_1" in metrics
    with pytest.raises(ValueError, match="1 label sets given, the heads have 2"):
        model(jnp.asarray(x), labels[:1], mask_rng=jax.random.key(0))


@pytest.mark.xla_defaults("x * m + stop_gradient(x) * (1 - m) rounds the forward pass for each m; the "
                          "tolerance above the feature encoder was set on the default compiler's rounding")
def test_feature_grad_mult_scales_the_feature_encoder_gradient():
    _, model = build(num_hidden_layers=1)
    x, _ = audio(batch=2, samples=4000)
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 7, (2, 398)))

    def conv_grad(mult):
        def loss_fn(m):
            out = m(jnp.asarray(x), labels, mask_rng=jax.random.key(0), feature_grad_mult=mult)
            return pretraining_loss(out)[0]
        grads = nnx.grad(loss_fn)(model)
        return np.asarray(grads.hubert.feature_extractor.conv_layers[0].conv.kernel[...]), grads

    full, grads_full = conv_grad(1.0)
    tenth, grads_tenth = conv_grad(0.1)
    none, _ = conv_grad(0.0)
    scale = np.abs(full).max()
    assert scale > 0
    # scaling the incoming gradient by 0.1 (not a power of two) changes the rounding of the per-tap kernel
    # gradient: entries that nearly cancel (1e-5 of the largest) keep the rounding error of the large terms,
    # so the absolute floor follows the gradient's scale
    np.testing.assert_allclose(tenth, 0.1 * full, rtol=1e-4, atol=1e-6 * 0.1 * scale)
    assert np.abs(none).max() == 0
    # above the feature encoder nothing changes
    np.testing.assert_allclose(np.asarray(grads_tenth.final_proj.kernel[...]),
                               np.asarray(grads_full.final_proj.kernel[...]), rtol=1e-5, atol=1e-8)


def test_needs_mask_embedding_and_known_head_keys():
    config = HubertConfig.from_dict(torch_config("hubert", mask_time_prob=0.0).to_dict())
    with pytest.raises(ValueError, match="mask_time_prob"):
        HubertForPreTraining(config, HeadConfig())
    with pytest.raises(ValueError, match=r"unknown keys \['final_dimm'\]"):
        HeadConfig.from_dict({"final_dimm": 3})
    assert HeadConfig.from_dict({"num_label_embeddings": 504, "final_dim": 256}).num_classes == (504,)


def test_label_offset_scores_label_k_against_embedding_row_k_plus_offset():
    """fairseq checkpoints keep 4 dictionary specials before the clusters: with label_offset=4, label k
    is scored against row k + 4, the same as shifting the labels by hand."""
    import dataclasses

    _, model = build(num_classes=(11,), num_hidden_layers=1)
    x, _ = audio(batch=2, samples=4000)
    labels = np.random.default_rng(0).integers(0, 7, (2, 398))
    mask = span_mask(jax.random.key(1), (2, 199), mask_prob=0.5, mask_length=4)
    shifted = model(jnp.asarray(x), jnp.asarray(labels + 4), mask_time_indices=mask)
    model.head = dataclasses.replace(model.head, label_offset=4)
    offset = model(jnp.asarray(x), jnp.asarray(labels), mask_time_indices=mask)
    np.testing.assert_array_equal(np.asarray(offset.targets[0]), np.asarray(shifted.targets[0]))
    assert float(pretraining_loss(offset)[0]) == float(pretraining_loss(shifted)[0])
    with pytest.raises(ValueError, match="label_offset"):
        HeadConfig(label_offset=-1)


def test_save_and_from_pretrained_keep_the_heads_beside_the_encoder(tmp_path):
    """One path for the heads: save_pretrained writes the encoder as a base model's directory and the heads
    beside it; FlaxAutoModelForPreTraining reads both back; a base-model loader reads the encoder alone."""
    import json

    from hubert_jax.weights.files import read_safetensors
    from hubert_jax.auto import FlaxAutoModel, FlaxAutoModelForPreTraining

    config = preset("hubert-base").replace(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=8,
                                           num_conv_pos_embedding_groups=4)
    head = HeadConfig(num_classes=(7, 5), final_dim=8, untie_final_proj=True, label_offset=4, label_rate=50.0)
    model = HubertForPreTraining(config, head, rngs=nnx.Rngs(3))
    model.save_pretrained(tmp_path / "out")
    assert sorted(read_safetensors(str(tmp_path / "out" / "pretraining_heads.safetensors"))) == [
        "final_proj.bias", "final_proj.kernel", "label_embs_concat"]
    assert not any(k.startswith("hubert.") or k.startswith("final_proj")
                   for k in read_safetensors(str(tmp_path / "out" / "flax_model.safetensors")))
    saved = json.load(open(tmp_path / "out" / "config.json"))
    assert saved["architectures"] == ["HubertModel"] and saved["hubert_pretraining"]["num_classes"] == [7, 5]
    back = FlaxAutoModelForPreTraining.from_pretrained(str(tmp_path / "out"))
    assert isinstance(back, HubertForPreTraining) and back.head == head
    want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    got = nnx.to_pure_dict(nnx.state(back, nnx.Param))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    encoder = FlaxAutoModel.from_pretrained(str(tmp_path / "out"))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8000)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(encoder(x).last_hidden_state),
                                  np.asarray(model.base_model(x).last_hidden_state))
