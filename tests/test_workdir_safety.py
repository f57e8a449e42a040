"""What a workdir guarantees: one run writes it at a time, a damaged checkpoint is never restored (the run
falls back to the newest step that verifies), config.json describes the run, and a full disk ends the run
with one line and intact checkpoints. A tiny model on the demo corpus (tests/tiny_config.py)."""

import glob
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from hubert_jax.training.checkpoint import CheckpointDamaged, IncompatibleCheckpoint
from hubert_jax.training.run import restore_latest, run
from hubert_jax.training.workdir_lock import LockLost, WorkdirBusy, WorkdirLock
from tests import tiny_config
from tests.processes import TRAIN
from tests.test_train import ROOT, assert_same_params, reference  # noqa: F401 (the fixture)


def _steps(workdir) -> list[int]:
    return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def _disk_report(disk, done) -> str:
    """What a small-disk run left and said, for the assertion message."""
    sizes = subprocess.run(["du", "-ak", str(disk)], capture_output=True, text=True).stdout
    free = shutil.disk_usage(disk).free >> 10
    return f"{free} KiB free; du -ak:\n{sizes}\nstderr:\n{done.stderr[-4000:]}"


# ---------------------------------------------------------------------------------------------- the lock
def test_a_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path):
    with WorkdirLock(str(tmp_path)):  # a live run of this machine: this test's own process
        with pytest.raises(WorkdirBusy, match=rf"in use by another run \(host {socket.gethostname()}, pid "
                                              rf"{os.getpid()}, started 20"):
            run(tiny_config.get_config(), str(tmp_path), stop_after=1)
    assert not os.path.exists(tmp_path / "checkpoints")  # refused before anything was written
    assert not os.path.exists(tmp_path / "config.json")


def test_two_concurrent_train_py_never_both_write(tmp_path):
    logs = [open(tmp_path / f"run{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(TRAIN + ["--workdir", str(tmp_path / "work"), "--config.train.checkpoint_every=1"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT) for log in logs]
    codes = [p.wait(timeout=600) for p in procs]
    outputs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [0, 1], outputs
    refused = outputs[codes.index(1)]
    assert "is in use by another run (host" in refused.splitlines()[-1], refused[-2000:]
    assert "Traceback" not in refused
    assert "resumed from" not in outputs[codes.index(0)]  # it ran from scratch, alone
    assert _steps(tmp_path / "work")[-1] == 12
    assert not os.path.exists(tmp_path / "work" / "run.lock")  # given back at the end


def test_a_lock_left_by_a_dead_process_of_this_machine_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = WorkdirLock(str(tmp_path))
    with open(lock.path, "w") as f:
        json.dump({**lock._record(), "pid": dead.pid, "process_start": "1", "started": "2026-01-01T00:00:00+00:00",
                   "command": ["train.py", "killed -9"]}, f)
    with caplog.at_level(logging.WARNING):
        result = run(tiny_config.get_config(), str(tmp_path), stop_after=2)
    assert result.step == 2
    assert f"took over a stale lock (its process ({dead.pid}) on this machine is gone)" in caplog.text


def _foreign_lock(path, age_s):
    with open(path, "w") as f:
        json.dump({"host": "tpu-vm-7", "boot_id": "other", "pid_ns": 1, "pid": 4242, "token": "x",
                   "started": "2026-11-30T08:00:00+00:00", "command": ["train.py"]}, f)
    past = time.time() - age_s
    os.utime(path, (past, past))


def test_another_machines_lock_counts_by_its_heartbeat_age(tmp_path, caplog):
    lock = WorkdirLock(str(tmp_path), stale_after_s=300)
    _foreign_lock(lock.path, age_s=60)  # a heartbeat a minute ago: alive
    with pytest.raises(WorkdirBusy, match="host tpu-vm-7, pid 4242"):
        lock.acquire()
    _foreign_lock(lock.path, age_s=301)  # ten missed heartbeats: gone
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert "no heartbeat for 30" in caplog.text and "host tpu-vm-7" in caplog.text
    assert lock.held()
    lock.release()
    assert not os.path.exists(lock.path)


def test_an_empty_lock_counts_by_its_age_and_says_how_to_clear_it(tmp_path, caplog):
    """What a run that stopped on a full disk used to leave: it blocked the workdir for good."""
    lock = WorkdirLock(str(tmp_path), stale_after_s=300)
    open(lock.path, "w").close()
    with pytest.raises(WorkdirBusy, match=rf"{lock.path}: the lock is unreadable \(empty or partly written.*"
                                          rf"stale 300 s after it last changed. If no run uses {tmp_path}, delete "
                                          rf"{lock.path} and start again"):
        lock.acquire()
    past = time.time() - 301
    os.utime(lock.path, (past, past))
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert "took over a stale lock (no heartbeat for 30" in caplog.text and "an unreadable lock file" in caplog.text
    lock.release()


def test_a_lock_is_never_left_half_written(tmp_path, monkeypatch):
    """The record is written aside and linked in whole: a write that fails (a full disk) leaves no lock."""
    lock = WorkdirLock(str(tmp_path))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
        lock.acquire()
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    lock.acquire()
    assert json.load(open(lock.path))["token"] == lock.token
    lock.release()


def test_the_heartbeat_keeps_a_lock_fresh_and_a_lost_lock_stops_writing(tmp_path):
    lock = WorkdirLock(str(tmp_path), heartbeat_s=0.05).acquire()
    first = os.stat(lock.path).st_mtime_ns
    time.sleep(0.5)
    assert os.stat(lock.path).st_mtime_ns > first and lock.held()
    lock.check()
    _foreign_lock(lock.path, age_s=0)  # another run decided this one was stale and took the workdir
    with pytest.raises(LockLost, match="another run took over this workdir \\(host tpu-vm-7"):
        lock.check()
    lock.release()
    assert os.path.exists(lock.path)  # the other run's lock is left alone


def test_a_run_that_lost_its_lock_saves_nothing_more(tmp_path, monkeypatch):
    calls = []
    real = WorkdirLock.check

    def check(self):
        calls.append(1)
        if len(calls) > 1:  # the lock is taken over after the first save
            _foreign_lock(self.path, age_s=0)
        real(self)

    monkeypatch.setattr(WorkdirLock, "check", check)
    with pytest.raises(LockLost):
        run(tiny_config.get_config(), str(tmp_path))
    assert _steps(tmp_path) == [1]


# ---------------------------------------------------------------------------------------------- integrity
def _array_files(workdir, step):
    """The state's data files (orbax's OCDBT: per process, and merged into state/d/ when they fit)."""
    return glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*"), recursive=True)


def _flip_bytes(workdir, step):
    for path in _array_files(workdir, step):
        data = bytearray(open(path, "rb").read())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        open(path, "wb").write(bytes(data))


def _truncate(workdir, step):
    for path in _array_files(workdir, step):
        os.truncate(path, os.path.getsize(path) // 2)


def _state_of_another_step(workdir, step, source=3):
    """Another step's arrays under this step's name (a mixed-up copy): every file reads back fine, only
    the digests can tell."""
    target = os.path.join(workdir, "checkpoints", str(step), "state")
    shutil.rmtree(target)
    shutil.copytree(os.path.join(workdir, "checkpoints", str(source), "state"), target)


def _delete_metadata(workdir, step):
    os.remove(os.path.join(workdir, "checkpoints", str(step), "state", "_METADATA"))


def _lose_integrity(workdir, step):
    """The step's digests gone (a partial copy or sync) and its arrays wrong in a way that reads back fine:
    only the missing digests can tell."""
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "integrity"))
    _state_of_another_step(workdir, step)


def _edit_iterator(workdir, step):
    (path,) = glob.glob(os.path.join(workdir, "checkpoints", str(step), "data", "*.json"))
    state = json.loads(open(path).read())
    state["next_index"] += 1  # a state that restores, but not the one that was saved
    open(path, "w").write(json.dumps(state))


@pytest.mark.parametrize("damage,reason", [
    # where the flipped bytes land decides who notices: orbax's b-tree nodes carry a CRC, the values do not
    (_flip_bytes, "arrays differ from the digests saved with them|cannot be read|unreadable"),
    (_state_of_another_step, "arrays differ from the digests saved with them"),
    (_truncate, "cannot be read|unreadable"),
    (_delete_metadata, "state metadata is missing or unreadable"),
    (_edit_iterator, "data iterator's state differs from its digest"),
    (_lose_integrity, r"its integrity/ folder \(the digests it was saved with\) is missing, though step\(s\) 3 of "
                      r"this run carry theirs, so it cannot be verified"),
])
def test_a_damaged_newest_checkpoint_is_reported_kept_and_the_run_resumes_from_the_last_good_step(
        reference, tmp_path, caplog, damage, reason):  # noqa: F811
    run(tiny_config.get_config(), str(tmp_path), stop_after=6)
    assert _steps(tmp_path) == [3, 6]
    damage(str(tmp_path), 6)
    with caplog.at_level(logging.WARNING):
        resumed = run(tiny_config.get_config(), str(tmp_path))
    assert f"checkpoint step 6 is damaged: {tmp_path}/checkpoints/6" in caplog.text
    assert any(__import__("re").search(reason, r.getMessage()) for r in caplog.records), caplog.text
    assert "resuming from step 3, the newest checkpoint that verifies" in caplog.text
    # resumed from 3, so bit-identical to the uninterrupted run
    assert resumed.step == 12
    assert_same_params(reference.state, resumed.state)
    # the damaged step is kept for inspection; keep_checkpoints=2 never deleted step 3, the last that verified
    (kept,) = os.listdir(tmp_path / "checkpoints.damaged")
    assert kept.startswith("6-")
    assert _steps(tmp_path) == [3, 9, 12]


def test_when_no_checkpoint_verifies_nothing_is_resumed_or_moved(tmp_path):
    run(tiny_config.get_config(), str(tmp_path), stop_after=6)
    _state_of_another_step(str(tmp_path), 3, source=6)
    _delete_metadata(str(tmp_path), 6)
    with pytest.raises(CheckpointDamaged, match="(?s)no checkpoint verifies.*step 6: .*state metadata.*step 3: .*digests"):
        run(tiny_config.get_config(), str(tmp_path))
    assert _steps(tmp_path) == [3, 6] and not os.path.exists(tmp_path / "checkpoints.damaged")


def test_a_checkpoint_from_before_digests_restores_with_a_warning(reference, tmp_path, caplog):  # noqa: F811
    """Only a run none of whose steps carry digests (written before they existed) restores unverified."""
    run(tiny_config.get_config(), str(tmp_path), stop_after=6)
    for step in (3, 6):
        shutil.rmtree(tmp_path / "checkpoints" / str(step) / "integrity")
    with caplog.at_level(logging.WARNING):
        resumed = run(tiny_config.get_config(), str(tmp_path))
    assert "checkpoints/6: written before checkpoints carried digests; restored without verifying it" in caplog.text
    assert_same_params(reference.state, resumed.state)


def test_digests_do_not_depend_on_the_sharding():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from hubert_jax.sharding import make_mesh
    from hubert_jax.training.integrity import array_digests

    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6) / 7
    mesh = make_mesh({"data": 4, "fsdp": 2})
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", "fsdp")))
    assert array_digests({"x": x}) == array_digests({"x": sharded})
    for changed in (x.at[3, 2].set(jnp.nextafter(x[3, 2], 10.0)), x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0]),
                    x.astype(jnp.bfloat16).astype(jnp.float32)):
        assert array_digests({"x": changed}) != array_digests({"x": x})


def test_host_digests_equal_the_jitted_digests_for_every_dtype(monkeypatch):
    """On the CPU backend the digests are taken in NumPy (no compile per state); on accelerators and in
    multi-process runs by the jitted pass. Both must give the same bits, or a checkpoint saved on one would not
    verify on the other (tests/fixtures/pre_tasks_run's digests were written by the jitted pass)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hubert_jax.training import integrity

    rng = np.random.default_rng(0)
    arrays = {"f32": rng.standard_normal((3, 5, 7)).astype(np.float32), "f16": rng.standard_normal(17).astype(np.float16),
              "bf16": np.asarray(jnp.asarray(rng.standard_normal((4, 9)), jnp.bfloat16)),
              "i32": np.arange(-5, 6, dtype=np.int32), "u32": np.array(7, np.uint32), "bool": rng.random(6) > 0.5,
              "u8": rng.integers(0, 255, (5, 3)).astype(np.uint8), "empty": np.zeros((0, 4), np.float32),
              "long": rng.standard_normal(70_001).astype(np.float32)}
    jitted = jax.device_get(integrity._digests({k: jnp.asarray(v) for k, v in arrays.items()}))
    for name, x in arrays.items():
        assert list(integrity._host_digest(x)) == list(np.asarray(jitted[name])), name
    on_device = {k: jnp.asarray(v) for k, v in arrays.items()}
    assert integrity._on_host(on_device)
    host = integrity.array_digests(on_device)
    monkeypatch.setattr(integrity, "HOST_DIGEST_BYTES", 1000)  # a state over the size: the jitted pass
    assert not integrity._on_host(on_device) and integrity.array_digests(on_device) == host
    with jax.enable_x64(True):  # 8-byte types: two words each, in lax.bitcast_convert_type's order
        wide = {"f64": rng.standard_normal((3, 4)), "i64": np.arange(9, dtype=np.int64) * 2**40}
        jitted = jax.device_get(integrity._digests({k: jnp.asarray(v) for k, v in wide.items()}))
        for name, x in wide.items():
            assert list(integrity._host_digest(x)) == list(np.asarray(jitted[name])), name


# ---------------------------------------------------------------------------------------------- config.json
def test_a_refused_resume_leaves_config_json_and_every_start_is_kept(tmp_path):
    run(tiny_config.get_config(), str(tmp_path), stop_after=3)
    before = (tmp_path / "config.json").read_text()
    cfg = tiny_config.get_config()
    cfg.model.overrides.hidden_size = 48
    with pytest.raises(IncompatibleCheckpoint, match="incompatible config"):
        run(cfg, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == before
    cfg = tiny_config.get_config()
    cfg.optim.schedule.peak = 1e-3  # a compatible change: the run continues under it
    run(cfg, str(tmp_path), stop_after=3)
    assert sorted(os.listdir(tmp_path / "configs")) == ["0001-step0.json", "0002-step3.json"]
    assert (tmp_path / "configs" / "0001-step0.json").read_text() == before
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["schedule"]["peak"] == 1e-3


# ---------------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (mounting needs root, as CI and the dev machines have)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mounts = []

    def make(size_kib):
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)], check=True)
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


# A tiny model's checkpoint takes about 0.6 MiB once written, but orbax's OCDBT writer may hold several times
# that while a save is in flight (more under load): 8 MiB fit the first checkpoints whatever the load, and 40
# of them (24 MiB) never fit.
FILL = ["--config.train.steps=40", "--config.optim.schedule.total_steps=40", "--config.train.checkpoint_every=1",
        "--config.train.keep_checkpoints=100"]


def test_a_full_disk_ends_train_py_with_one_line_and_the_checkpoints_intact(small_disk):
    disk = small_disk(8192)
    done = subprocess.run(TRAIN + ["--workdir", str(disk / "run")] + FILL,
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: no space left on device for checkpoint step ") and str(disk) in last, last
    assert "MiB are free" in last and "needs about" in last
    assert "Traceback" not in done.stderr
    saved = _steps(disk / "run")
    assert saved and saved[-1] < 40, _disk_report(disk, done)
    assert not [p for p in os.listdir(disk / "run" / "checkpoints") if "tmp" in p]
    cfg = tiny_config.get_config()
    cfg.train.steps = cfg.optim.schedule.total_steps = 40
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 1, 100
    _, state = restore_latest(cfg, str(disk / "run"))  # verifies
    assert int(state["step"]) == saved[-1]


def test_a_save_that_runs_out_of_space_midway_is_cleaned_up_and_named_in_one_line(small_disk):
    # no check before the save: the write itself (tensorstore, in orbax's background threads) hits ENOSPC
    disk = small_disk(8192)
    script = ("import runpy, sys; from hubert_jax.training import checkpoint as c; "
              "c.Checkpoints._check_space = lambda self, step, flat: None; "
              f"sys.argv = {TRAIN[1:] + ['--workdir', str(disk / 'run')] + FILL!r}; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(rf"train.py: no space left on device for checkpoint step \d+ in {disk}/run/checkpoints: it "
                    rf"needs about", last), last
    assert "Traceback" not in done.stderr and "No space left" not in done.stderr, done.stderr[-3000:]
    assert not [p for p in os.listdir(disk / "run" / "checkpoints") if "tmp" in p]
    saved = _steps(disk / "run")
    assert saved, _disk_report(disk, done)
    cfg = tiny_config.get_config()
    cfg.train.steps = cfg.optim.schedule.total_steps = 40
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 1, 100
    _, state = restore_latest(cfg, str(disk / "run"))
    assert int(state["step"]) == saved[-1]
    assert not os.path.exists(disk / "run" / "run.lock")


def test_run_log_on_a_full_disk_drops_its_lines_without_a_traceback(small_disk, capsys):
    # the flake of the test above: run.log's own write hit ENOSPC, and logging printed "--- Logging error ---"
    from hubert_jax.train import log_to_workdir

    disk = small_disk(64)
    path = log_to_workdir(str(disk / "run"), 0)
    with open(disk / "filler", "wb", buffering=0) as filler:
        with pytest.raises(OSError, match="No space left"):
            while True:
                filler.write(b"x" * 4096)
    handler = logging.getLogger().handlers[-1]
    try:
        logging.getLogger("orbax_like").warning("a line %s", "x" * 8192)
        handler.flush()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert handler.baseFilename == path
    assert "Logging error" not in capsys.readouterr().err


def test_every_process_of_a_multi_host_run_stops_when_the_workdir_is_taken(tmp_path):
    from tests.environment import subprocess_env
    from tests.processes import free_port, train_command

    port = free_port()
    with WorkdirLock(str(tmp_path / "run")):  # a live run holds the workdir
        procs = [subprocess.Popen(train_command(tmp_path / "run", "--coordinator_address", f"127.0.0.1:{port}",
                                             "--num_processes", "2", "--process_id", str(i)),
                                  env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outputs
    errors = [[line for line in out.splitlines() if line.startswith("train.py: ")] for out in outputs]
    assert f"is in use by another run (host {socket.gethostname()}, pid {os.getpid()}" in errors[0][0], outputs[0]
    assert "process 0 could not lock the workdir" in errors[1][0], outputs[1][-2000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_resume_whose_batch_plan_changed_is_refused_unless_allowed_with_a_note(tmp_path, caplog):
    run(tiny_config.get_config(), str(tmp_path), stop_after=3)
    before = _steps(tmp_path)
    changed = tiny_config.get_config()
    changed.data.buckets, changed.data.max_tokens = (16000, 32000), 8 * 32000
    with pytest.raises(IncompatibleCheckpoint, match=r"(?s)the batch plan differs from the run this workdir holds.*"
                                                     r"data.max_tokens: checkpoint has 0, config has 256000.*"
                                                     r"data.buckets: checkpoint has \[\], config has \[16000, 32000\].*"
                                                     r"--config.train.allow_new_batch_plan=True"):
        run(changed, str(tmp_path), stop_after=4)
    assert _steps(tmp_path) == before  # refused before anything was written
    changed.train.allow_new_batch_plan = True
    with caplog.at_level(logging.WARNING):
        assert run(changed, str(tmp_path), stop_after=1).step == 4  # one more step after step 3
    assert "resuming under a new batch plan (config.train.allow_new_batch_plan): data.max_tokens" in caplog.text


def test_a_run_that_fails_to_start_leaves_no_logs_in_its_workdir(tmp_path):
    cfg = tiny_config.get_config()
    cfg.train.tensorboard = True
    cfg.data.valid.labels = (str(tmp_path / "missing.km"),)
    with pytest.raises(FileNotFoundError, match="config.data.valid.labels"):
        run(cfg, str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run") == []  # no metrics.jsonl, tensorboard/, config.json or lock
    cfg = tiny_config.get_config()
    cfg.train.tensorboard = True
    run(cfg, str(tmp_path / "run"), stop_after=1)
    assert {"metrics.jsonl", "tensorboard", "config.json"} <= set(os.listdir(tmp_path / "run"))


def test_a_valid_split_smaller_than_one_bucketed_batch_is_refused_at_start(tmp_path):
    """It used to fail at the first evaluation, after training, without saving the step it had trained."""
    lines = open(os.path.join(ROOT, "data", "demo", "valid.tsv")).read().splitlines()
    root = os.path.join(ROOT, "data", "demo")
    (tmp_path / "valid.tsv").write_text("\n".join([root] + lines[1:3]) + "\n")  # two utterances
    (tmp_path / "valid.phn").write_text("\n".join(open(os.path.join(ROOT, "data", "demo", "valid.phn"))
                                                  .read().splitlines()[:2]) + "\n")
    cfg = tiny_config.get_config()
    cfg.data.buckets, cfg.data.max_tokens = (16000, 32000), 8 * 32000
    cfg.data.valid.update(dict(manifest=str(tmp_path / "valid.tsv"), labels=(str(tmp_path / "valid.phn"),)))
    with pytest.raises(ValueError, match=r"config.data.valid.manifest \(.*valid.tsv\): its 2 utterances make no full "
                                         r"batch \(data.buckets \(16000, 32000\) with data.max_tokens 256000\)"):
        run(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
