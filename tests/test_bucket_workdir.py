"""A run whose workdir and data are in a bucket (gs://, on the Cloud Storage emulator this test process starts:
tests/storage_emulator.py): of two train.py started together on it one trains and the other is refused; the
one that trains, killed with SIGKILL and started again, ends bit-identical to an uninterrupted local run; a damaged newest step is set aside in the bucket and the run resumes from the step
before; the run's export loads from the bucket; a model saved into the bucket loads back."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from hubert_jax import storage
from hubert_jax.training.run import restore_latest, run
from tests import tiny_config
from tests.processes import TRAIN

ROOT = tiny_config.ROOT
DEMO = os.path.join(ROOT, "data", "demo")


def upload_demo(remote: str) -> None:
    """data/demo's manifests (their root made ".": the bucket folder itself), the audio they list and the labels."""
    fs = storage._filesystem()
    for split in ("train", "valid"):
        lines = open(os.path.join(DEMO, f"{split}.tsv"), encoding="utf-8").read().splitlines()
        storage.write_bytes(f"{remote}/{split}.tsv", "\n".join(["."] + lines[1:]).encode() + b"\n")
        fs.put([os.path.join(DEMO, line.split("\t")[0]) for line in lines[1:]],
               [f"{remote}/{line.split(chr(9))[0]}" for line in lines[1:]])
        fs.put_file(os.path.join(DEMO, f"{split}.phn"), f"{remote}/{split}.phn")


def bucket_config(data: str):
    cfg = tiny_config.get_config()
    cfg.train.checkpoint_every = 1
    for split in ("train", "valid"):
        cfg.data[split].manifest = f"{data}/{split}.tsv"
        cfg.data[split].labels = (f"{data}/{split}.phn",)
    return cfg


def overrides(data: str) -> list[str]:
    return ["--config.train.checkpoint_every=1"] + [
        f"--config.data.{split}.{field}={data}/{split}.{ext}"
        for split in ("train", "valid") for field, ext in (("manifest", "tsv"), ("labels", "phn"))]


def finished_steps(workdir: str) -> list[int]:
    """The checkpoint steps Orbax has committed in the bucket (their commit_success.txt written)."""
    names = storage.listdir(f"{workdir}/checkpoints")
    return sorted(int(n) for n in names if n.isdigit() and storage.exists(f"{workdir}/checkpoints/{n}/commit_success.txt"))


def same_params(a, b) -> bool:
    import jax

    x, y = jax.tree.leaves(jax.device_get(a["params"])), jax.tree.leaves(jax.device_get(b["params"]))
    return len(x) == len(y) and all(np.array_equal(p, q) for p, q in zip(x, y))


def test_train_py_in_a_bucket_killed_and_restarted_ends_as_the_uninterrupted_local_run(gcs_bucket, tmp_path):
    data, workdir = f"{gcs_bucket}/{tmp_path.name}/data", f"{gcs_bucket}/{tmp_path.name}/run"
    upload_demo(data)
    reference = run(tiny_config.get_config(), str(tmp_path / "local"))  # local data, local workdir, no stop

    # two runs started together on the workdir (the emulator's variables are in this process' environment, so in
    # theirs): one takes the lock and trains, the other is refused in one line naming the holder
    logs = [tmp_path / f"train{i}.log" for i in range(2)]
    procs = [subprocess.Popen(TRAIN + ["--workdir", workdir, *overrides(data)], stdout=open(path, "w"),
                              stderr=subprocess.STDOUT, cwd=ROOT) for path in logs]
    deadline = time.time() + 300
    while not [s for s in finished_steps(workdir) if s >= 4]:
        assert [p.poll() for p in procs].count(None) >= 1, [path.read_text()[-3000:] for path in logs]
        assert time.time() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.2)
    while all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.2)  # the refused one exits at the lock, long before a step
    codes = [p.poll() for p in procs]
    assert sorted(codes, key=str) == [1, None], (codes, [path.read_text()[-3000:] for path in logs])
    refused = logs[codes.index(1)].read_text()
    assert "is in use by another run (host" in refused.splitlines()[-1] and "Traceback" not in refused, refused
    proc = procs[codes.index(None)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert storage.isfile(f"{workdir}/run.lock")  # the killed run's lock, left behind
    done = subprocess.run(TRAIN + ["--workdir", workdir, *overrides(data)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from gs://" in done.stdout
    cfg = bucket_config(data)
    _, state = restore_latest(cfg, workdir)
    assert int(state["step"]) == 12 and same_params(reference.state, state)
    # the workdir in the bucket holds what a local one does
    for name in ("config.json", "metrics.jsonl", "run.log", "model/config.json", "model/flax_model.safetensors"):
        assert storage.isfile(f"{workdir}/{name}"), name
    assert len([n for n in storage.listdir(f"{workdir}/configs") if n.endswith(".json")]) == 2
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             storage.read_bytes(f"{workdir}/metrics.jsonl").decode().splitlines() if '"split": "train"' in line]
    assert set(steps) == set(range(1, 13))
    assert finished_steps(workdir)[-2:] == [11, 12] and len(finished_steps(workdir)) <= 3  # keep 2 (+ the resumed)

    # a damaged newest step: set aside in the bucket, the run resumes from the step before and ends the same
    storage.remove(f"{workdir}/checkpoints/12/state/_METADATA")
    again = run(cfg, workdir)
    assert again.step == 12 and same_params(reference.state, again.state)
    damaged = storage.listdir(f"{workdir}/checkpoints.damaged")
    assert len(damaged) == 1 and damaged[0].startswith("12-"), damaged
    assert storage.isfile(f"{workdir}/checkpoints.damaged/{damaged[0]}/integrity/metadata")
    assert 12 in finished_steps(workdir)  # written again by the resumed run

    # the export, loaded from the bucket, is the trained model; a model saved into the bucket loads back
    from hubert_jax.auto import FlaxAutoModelForPreTraining
    from hubert_jax.weights.state import model_to_flat

    exported = FlaxAutoModelForPreTraining.from_pretrained(f"{workdir}/model")
    local = FlaxAutoModelForPreTraining.from_pretrained(str(tmp_path / "local" / "model"))
    ours, theirs = model_to_flat(exported), model_to_flat(local)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    # `python -m hubert_jax.export` of a step of the bucket's workdir into the bucket; an existing OUT refused
    from hubert_jax.export.__main__ import main as export_main

    assert export_main([workdir, f"{workdir}/step11", "--step", "11"]) == 0
    step11 = model_to_flat(FlaxAutoModelForPreTraining.from_pretrained(f"{workdir}/step11"))
    assert step11.keys() == ours.keys() and not all(np.array_equal(step11[k], ours[k]) for k in ours)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_main([workdir, f"{workdir}/step11"])
    with pytest.raises(ValueError, match=f"export its model with `python -m hubert_jax.export {workdir} OUT"):
        FlaxAutoModelForPreTraining.from_pretrained(workdir)  # the workdir itself is no model: it says so
    exported.save_pretrained(f"{gcs_bucket}/{tmp_path.name}/saved")
    back = model_to_flat(FlaxAutoModelForPreTraining.from_pretrained(f"{gcs_bucket}/{tmp_path.name}/saved"))
    assert all(np.array_equal(back[k], ours[k]) for k in ours)


def test_a_bucket_folder_without_config_json_is_no_model_and_says_so(gcs_bucket, tmp_path):
    from hubert_jax.auto import FlaxAutoModel

    storage.write_bytes(f"{gcs_bucket}/{tmp_path.name}/cut/flax_model.safetensors", b"partial")
    with pytest.raises(FileNotFoundError, match=r"cut: no config.json there"):
        FlaxAutoModel.from_pretrained(f"{gcs_bucket}/{tmp_path.name}/cut")


def test_the_converter_reads_and_writes_a_bucket(gcs_bucket, tmp_path):
    """fairseq's file from the bucket to a hubert-jax directory in the bucket, that directory back to a fairseq
    file in the bucket: the same bytes as the same conversions on the local disk."""
    from hubert_jax.convert.cli import main as convert_main

    fs, remote = storage._filesystem(), f"{gcs_bucket}/{tmp_path.name}"
    source = os.path.join(ROOT, "tests", "fixtures", "peer", "hubert_base", "checkpoint_last.pt")
    fs.put_file(source, f"{remote}/fairseq/checkpoint_last.pt")
    assert convert_main([f"{remote}/fairseq/checkpoint_last.pt", f"{remote}/flax"]) == 0
    assert convert_main([source, str(tmp_path / "flax")]) == 0
    assert sorted(storage.listdir(f"{remote}/flax")) == sorted(os.listdir(tmp_path / "flax"))
    for name in os.listdir(tmp_path / "flax"):
        ours, theirs = storage.read_bytes(f"{remote}/flax/{name}"), (tmp_path / "flax" / name).read_bytes()
        if name.endswith(".safetensors"):  # the header's metadata is a map, in no fixed order: compare the arrays
            from safetensors.numpy import load

            ours, theirs = load(ours), load(theirs)
            assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours), name
        else:
            assert ours == theirs, name
    assert convert_main([f"{remote}/flax", f"{remote}/back.pt", "--to-fairseq"]) == 0
    assert convert_main([str(tmp_path / "flax"), str(tmp_path / "back.pt"), "--to-fairseq"]) == 0
    assert storage.read_bytes(f"{remote}/back.pt") == (tmp_path / "back.pt").read_bytes()
    with pytest.raises(SystemExit):  # an existing OUT is refused, as on disk
        convert_main([f"{remote}/flax", f"{remote}/back.pt", "--to-fairseq"])


def test_metrics_and_tensorboard_of_a_bucket_workdir_reach_the_bucket(gcs_bucket, tmp_path):
    """metrics.jsonl is uploaded at a sync (each checkpoint) and TensorBoard's event file at close, readable as
    TensorBoard reads it: length-prefixed records of Event protos."""
    import struct

    from tensorboardX.proto import event_pb2

    from hubert_jax.training.metrics_log import MetricLog

    workdir = f"{gcs_bucket}/{tmp_path.name}/w"
    log = MetricLog(workdir, 10, tensorboard=True, stream=open(os.devnull, "w"))
    for step in (1, 2, 3):
        log.write(step, "train", {"loss": 1.0 / step})
    log.sync()
    assert storage.read_bytes(f"{workdir}/metrics.jsonl").decode().count('"split": "train"') == 3
    log.close()
    (events,) = storage.listdir(f"{workdir}/tensorboard")
    data, at, values = storage.read_bytes(f"{workdir}/tensorboard/{events}"), 0, []
    while at < len(data):
        (size,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + size])
        values += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        at += 12 + size + 4
    assert values == [(1, "train/loss", 1.0), (2, "train/loss", 0.5), (3, "train/loss", np.float32(1 / 3))]


def test_a_demo_with_a_bucket_workdir_runs_in_a_local_copy_that_goes_back_to_the_bucket(gcs_bucket, tmp_path):
    """The demos' work folder (hubert_jax/demos/common.py): what the bucket holds is there for the run to resume
    from, and what the run writes reaches the bucket, also when it stops with an error; the summary's paths name
    the bucket."""
    from hubert_jax.demos.common import in_work_folder

    workdir = f"{gcs_bucket}/{tmp_path.name}/demo"
    storage.write_bytes(f"{workdir}/mfcc/train.len", b"3\n")  # an earlier run's stage

    def job(folder):
        assert open(os.path.join(folder, "mfcc", "train.len")).read() == "3\n"
        os.makedirs(os.path.join(folder, "model"))
        open(os.path.join(folder, "model", "config.json"), "w").write("{}")
        return {"export": os.path.join(folder, "model"), "steps": 3, "runs": [os.path.join(folder, "iter1")]}

    assert in_work_folder(workdir, job) == {"export": f"{workdir}/model", "steps": 3, "runs": [f"{workdir}/iter1"]}
    assert storage.read_bytes(f"{workdir}/model/config.json") == b"{}"
    assert storage.read_bytes(f"{workdir}/mfcc/train.len") == b"3\n"

    def stopped(folder):
        open(os.path.join(folder, "stage2.done"), "w").write("yes")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        in_work_folder(workdir, stopped)
    assert storage.read_bytes(f"{workdir}/stage2.done") == b"yes" and storage.isfile(f"{workdir}/model/config.json")
