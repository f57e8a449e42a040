"""A pretraining task is its module alone: this file defines one (regress each frame's log energy from the
encoder), registers it, and trains it with the package's own run, without touching the package."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import tiny_config
from hubert_jax import families
from hubert_jax.models.layers import Linear, torch_linear_init
from hubert_jax.training import tasks
from hubert_jax.training.resolve import model_config
from hubert_jax.training.tasks.base import Task, crop_data
from hubert_jax.training.trainer import model_options

NAME = "test_frame_energy"


class EnergyModel(nnx.Module):
    def __init__(self, config, *, opts, rngs):
        self.encoder = families.base_model_class(config.model_type)(config, opts=opts, rngs=rngs)
        self.head = Linear(config.hidden_size, 1, axes=("embed", None), opts=opts, rngs=rngs,
                           **torch_linear_init(config.hidden_size))

    def __call__(self, x, mask, *, deterministic, dropout_rng):
        hidden = self.encoder(x, mask, deterministic=deterministic, dropout_rng=dropout_rng).last_hidden_state
        return self.head(hidden)[..., 0]  # (B, frames)


def frame_log_energy(x, frames: int):
    """(B, frames): log mean square of each 20 ms hop of the waveform."""
    hops = x[:, : frames * 320].reshape(x.shape[0], frames, 320)
    return jnp.log(jnp.mean(jnp.square(hops), axis=-1) + 1e-5)


def register():
    @tasks.register_task(NAME)
    class FrameEnergyTask(Task):
        sections = {"energy": dict(weight=1.0)}
        log_keys = ("loss", "energy_mse")
        export_when_done = False  # its model is this file's own: no model directory for transformers to load

        def data(self, workdir):
            return crop_data(self.cfg, labels=False)

        def build(self):
            return EnergyModel(model_config(self.cfg.model), opts=model_options(self.cfg.model),
                               rngs=nnx.Rngs(self.cfg.seed))

        def forward(self, model, batch, key, step, deterministic, frozen):
            predicted = model(batch["input_values"], batch["attention_mask"], deterministic=deterministic,
                              dropout_rng=None if deterministic else key)
            target = frame_log_energy(batch["input_values"], predicted.shape[1])
            mse = jnp.mean(jnp.square(predicted - target))
            return self.cfg.energy.weight * mse, {"loss": self.cfg.energy.weight * mse, "energy_mse": mse}

    return FrameEnergyTask


@pytest.fixture
def energy_task():
    cls = register()
    try:
        yield cls
    finally:
        tasks.TASKS.pop(NAME, None)


def _config(steps: int):
    from hubert_jax.training.config import pretraining_defaults

    cfg = tiny_config.get_config()
    cfg.energy = pretraining_defaults().energy  # the task's section, declared by the task
    cfg.task = NAME
    for split in ("train", "valid"):
        cfg.data[split].labels = ()
    cfg.model.overrides.update(dict(hidden_dropout=0.0, layerdrop=0.0))
    cfg.train.update(dict(steps=steps, log_every=1, eval_every=steps, checkpoint_every=steps))
    cfg.optim.schedule.update(dict(peak=3e-3, warmup_steps=1, total_steps=steps))
    return cfg


def test_a_task_registered_outside_the_package_trains_with_its_own_section_and_log_keys(energy_task, tmp_path,
                                                                                         capsys):
    from hubert_jax.training.config import pretraining_defaults
    from hubert_jax.training.run import run

    assert tasks.task_class(NAME) is energy_task and energy_task.name == NAME
    assert pretraining_defaults().energy.to_dict() == {"weight": 1.0}
    result = run(_config(8), str(tmp_path))
    assert result.step == 8
    lines = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    train = [line["energy_mse"] for line in lines if line["split"] == "train"]
    assert len(train) == 8 and np.all(np.isfinite(train))
    assert np.mean(train[-3:]) < 0.5 * np.mean(train[:2])  # it learns: the head finds the energies' level
    assert "energy_mse" in result.valid
    assert "energy_mse" in capsys.readouterr().out  # its log_keys reach the console line
    # the model trained is the task's own: the encoder and the task's head
    assert any("head" in "/".join(map(str, path)) for path, _ in jax.tree_util.tree_leaves_with_path(result.state[
        "params"]))


def test_the_plugin_tasks_section_is_refused_under_another_task(energy_task):
    from hubert_jax.training.tasks import make_task

    cfg = _config(2)
    cfg.task = "hubert"
    cfg.data.train.labels = tiny_config.get_config().data.train.labels
    cfg.energy.weight = 2.0
    with pytest.raises(ValueError, match=rf"config.energy \(energy.weight\) is set, but config.task='hubert' does "
                                         rf"not read it \(only {NAME} does\)"):
        make_task(cfg)


def test_a_second_task_under_a_taken_name_is_refused(energy_task):
    with pytest.raises(ValueError, match=f"task {NAME!r} is registered twice"):
        register()


def test_a_task_whose_model_the_default_export_cannot_write_is_refused_before_its_first_step(energy_task, tmp_path):
    from hubert_jax.training.run import run

    energy_task.export_when_done = True  # as if the file had not said False: EnergyModel has no config
    with pytest.raises(ValueError, match=rf"config.task='{NAME}': its model, EnergyModel, has no `config`.*"
                                         r"export_when_done = False"):
        run(_config(2), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))

