"""DistilHuBERT: the loss against s3prl's formula in torch, the student initialised from its teacher, a
short distillation whose loss falls, and the exported student loaded by transformers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import torch

from hubert_jax.models.distill import DistillConfig, distill_loss
from hubert_jax.training.run import run
from tests import tiny_config
from tests.test_recipe_configs import tiny_teacher


def test_loss_equals_s3prl_formula():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((2, 3, 7, 5)), rng.standard_normal((2, 3, 7, 5))
    feat = rng.standard_normal((2, 7, 4))
    cfg = DistillConfig(pred_layers=(4, 8, 12), teacher_dim=5, cosine_weight=1.0, feat_pen_weight=0.5)
    pen = float(np.mean(feat ** 2))
    loss, metrics = distill_loss(jnp.asarray(pred), jnp.asarray(target), jnp.ones((2, 7), bool), pen, cfg)
    p, t = torch.tensor(pred), torch.tensor(target)
    rec = torch.nn.functional.l1_loss(p, t)
    sim = -torch.nn.functional.logsigmoid(torch.nn.functional.cosine_similarity(p, t, dim=-1)).mean()
    expected = rec + 0.5 * pen + sim
    assert abs(float(loss) - float(expected)) < 1e-5
    assert abs(float(metrics["rec_loss"]) - float(rec)) < 1e-5


def distill_config(tmp_path, steps):
    import importlib

    cfg = tiny_config.shrink(importlib.import_module("configs.distilhubert").get_config(), steps=steps)
    cfg.distill.teacher = tiny_teacher(tmp_path / "teacher")
    cfg.train.update(dict(log_every=10, eval_every=steps, checkpoint_every=steps))
    cfg.optim.schedule.update(dict(peak=2e-3, warmup_steps=min(5, steps)))
    cfg.optim.schedule.total_steps = max(steps, 10)
    return cfg


def test_distillation_trains_and_exports_a_transformers_student(tmp_path):
    import transformers

    from hubert_jax.auto import FlaxAutoModel

    cfg = distill_config(tmp_path, 40)
    result = run(cfg, str(tmp_path / "run"))
    teacher = FlaxAutoModel.from_pretrained(cfg.distill.teacher)
    state = jax.device_get(result.state)
    # the student started from the teacher; its conv stack is still close (feature_grad_mult 0.1)
    t_conv = np.asarray(teacher.feature_extractor.conv_layers[0].conv.kernel[...])
    s_conv = state["params"]["hubert"]["feature_extractor"]["conv_layers"][0]["conv"]["kernel"]
    assert np.abs(s_conv - t_conv).max() < 0.05 * np.abs(t_conv).max()
    losses = [json.loads(x)["loss"] for x in open(tmp_path / "run" / "metrics.jsonl")
              if json.loads(x)["split"] == "train"]
    assert losses[-1] < losses[0]
    assert np.isfinite(result.valid["loss"])

    exported = result.trainer.export(result.state, str(tmp_path / "student"))
    x = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32)
    ours = FlaxAutoModel.from_pretrained(exported)(jnp.asarray(x)).last_hidden_state
    tmodel = transformers.HubertModel.from_pretrained(exported).eval()
    assert tmodel.config.num_hidden_layers == 2
    with torch.no_grad():
        theirs = tmodel(torch.from_numpy(x)).last_hidden_state.numpy()
    assert np.abs(np.asarray(ours) - theirs).max() < 1e-4


def test_student_starts_from_the_teacher(tmp_path):
    cfg = distill_config(tmp_path, 1)
    result = run(cfg, str(tmp_path / "run"), stop_after=0)
    from hubert_jax.auto import FlaxAutoModel

    teacher = FlaxAutoModel.from_pretrained(cfg.distill.teacher)
    student = jax.device_get(result.state["params"])["hubert"]
    for i in range(2):
        np.testing.assert_array_equal(student["encoder"]["layers"][i]["attention"]["q_proj"]["kernel"],
                                      np.asarray(teacher.encoder.layers[i].attention.q_proj.kernel[...]))
    np.testing.assert_array_equal(student["feature_projection"]["projection"]["kernel"],
                                  np.asarray(teacher.feature_projection.projection.kernel[...]))
