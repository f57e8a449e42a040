"""wav2vec 2.0 / XLSR contrastive pretraining: the task's loss against fairseq's criterion on a fixture
fairseq wrote (scripts/make_peer_fixtures.py) and against transformers' contrastive loss, the distractors,
the Gumbel schedule, the language sampler, a run through the loop (resumed exactly), its export in
transformers' Wav2Vec2ForPreTraining, and CTC fine-tuning from it."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hubert_jax.masking import sample_negatives
from hubert_jax.training.config import pretraining_defaults
from hubert_jax.training.run import run
from hubert_jax.training.tasks import make_task
from hubert_jax.training.tasks.wav2vec2 import gumbel_temperature
from tests import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "tests", "fixtures", "peer", "wav2vec2")
DEMO = os.path.join(ROOT, "data", "demo")


def _task_for(model, **cfg_kw):
    cfg = pretraining_defaults()
    cfg.task, cfg.model.preset = "wav2vec2", "wav2vec2-base"
    for key, value in cfg_kw.items():
        cfg.loss[key] = value
    task = make_task(cfg)
    task.setup(model, None, None)
    return task


def test_the_loss_equals_fairseq_wav2vec_criterion_on_its_own_checkpoint(tmp_path):
    """criterion.npz: fairseq's loss (infonce, loss_weights [0.1, 10]) on two crops, eval mode, with the masks
    and distractors fairseq drew; our task's loss on the converted checkpoint, same masks and distractors."""
    from hubert_jax.convert.original import convert_original_checkpoint
    from hubert_jax.auto import FlaxAutoModelForPreTraining

    ref = np.load(os.path.join(PEER, "criterion.npz"))
    convert_original_checkpoint(os.path.join(PEER, "checkpoint_last.pt"), tmp_path / "model")
    model = FlaxAutoModelForPreTraining.from_pretrained(str(tmp_path / "model"))
    assert model.config.num_negatives == 10  # fairseq's num_negatives travels with the conversion
    task = _task_for(model, features_pen=10.0)
    batch = {"input_values": jnp.asarray(ref["source"]), "attention_mask": jnp.ones(ref["source"].shape, jnp.int32)}
    loss, metrics = task.loss(model, batch, jnp.asarray(ref["mask"]), jnp.asarray(ref["negatives"]),
                              temperature=float(ref["temp"]), deterministic=True)
    n = int(ref["sample_size"])
    assert int(metrics["masked_frames"]) == n
    np.testing.assert_allclose(float(loss) * n, float(ref["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["contrastive"]) * n, float(ref["loss_0"]), rtol=1e-5)
    np.testing.assert_allclose(0.1 * float(metrics["diversity"]) * n, float(ref["loss_1"]), rtol=1e-4)
    np.testing.assert_allclose(10 * float(metrics["features_pen"]) * n, float(ref["loss_2"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["prob_perplexity"]), float(ref["prob_perplexity"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["code_perplexity"]), float(ref["code_perplexity"]), rtol=1e-5)
    assert int(metrics["correct"]) == int(ref["correct"])


def test_the_contrastive_loss_equals_transformers_with_the_same_masks_and_negatives():
    import torch

    from tests.reference import audio, build_pair, run_torch

    tmodel, jmodel, _ = build_pair("wav2vec2", "ForPreTraining", num_codevector_groups=2, num_codevectors_per_group=8,
                                   codevector_dim=16, proj_codevector_dim=12, num_negatives=5)
    x, _ = audio()
    frames = jmodel.base_model(jnp.asarray(x)).last_hidden_state.shape[1]
    mask = np.random.RandomState(0).rand(2, frames) < 0.4
    negatives = np.asarray(sample_negatives(jax.random.key(3), jnp.asarray(mask), 5))
    tout = run_torch(tmodel, x, mask_time_indices=torch.tensor(mask), sampled_negative_indices=torch.tensor(negatives))
    task = _task_for(jmodel, features_pen=0.0, feature_grad_mult=1.0)
    batch = {"input_values": jnp.asarray(x), "attention_mask": jnp.ones(x.shape, jnp.int32)}
    _, metrics = task.loss(jmodel, batch, jnp.asarray(mask), jnp.asarray(negatives), temperature=2.0,
                           deterministic=True)
    n = mask.sum()
    np.testing.assert_allclose(float(metrics["contrastive"]) * n, float(tout.contrastive_loss), rtol=1e-4)
    # transformers' eval perplexity is the hard-assignment one, fairseq's "code" perplexity
    np.testing.assert_allclose(float(metrics["code_perplexity"]), float(tout.codevector_perplexity), rtol=1e-4)


def test_a_row_with_one_masked_frame_has_no_distractors_and_is_not_scored():
    """fairseq counts such a frame as correct (its distractors all equal the positive): accuracy 1.0, loss 0."""
    from tests.reference import audio, build_pair

    _, jmodel, _ = build_pair("wav2vec2", "ForPreTraining", num_codevector_groups=2, num_codevectors_per_group=8,
                              codevector_dim=16, proj_codevector_dim=12, num_negatives=5)
    x, _ = audio()
    frames = jmodel.base_model(jnp.asarray(x)).last_hidden_state.shape[1]
    task = _task_for(jmodel, features_pen=0.0, feature_grad_mult=1.0)
    batch = {"input_values": jnp.asarray(x), "attention_mask": jnp.ones(x.shape, jnp.int32)}
    lonely = np.zeros((2, frames), bool)
    lonely[:, 3] = True  # every row: one masked frame
    negatives = sample_negatives(jax.random.key(3), jnp.asarray(lonely), 5)
    _, metrics = task.loss(jmodel, batch, jnp.asarray(lonely), negatives, temperature=2.0, deterministic=True)
    assert int(metrics["scored_frames"]) == 0 and int(metrics["correct"]) == 0 and float(metrics["accuracy"]) == 0.0
    assert task.summarize([jax.device_get(metrics)])["accuracy"] == 0.0
    mixed = lonely.copy()
    mixed[1, 5:9] = True  # row 1 has 5 masked frames: only they are scored
    negatives = sample_negatives(jax.random.key(3), jnp.asarray(mixed), 5)
    _, metrics = task.loss(jmodel, batch, jnp.asarray(mixed), negatives, temperature=2.0, deterministic=True)
    assert int(metrics["scored_frames"]) == 5 and int(metrics["masked_frames"]) == 6
    assert 0 <= int(metrics["correct"]) <= 5


@pytest.mark.parametrize("edit,message", [
    (dict(mask_prob=0.0), r"config.masking.mask_prob=0.0: wav2vec 2.0 predicts the masked frames"),
    (dict(mask_length=1, min_masks=1), r"config.masking: mask_length 1 with min_masks 1 can leave a row with one "
                                       r"masked frame"),
    (dict(num_negatives=0), r"model num_negatives=0: the contrastive loss needs distractors"),
])
def test_settings_that_give_no_distractors_are_refused_at_start(edit, message):
    cfg = importlib.import_module("configs.wav2vec2_base").get_config()
    if "num_negatives" in edit:
        cfg.model.overrides.update(edit)
    else:
        cfg.masking.update(edit)
    with pytest.raises(ValueError, match=message):
        make_task(cfg)


def test_distractors_come_from_the_other_masked_frames_of_the_same_utterance():
    rng = np.random.default_rng(0)
    mask = rng.random((3, 60)) < 0.3
    mask[2] = False
    mask[2, [4, 5]] = True
    negatives = np.asarray(sample_negatives(jax.random.key(1), jnp.asarray(mask), 50))
    for b in range(3):
        masked = np.flatnonzero(mask[b])
        for t in masked:
            frames = negatives[b, t] - b * 60
            assert set(frames) <= set(masked) - {t}, (b, t)
        if b < 2:  # uniform over the others: each is drawn
            seen = np.concatenate([negatives[b, t] - b * 60 for t in masked])
            counts = np.bincount(seen, minlength=60)[masked]
            assert counts.min() > 0.5 * counts.mean()


def test_the_gumbel_temperature_anneals_per_update_to_its_floor():
    assert float(gumbel_temperature(0, 2.0, 0.5, 0.999995)) == pytest.approx(2.0)
    assert float(gumbel_temperature(100_000, 2.0, 0.5, 0.999995)) == pytest.approx(2.0 * 0.999995 ** 100_000, rel=1e-5)
    assert float(gumbel_temperature(400_000, 2.0, 0.5, 0.999995)) == pytest.approx(0.5)  # 2 * 0.135 < 0.5


def test_languages_are_drawn_in_proportion_to_their_hours_to_the_alpha(tmp_path):
    from hubert_jax.data.languages import LanguageMix, language_probabilities
    from hubert_jax.data.pipeline import DataConfig, LabeledAudio, make_dataset

    from hubert_jax.demos.wav2vec2 import language_manifests

    manifests = language_manifests(str(tmp_path))  # the demo corpus' English and Korean halves
    config = DataConfig(crop_samples=16000, min_samples=16000)
    sources = [LabeledAudio(DataConfig(manifest=m, crop_samples=16000, min_samples=16000), need_labels=False)
               for m in manifests.values()]
    hours = [sum(e.num_samples for e in s.entries) for s in sources]
    p = language_probabilities(hours, 0.5)
    np.testing.assert_allclose(p, np.sqrt(hours) / np.sqrt(hours).sum())
    mix = LanguageMix(sources, list(manifests), alpha=0.5, seed=0, size=20000)
    shares = mix.shares()
    for name, want in zip(manifests, p):
        assert abs(shares[name] - want) < 4 * np.sqrt(want * (1 - want) / 20000)
    assert mix.language.tolist() == LanguageMix(sources, list(manifests), alpha=0.5, seed=0, size=20000).language.tolist()
    # through the pipeline: two hosts read one host's batches, with and without buckets
    small = LanguageMix(sources, list(manifests), alpha=0.5, seed=0)
    for extra in ({}, dict(buckets=(16000, 32000), max_tokens=8 * 32000)):
        cfg = DataConfig(manifest="en + ko", crop_samples=16000, min_samples=16000, **extra)
        whole = make_dataset(small, cfg, batch_size=8, seed=2, data_shards=2)
        parts = [make_dataset(small, cfg, batch_size=8, seed=2, process_index=h, process_count=2, data_shards=2)
                 for h in range(2)]
        for b in (0, 5):
            np.testing.assert_array_equal(np.concatenate([q[b]["input_values"] for q in parts]),
                                          whole[b]["input_values"])
    assert config.labels == ()


def _tiny_wav2vec2(steps: int, languages_dir: str):
    """The base recipe shrunk, its train split the demo corpus' two languages (XLSR's sampler)."""
    from hubert_jax.demos.wav2vec2 import language_manifests

    cfg = tiny_config.shrink(importlib.import_module("configs.wav2vec2_base").get_config(), steps=steps)
    cfg.data.train.manifest = ""
    cfg.data.languages.manifests = tuple(language_manifests(languages_dir).values())
    cfg.model.overrides.update(dict(num_codevector_groups=2, num_codevectors_per_group=8, codevector_dim=16,
                                    proj_codevector_dim=16, num_negatives=5, mask_time_length=4))
    cfg.data.train.labels = cfg.data.valid.labels = ()
    cfg.masking.update(dict(mask_prob=0.5, mask_length=4))
    cfg.wav2vec2.gumbel = (2.0, 0.5, 0.9)  # visibly annealed in a few steps
    return cfg


@pytest.fixture(scope="module")
def wav2vec2_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("w2v")
    return run(_tiny_wav2vec2(6, str(workdir / "languages")), str(workdir / "run")), workdir


@pytest.mark.xdist_group("wav2vec2_run")  # one worker runs the fixture's users: it trains once
def test_a_wav2vec2_run_logs_its_figures_and_resumes_exactly(wav2vec2_run, tmp_path):
    result, workdir = wav2vec2_run
    assert result.step == 6 and result.skipped_steps == 0
    train = [json.loads(x) for x in open(workdir / "run" / "metrics.jsonl") if json.loads(x)["split"] == "train"]
    for key in ("loss", "contrastive", "diversity", "accuracy", "prob_perplexity", "code_perplexity", "temperature"):
        assert all(np.isfinite(line[key]) for line in train), key
    assert train[-1]["temperature"] < train[0]["temperature"]
    assert {"accuracy", "code_perplexity", "prob_perplexity"} <= set(result.valid)
    assert len(json.load(open(workdir / "run" / "config.json"))["data"]["languages"]["manifests"]) == 2
    languages = str(workdir / "languages")
    first = run(_tiny_wav2vec2(6, languages), str(tmp_path), stop_after=3)
    assert first.step == 3
    resumed = run(_tiny_wav2vec2(6, languages), str(tmp_path))
    for a, b in zip(jax.tree.leaves(jax.device_get(resumed.state["params"])),
                    jax.tree.leaves(jax.device_get(result.state["params"]))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.xdist_group("wav2vec2_run")
def test_the_export_loads_in_transformers_with_its_quantizer_and_fine_tunes_with_ctc(wav2vec2_run, tmp_path):
    import torch
    import transformers

    result, _ = wav2vec2_run
    exported = result.trainer.export(result.state, str(tmp_path / "export"))
    trained = result.trainer.host_model(result.state)
    tmodel = transformers.Wav2Vec2ForPreTraining.from_pretrained(exported).eval()
    x = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32)
    frames = trained.base_model(jnp.asarray(x)).last_hidden_state.shape[1]
    mask = np.zeros((1, frames), bool)
    mask[0, 5:20] = True
    negatives = np.asarray(sample_negatives(jax.random.key(0), jnp.asarray(mask), 5))
    with torch.no_grad():
        tout = tmodel(torch.from_numpy(x), mask_time_indices=torch.tensor(mask),
                      sampled_negative_indices=torch.tensor(negatives))
    jout = trained(jnp.asarray(x), mask_time_indices=jnp.asarray(mask), sampled_negative_indices=jnp.asarray(negatives))
    assert np.abs(tout.projected_quantized_states.numpy() - np.asarray(jout.projected_quantized_states)).max() < 1e-4
    assert np.abs(tout.projected_states.numpy() - np.asarray(jout.projected_states)).max() < 1e-4
    assert abs(float(tout.loss) - float(jout.loss)) < 1e-4 * max(1.0, abs(float(tout.loss)))
    # CTC fine-tuning from it
    ctc = tiny_config.shrink(importlib.import_module("configs.ctc_demo").get_config(), steps=2)
    ctc.model.init_from = exported
    for split in ("train", "valid"):
        ctc.data[split].targets = os.path.join(DEMO, f"{split}.wrd")
    tuned = run(ctc, str(tmp_path / "ctc"))
    assert tuned.step == 2 and np.isfinite(tuned.valid["loss"])
    config = json.load(open(tmp_path / "ctc" / "model" / "config.json"))
    assert config["architectures"] == ["Wav2Vec2ForCTC"]


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_an_alpha_at_or_below_zero_is_refused_naming_the_field(tmp_path, alpha):
    cfg = _tiny_wav2vec2(2, str(tmp_path / "languages"))
    cfg.data.languages.alpha = alpha
    with pytest.raises(ValueError, match=rf"config.data.languages.alpha={alpha}: must be > 0"):
        run(cfg, str(tmp_path / "run"))


def test_a_language_manifest_listed_twice_is_refused(tmp_path):
    cfg = _tiny_wav2vec2(2, str(tmp_path / "languages"))
    first = cfg.data.languages.manifests[0]
    cfg.data.languages.manifests = (first, cfg.data.languages.manifests[1], first)
    with pytest.raises(ValueError, match=f"config.data.languages.manifests: {first} listed twice"):
        run(cfg, str(tmp_path / "run"))
