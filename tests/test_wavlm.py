"""WavLM's denoising masked prediction: the mixer's statistics over many draws, mixed batches keep the
primary's labels and are the same on any number of hosts and after a resume, the loss is HuBERT's
criterion on WavLM features, and a trained export loads in transformers' WavLMModel and converts back."""

import dataclasses
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hubert_jax.data.mixing import MixConfig, Mixer, mix_rng
from hubert_jax.data.pipeline import DataConfig, LabeledAudio, make_dataset, make_iterator
from hubert_jax.training.run import run
from tests import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "demo")


def _row(values):
    return {"input_values": np.asarray(values, np.float32), "attention_mask": np.ones(len(values), np.int32),
            "labels": np.arange(len(values) // 160, dtype=np.int32)[None]}


def test_mixer_draws_the_paper_probability_length_bound_and_energy_ratio():
    rng = np.random.default_rng(0)
    rows = [_row(rng.standard_normal(16000) * (1 + i)) for i in range(8)]
    mixer = Mixer(MixConfig(prob=0.2, max_share=0.5, energy_db=(-5.0, 5.0)))
    draws, ratios, lengths = 4000, [], []
    for position in range(draws):
        row = position % 8
        out = mixer.mix(rows[row], row, 8, mix_rng(1, position), lambda j: rows[j])
        added = out["input_values"] - rows[row]["input_values"]
        np.testing.assert_array_equal(out["labels"], rows[row]["labels"])
        np.testing.assert_array_equal(out["attention_mask"], rows[row]["attention_mask"])
        if out["mixed"]:
            segment = np.flatnonzero(added)
            lengths.append(segment[-1] - segment[0] + 1)
            assert len(segment) == lengths[-1]  # one contiguous segment
            primary = np.mean(rows[row]["input_values"].astype(np.float64) ** 2)
            ratios.append(10 * np.log10(primary / np.mean(added[segment].astype(np.float64) ** 2)))
        else:
            assert not added.any()
    share = len(ratios) / draws
    assert abs(share - 0.2) < 4 * np.sqrt(0.2 * 0.8 / draws)  # ~ 0.025
    assert max(lengths) < 8000 and max(lengths) > 7000  # shorter than half the primary, up to it
    ratios = np.asarray(ratios)
    assert ratios.min() >= -5 - 1e-3 and ratios.max() <= 5 + 1e-3
    # uniform on [-5, 5]: quartiles near -2.5, 0, 2.5
    np.testing.assert_allclose(np.percentile(ratios, [25, 50, 75]), [-2.5, 0.0, 2.5], atol=0.6)


def test_mixer_with_noise_files_uses_their_ratio_range(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(1)
    sf.write(tmp_path / "noise.wav", rng.standard_normal(48000).astype(np.float32) * 0.1, 16000)
    (tmp_path / "noise.tsv").write_text(f"{tmp_path}\nnoise.wav\t48000\n")
    mixer = Mixer(MixConfig(prob=1.0, noise_manifest=str(tmp_path / "noise.tsv"), noise_prob=1.0,
                            noise_db=(10.0, 10.0)))
    primary = _row(rng.standard_normal(16000))
    out = mixer.mix(primary, 0, 8, mix_rng(0, 0), lambda j: pytest.fail("no partner with noise_prob=1"))
    added = out["input_values"] - primary["input_values"]
    segment = np.flatnonzero(added)
    ratio = 10 * np.log10(np.mean(primary["input_values"] ** 2) / np.mean(added[segment] ** 2))
    assert abs(ratio - 10.0) < 1e-2  # float32 sums
    with pytest.raises(ValueError, match="config.mix.noise_prob > 0 needs config.mix.noise_manifest"):
        MixConfig(noise_prob=0.1)


def _demo_config(**kw):
    return DataConfig(manifest=os.path.join(DEMO, "train.tsv"), labels=(os.path.join(DEMO, "train.phn"),),
                      label_rate=100.0, crop_samples=16000, min_samples=16000, **kw)


@pytest.mark.parametrize("bucketed", [False, True])
def test_mixed_batches_keep_the_primary_labels_and_are_the_same_on_two_hosts(bucketed):
    extra = dict(buckets=(16000, 32000), max_tokens=8 * 32000) if bucketed else {}
    clean_cfg = _demo_config(**extra)
    mixed_cfg = dataclasses.replace(clean_cfg, mix=MixConfig(prob=0.5))
    source = LabeledAudio(clean_cfg)
    kw = dict(batch_size=8, seed=3, data_shards=2)
    clean, mixed = make_dataset(source, clean_cfg, **kw), make_dataset(source, mixed_cfg, **kw)
    parts = [make_dataset(source, mixed_cfg, process_index=h, process_count=2, **kw) for h in range(2)]
    changed = 0
    for b in range(6):
        np.testing.assert_array_equal(mixed[b]["labels"], clean[b]["labels"])
        np.testing.assert_array_equal(mixed[b]["attention_mask"], clean[b]["attention_mask"])
        differs = np.any(mixed[b]["input_values"] != clean[b]["input_values"], axis=1)
        np.testing.assert_array_equal(differs, mixed[b]["mixed"] == 1)
        changed += int(differs.sum())
        for key in ("input_values", "labels", "mixed"):
            np.testing.assert_array_equal(np.concatenate([p[b][key] for p in parts]), mixed[b][key])
    assert 0 < changed < 6 * mixed[0]["labels"].shape[0]


def test_a_resumed_iterator_mixes_what_an_uninterrupted_one_does():
    cfg = dataclasses.replace(_demo_config(), mix=MixConfig(prob=0.5))
    source = LabeledAudio(cfg)
    reference = make_iterator(source, cfg, batch_size=8, seed=5, num_threads=1)
    batches = [next(reference) for _ in range(4)]
    first = make_iterator(source, cfg, batch_size=8, seed=5, num_threads=1)
    next(first), next(first)
    state = first.get_state()
    resumed = make_iterator(source, cfg, batch_size=8, seed=5, num_threads=1)
    resumed.set_state(state)
    for want in batches[2:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["input_values"], want["input_values"])


def _tiny_wavlm():
    from hubert_jax.config import preset

    return preset("wavlm-base-plus").replace(**tiny_config.TINY_MODEL, hidden_dropout=0.0, attention_dropout=0.0,
                                             activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
                                             num_buckets=16, max_bucket_distance=40)


def test_the_loss_is_hubert_criterion_on_wavlm_features():
    from flax import nnx

    from hubert_jax.models.pretraining_hubert import (HeadConfig, HubertForPreTraining, LossWeights,
                                                      pretraining_loss)

    head = HeadConfig(num_classes=(20,), final_dim=8, label_rate=50.0)
    model = HubertForPreTraining(_tiny_wavlm(), head, rngs=nnx.Rngs(0))
    assert type(model.base_model).__name__ == "WavLMModel" and model.base_model_prefix == "wavlm"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16000)).astype(np.float32)
    frames = 49
    labels = rng.integers(0, 20, (2, frames)).astype(np.int32)
    mask = rng.random((2, frames)) < 0.4
    out = model(jnp.asarray(x), [jnp.asarray(labels)], mask_time_indices=jnp.asarray(mask))
    loss, _ = pretraining_loss(out, LossWeights(masked=1.0, unmasked=0.5, features_pen=10.0))
    # by hand: the WavLM encoder's last hidden state with the same frames masked, fairseq's scoring
    hidden = np.asarray(model.base_model(jnp.asarray(x), mask_time_indices=jnp.asarray(mask)).last_hidden_state)
    proj = hidden @ np.asarray(model.final_proj.kernel[...]) + np.asarray(model.final_proj.bias[...])
    emb = np.asarray(model.label_embs_concat[...])
    cos = (proj / np.linalg.norm(proj, axis=-1, keepdims=True)) @ (emb / np.linalg.norm(emb, axis=-1,
                                                                                       keepdims=True)).T
    logits = cos / head.logit_temp
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    features = np.asarray(model.base_model.feature_extractor(jnp.asarray(x)))
    expected = (nll[mask].sum() + 0.5 * nll[~mask].sum()) / mask.size + 10.0 * np.mean(features ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def wavlm_run(tmp_path_factory):
    cfg = tiny_config.shrink(importlib.import_module("configs.wavlm_base_plus").get_config(), steps=4)
    cfg.model.overrides.update(dict(num_buckets=16, max_bucket_distance=40))
    cfg.model.head.num_classes = (92,)
    cfg.model.head.label_rate = 100.0
    cfg.mix.prob = 0.5
    workdir = tmp_path_factory.mktemp("wavlm")
    return run(cfg, str(workdir / "run")), workdir


@pytest.mark.xdist_group("wavlm_run")  # one worker runs the fixture's users: it trains once
def test_wavlm_trains_through_the_loop_and_logs_the_mixed_share(wavlm_run):
    result, workdir = wavlm_run
    assert result.step == 4 and result.skipped_steps == 0 and np.isfinite(result.valid["loss"])
    lines = [json.loads(x) for x in open(workdir / "run" / "metrics.jsonl")]
    train = [x for x in lines if x["split"] == "train"]
    assert all("mixed" in x and 0.0 <= x["mixed"] <= 1.0 for x in train)
    assert any(x["mixed"] > 0 for x in train)
    assert json.load(open(workdir / "run" / "config.json"))["task"] == "wavlm"


@pytest.mark.xdist_group("wavlm_run")
def test_the_export_loads_in_transformers_wavlm_and_converts_back(wavlm_run, tmp_path):
    import torch
    import transformers

    from hubert_jax.auto import FlaxAutoModel, FlaxAutoModelForPreTraining

    result, _ = wavlm_run
    exported = result.trainer.export(result.state, str(tmp_path / "export"))
    trained = result.trainer.host_model(result.state)
    x = np.random.default_rng(0).standard_normal((1, 24000)).astype(np.float32)
    want = np.asarray(trained.base_model(jnp.asarray(x)).last_hidden_state)
    tmodel = transformers.WavLMModel.from_pretrained(exported).eval()
    with torch.no_grad():
        got = tmodel(torch.from_numpy(x)).last_hidden_state.numpy()
    assert np.abs(got - want).max() < 1e-4
    # back: transformers' own save, read by hubert-jax; and our directory with its heads
    tmodel.save_pretrained(tmp_path / "torch")
    again = FlaxAutoModel.from_pretrained(str(tmp_path / "torch"))
    assert np.abs(np.asarray(again(jnp.asarray(x)).last_hidden_state) - want).max() < 1e-4
    full = FlaxAutoModelForPreTraining.from_pretrained(exported)
    assert full.head == trained.head
    for a, b in zip(jax.tree.leaves(nnx_params(full)), jax.tree.leaves(nnx_params(trained))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def nnx_params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
