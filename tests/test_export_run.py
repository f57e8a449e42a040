"""A pretraining run ends in a model, any step of a workdir exports with `python -m hubert_jax.export`, and a
workdir given to from_pretrained says how to get a model out of it."""

import os

import numpy as np
import pytest

import hubert_jax
from hubert_jax.weights.state import model_to_flat
from hubert_jax.export.__main__ import main as export_main
from hubert_jax.training.run import restore_latest, run
from tests import tiny_config


def _encoder(directory):
    return model_to_flat(hubert_jax.FlaxAutoModel.from_pretrained(directory))


def test_a_pretraining_run_ends_in_a_model_and_any_step_exports(tmp_path):
    cfg = tiny_config.get_config()
    cfg.train.update(dict(steps=4, checkpoint_every=2, keep_checkpoints=3, eval_every=100))
    workdir = str(tmp_path / "run")
    result = run(cfg, workdir)
    # the run's own export: the encoder (FlaxAutoModel, transformers) and the heads beside it
    assert result.step == 4
    assert {"config.json", "flax_model.safetensors", "model.safetensors", "pretraining_heads.safetensors"} <= set(
        os.listdir(os.path.join(workdir, "model")))
    trained = hubert_jax.FlaxAutoModelForPreTraining.from_pretrained(os.path.join(workdir, "model"))
    assert trained.head.num_classes == (92,)

    # a workdir is no model directory: the message names the command
    with pytest.raises(ValueError, match=r"training run's workdir, not a model directory: export its model with "
                                         r"`python -m hubert_jax.export .*run OUT \[--step N\]`"):
        hubert_jax.FlaxAutoModel.from_pretrained(workdir)

    # the newest step exports what the run exported; step 2 its own weights
    assert export_main([workdir, str(tmp_path / "newest")]) == 0
    assert export_main([workdir, str(tmp_path / "step2"), "--step", "2"]) == 0
    final, newest, second = (_encoder(os.path.join(workdir, "model")), _encoder(str(tmp_path / "newest")),
                             _encoder(str(tmp_path / "step2")))
    assert final.keys() == newest.keys() == second.keys()
    assert all(np.array_equal(final[k], newest[k]) for k in final)
    assert any(not np.array_equal(final[k], second[k]) for k in final)
    trainer, state = restore_latest(cfg, workdir, 2)
    expected = model_to_flat(trainer.host_model(state).hubert)
    assert all(np.array_equal(expected[k], second[k]) for k in second)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_main([workdir, str(tmp_path / "step2"), "--step", "2"])
