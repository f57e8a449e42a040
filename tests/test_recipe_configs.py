"""Every recipe in configs/: the full-size model and optimizer built abstractly (parameter counts checked),
then 2 real steps with the model shrunk through overrides, on the demo corpus."""

import importlib
import os

import numpy as np
import pytest

from hubert_jax.data.targets import build_vocab
from hubert_jax.sharding import make_mesh
from hubert_jax.training.run import run
from hubert_jax.training.tasks import make_trainer
from hubert_jax.training.tasks.finetune import FineTuneTask
from hubert_jax.training.trainer import param_count
from tests import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# encoder (transformers' HubertModel count, as tests/test_param_counts.py checks) + final_proj (hidden x final_dim + final_dim) + K x final_dim
EXPECTED = {
    "hubert_base_iter1": 94_371_712 + 768 * 256 + 256 + 100 * 256,
    "hubert_base_iter2": 94_371_712 + 768 * 256 + 256 + 500 * 256,
    "hubert_large": 315_438_720 + 1024 * 768 + 768 + 500 * 768,
    "hubert_xlarge": 962_497_408 + 1280 * 1024 + 1024 + 500 * 1024,
    "korean_base": 94_371_712 + 768 * 256 + 256 + 500 * 256,
    "korean_large": 315_438_720 + 1024 * 768 + 768 + 500 * 768,
    # transformers' WavLMModel (wavlm-base-plus / wavlm-large) + the same heads as HuBERT at that size
    "wavlm_base_plus": 94_381_936 + 768 * 256 + 256 + 500 * 256,
    "wavlm_large": 315_453_120 + 1024 * 768 + 768 + 500 * 768,
    # transformers' Wav2Vec2ForPreTraining of the same configs (encoder, quantizer, project_q, project_hid)
    "wav2vec2_base": 95_044_608,
    "wav2vec2_large_lv60": 317_390_592,
    "xlsr_53": 317_390_592,
    "xls_r_300m": 317_390_592,
    "demo": None,  # no published size to check against
    "curves_hubert": None,  # the demo's run, as fairseq's reference curve run trains it (tests/test_curves.py)
    "curves_wav2vec2": None,
    # student (transformers' distilhubert, 2 layers) + heads: Linear(768, 3 x 768) and 3 x Linear(768, 768)
    "distilhubert": 23_491_968 + 768 * 2304 + 2304 + 3 * (768 * 768 + 768),
    # HubertForCTC: encoder + lm_head over LibriSpeech's letters (4 specials, |, A-Z and ')
    "ctc_base_10h": 94_371_712 + 768 * 32 + 32,
    "ctc_demo": None,
}
LETTERS = {"vocab": build_vocab(["ABCDEFGHIJKLMNOPQRSTUVWXYZ'"])}


def _trainer(cfg, teacher=None):
    if cfg.task == "distill":
        from flax import nnx

        from hubert_jax.config import preset
        from hubert_jax.models import HubertModel

        teacher = teacher or nnx.eval_shape(lambda: HubertModel(preset("hubert-base")))
        return make_trainer(cfg, make_mesh({"data": -1}), teacher=teacher)
    if _is_finetuning(cfg):
        return make_trainer(cfg, make_mesh({"data": -1}), meta=LETTERS)
    return make_trainer(cfg, make_mesh({"data": -1}))


def _is_finetuning(cfg) -> bool:
    from hubert_jax.training.tasks import task_class

    return issubclass(task_class(cfg.task), FineTuneTask)


def tiny_teacher(directory):
    """A random 12-layer teacher of the tiny width, saved as a model directory."""
    from flax import nnx

    from hubert_jax.config import preset
    from hubert_jax.models import HubertModel

    config = preset("hubert-base").replace(**{**tiny_config.TINY_MODEL, "num_hidden_layers": 12})
    HubertModel(config, rngs=nnx.Rngs(7)).save_pretrained(str(directory))
    return str(directory)


def test_every_config_is_listed():
    files = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
    assert files == sorted(EXPECTED)
    for name in files:  # each file starts with the command that runs it
        text = open(os.path.join(ROOT, "configs", f"{name}.py")).read()
        assert f"python train.py --config configs/{name}.py" in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_builds_abstractly(name):
    cfg = importlib.import_module(f"configs.{name}").get_config()
    trainer = _trainer(cfg)
    params = param_count(trainer.abstract_state["params"])
    if EXPECTED[name] is not None:
        assert params == EXPECTED[name]
    # AdamW keeps two moments per parameter (plus step counters)
    assert param_count(trainer.abstract_state["opt_state"]) == 2 * params + 2


PRETRAINING = ("hubert_base_iter1", "hubert_base_iter2", "hubert_large", "hubert_xlarge", "korean_base",
               "korean_large", "distilhubert", "wavlm_base_plus", "wavlm_large", "wav2vec2_base")
# (max_tokens, data shards, rows of the 250k bucket): fairseq's budgets, samples per GPU x GPUs, on its GPU
# count (fairseq's own per-GPU batches: 5, 3 and 1 full crops); s3prl's 24 crops; the Korean recipes on 32 chips
BUDGETS = {"hubert_base_iter1": (1_400_000 * 32, 32, 160), "hubert_base_iter2": (1_400_000 * 32, 32, 160),
           "hubert_large": (900_000 * 128, 128, 384), "hubert_xlarge": (360_000 * 256, 256, 256),
           "korean_base": (128 * 64000, 32, 32), "korean_large": (128 * 64000, 32, 32),
           "distilhubert": (24 * 250000, 8, 24), "wavlm_base_plus": (1_400_000 * 32, 32, 160),
           "wavlm_large": (900_000 * 128, 128, 384), "wav2vec2_base": (1_400_000 * 64, 64, 320)}


@pytest.mark.parametrize("name", PRETRAINING)
def test_pretraining_recipes_batch_by_a_token_budget_over_buckets(name):
    from hubert_jax.data.buckets import batch_sizes

    cfg = importlib.import_module(f"configs.{name}").get_config()
    max_tokens, shards, longest_rows = BUDGETS[name]
    assert cfg.data.max_tokens == max_tokens and cfg.data.buckets[-1] == 250000
    assert cfg.data.buckets[0] == cfg.data.min_samples  # nothing shorter than the smallest bucket is kept
    sizes = batch_sizes(cfg.data.buckets, cfg.data.max_tokens, shards)
    assert sizes[-1] == longest_rows and all(s % shards == 0 for s in sizes)
    ratios = np.array(cfg.data.buckets[1:-1]) / np.array(cfg.data.buckets[:-2])
    assert np.all(ratios < 1.26)  # an utterance keeps at least 1 / 1.26 of itself


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_two_real_steps_with_a_shrunk_model(name, tmp_path):
    cfg = tiny_config.shrink(importlib.import_module(f"configs.{name}").get_config(), steps=2)
    cfg.train.eval_every = 2
    if cfg.task == "distill":
        cfg.distill.teacher = tiny_teacher(tmp_path / "teacher")
    if _is_finetuning(cfg):  # the demo transcripts
        for split in ("train", "valid"):
            cfg.data[split].targets = os.path.join(ROOT, "data", "demo", f"{split}.wrd")
    cfg.model.head.num_classes = (max(92, cfg.model.head.num_classes[0]),)
    if cfg.model.head.label_rate == 50:  # the demo phones are at 100 Hz: keep every other frame
        for split in ("train", "valid"):
            src = cfg.data[split].labels[0]
            out = tmp_path / f"{split}.km"
            out.write_text("".join(" ".join(line.split()[::2]) + "\n" for line in open(src)))
            cfg.data[split].labels = (str(out),)
    result = run(cfg, str(tmp_path / "run"))
    assert result.step == 2 and result.skipped_steps == 0
    assert np.isfinite(result.train["loss"]) and np.isfinite(result.valid["loss"])
