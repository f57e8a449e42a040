"""The pretraining run: exact resume (in process and after kill -9), SIGTERM, interrupted saves, non-finite
steps, config and workdir errors. A tiny model on the demo corpus (tests/tiny_config.py)."""

import json
import os
import signal
import subprocess

import jax
import numpy as np
import pytest

from hubert_jax.training.hooks import NonFiniteLoss
from hubert_jax.training.run import restore_latest, run
from tests import tiny_config
from tests.processes import TRAIN, output, start, wait_for_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def params_of(state):
    return jax.tree.leaves(jax.device_get(state["params"]))


def assert_same_params(a, b):
    a, b = params_of(a), params_of(b)
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "parameters differ"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """12 uninterrupted steps."""
    return run(tiny_config.get_config(), str(tmp_path_factory.mktemp("reference")))


def test_resume_in_process_is_bit_identical(reference, tmp_path):
    first = run(tiny_config.get_config(), str(tmp_path), stop_after=7)
    assert first.step == 7
    resumed = run(tiny_config.get_config(), str(tmp_path))
    assert resumed.step == 12
    assert_same_params(reference.state, resumed.state)
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert {"train", "valid"} <= {x["split"] for x in lines}
    assert all(np.isfinite(x["loss"]) for x in lines)


def test_kill_9_at_a_random_step_then_restart_is_bit_identical(reference, tmp_path):
    # saves every step, so the kill most likely lands during an (async) save as well
    kill_at = int(np.random.default_rng(1234).integers(2, 10))
    proc = start(tmp_path, "--config.train.checkpoint_every=1")
    wait_for_step(proc, tmp_path, kill_at)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(TRAIN + ["--workdir", str(tmp_path), "--config.train.checkpoint_every=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout
    # a quiet console: the checkpoint library's INFO lines go to {workdir}/run.log, not the console
    assert "checkpoint_manager.py" not in done.stdout + done.stderr
    assert "checkpoint_manager" in open(tmp_path / "run.log").read()
    cfg = tiny_config.get_config()
    cfg.train.checkpoint_every = 1
    _, state = restore_latest(cfg, str(tmp_path))
    assert int(state["step"]) == 12
    assert_same_params(reference.state, state)


@pytest.mark.parametrize("sig,name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_sigterm_or_ctrl_c_saves_a_complete_checkpoint_and_exits_cleanly(tmp_path, sig, name):
    proc = start(tmp_path, "--config.train.steps=400", "--config.train.checkpoint_every=1000",
                  "--config.optim.schedule.total_steps=400")
    wait_for_step(proc, tmp_path, 3)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    out = output(tmp_path)
    assert proc.returncode == 0, out[-3000:]
    assert f"preempted ({name}): saved step" in out
    assert "Traceback" not in out
    saved = int(out.split(f"preempted ({name}): saved step ")[1].split()[0])
    assert 3 <= saved < 400
    cfg = tiny_config.get_config()
    cfg.train.steps = cfg.optim.schedule.total_steps = 400
    _, state = restore_latest(cfg, str(tmp_path))
    assert int(state["step"]) == saved


def test_an_interrupted_save_leaves_the_previous_checkpoint(reference, tmp_path):
    first = run(tiny_config.get_config(), str(tmp_path), stop_after=6)
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "6").is_dir()
    # what a crash in the middle of writing step 9 leaves: Orbax's temporary folder, half written
    partial = ckpts / "9.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 10)
    resumed = run(tiny_config.get_config(), str(tmp_path))
    assert resumed.step == 12 and first.step == 6
    assert_same_params(reference.state, resumed.state)
    assert not partial.exists()


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    cfg = tiny_config.get_config()
    # an absurd constant learning rate: the first update blows the weights up, every later loss is NaN/Inf
    cfg.optim.schedule.update(dict(kind="constant", peak=1e30))
    cfg.optim.clip_norm = 0.0
    cfg.train.max_nan_in_a_row = 3
    with pytest.raises(NonFiniteLoss, match="3 steps in a row had a NaN/Inf loss"):
        run(cfg, str(tmp_path))


def test_skipped_step_leaves_the_state_unchanged(reference):
    trainer, state = reference.trainer, reference.state
    batch = {"input_values": np.full((8, 8000), np.nan, np.float32), "attention_mask": np.ones((8, 8000), np.int32),
             "labels": np.zeros((8, 1, 50), np.int32)}
    before = jax.device_get(state)
    state_copy = jax.device_put(before, trainer.state_shardings)
    new, metrics = trainer.train_step(state_copy, batch)
    assert not bool(metrics["finite"])
    assert int(new["nan_total"]) == int(before["nan_total"]) + 1 and int(new["nan_run"]) == 1
    assert int(new["step"]) == int(before["step"]) + 1
    assert_same_params(before, new)


def test_incompatible_workdir_refuses_to_resume(tmp_path):
    run(tiny_config.get_config(), str(tmp_path), stop_after=3)
    cfg = tiny_config.get_config()
    cfg.model.overrides.hidden_size = 48
    with pytest.raises(ValueError, match=r"(?s)incompatible config.*model.overrides.hidden_size: checkpoint has 32, "
                                         r"config has 48"):
        run(cfg, str(tmp_path))


@pytest.mark.parametrize("flag,message", [
    ("--config.model.overidess.hidden_size=8", "overidess"),
    ("--config.train.steps=many", "steps"),
])
def test_override_errors_name_the_key(tmp_path, flag, message):
    done = subprocess.run(TRAIN + ["--workdir", str(tmp_path), flag], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode != 0
    assert message in done.stderr


def test_labels_beyond_the_heads_are_refused(tmp_path):
    cfg = tiny_config.get_config()
    cfg.model.head.num_classes = (50,)
    with pytest.raises(ValueError, match=r"train.phn: labels go up to 91, but config.model.head.num_classes gives 50"):
        run(cfg, str(tmp_path))


def test_batch_must_split_over_the_mesh(tmp_path):
    cfg = tiny_config.get_config()
    cfg.data.batch_size = 6
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by the mesh's data x fsdp axes \(8"):
        run(cfg, str(tmp_path))


def test_init_from_an_exported_model_continues_with_its_heads(reference, tmp_path):

    exported = reference.trainer.export(reference.state, str(tmp_path / "export"))
    cfg = tiny_config.get_config()
    cfg.model.init_from = exported
    start = run(cfg, str(tmp_path / "continued"), stop_after=0)
    assert start.step == 0
    assert_same_params(reference.state, start.state)  # encoder and heads, all from the export

    # the directory's hubert_pretraining fixes the heads: a run config that says otherwise follows it
    cfg.model.head.num_classes = (100,)
    start = run(cfg, str(tmp_path / "other_config"), stop_after=0)
    assert_same_params(reference.state, start.state)
    saved = json.loads((tmp_path / "other_config" / "config.json").read_text())
    assert saved["model"]["head"]["num_classes"] == [92]

    # without those settings, heads of another shape are refused, naming the file
    config_path = os.path.join(exported, "config.json")
    config = json.loads(open(config_path).read())
    del config["hubert_pretraining"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"pretraining_heads.safetensors: label_embs_concat has shape \(92, 16\)"):
        run(cfg, str(tmp_path / "mismatch"), stop_after=0)


def test_metrics_are_fetched_once_per_log_window_and_none_is_lost(tmp_path, monkeypatch):
    from hubert_jax.training import hooks

    calls = []
    real = hooks.fetch

    def counting(pending, *args):
        calls.append([step for step, _ in pending])
        return real(pending, *args)

    monkeypatch.setattr(hooks, "fetch", counting)
    cfg = tiny_config.get_config()
    cfg.train.update(dict(steps=8, log_every=4, eval_every=100, checkpoint_every=100))
    result = run(cfg, str(tmp_path))
    # the host waits at step 1 (Orbax saves a run's first step), then once per log window
    assert calls == [[1], [2, 3, 4], [5, 6, 7, 8]]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [4, 8]
    assert result.step == 8 and np.isfinite(result.train["loss"])
