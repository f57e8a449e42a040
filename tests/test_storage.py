"""Data in a bucket (hubert_jax/storage.py), against a Cloud Storage emulator this test process starts
(tests/storage_emulator.py): manifests, the audio they list, label files and the MFCC stage read from gs://
give exactly what the same files give from the local disk, and remote failures end in one line naming the
path and the fix."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hubert_jax import storage
from hubert_jax.data.manifest import IntLabelFile, check_files_exist, iter_audio, read_label_lines, read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "demo")
FILES = 6


def local_manifest(tmp_path):
    """The demo's first FILES train utterances: a manifest relative to its folder, and their phone labels."""
    with open(os.path.join(DEMO, "train.tsv"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(os.path.join(DEMO, "train.phn"), encoding="utf-8") as f:
        phones = f.read().splitlines()
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "train.tsv").write_text("\n".join([DEMO] + lines[1:FILES + 1]) + "\n", encoding="utf-8")
    (folder / "train.phn").write_text("\n".join(phones[:FILES]) + "\n", encoding="utf-8")
    return folder, [line.split("\t")[0] for line in lines[1:FILES + 1]]


@pytest.fixture
def bucket_copy(gcs_bucket, tmp_path):
    """(local folder, gs:// folder) holding the same manifest (relative root "."), audio and labels."""
    local, rel = local_manifest(tmp_path)
    remote = f"{gcs_bucket}/{tmp_path.name}/demo"
    fs = storage._filesystem()
    for name in rel:
        fs.put_file(os.path.join(DEMO, name), f"{remote}/{name}")
    rows = (local / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    with storage.open(f"{remote}/train.tsv", "w") as f:
        f.write("\n".join(["."] + rows) + "\n")
    fs.put_file(str(local / "train.phn"), f"{remote}/train.phn")
    return local, remote


def test_a_manifest_its_audio_and_labels_read_from_a_bucket_as_from_disk(bucket_copy):
    local, remote = bucket_copy
    here, there = read_manifest(str(local / "train.tsv")), read_manifest(f"{remote}/train.tsv")
    assert [e.path for e in there] == [f"{remote}/{os.path.relpath(e.path, DEMO)}" for e in here]
    assert [(e.num_samples, e.line) for e in there] == [(e.num_samples, e.line) for e in here]
    check_files_exist(f"{remote}/train.tsv", there)
    (near, _), (far, _) = iter_audio(here, strict=True), iter_audio(there, strict=True, threads=3)
    for (_, a), (_, b) in zip(near, far, strict=True):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    frames = [e.num_samples // 160 for e in here]  # the labels' 100 Hz frames
    ours, theirs = (IntLabelFile(p, frames, tolerance=2) for p in (str(local / "train.phn"), f"{remote}/train.phn"))
    assert ours.max_label == theirs.max_label
    for i in range(FILES):
        assert np.array_equal(ours[i], theirs[i])
    assert read_label_lines(f"{remote}/train.phn", FILES) == read_label_lines(str(local / "train.phn"), FILES)


def test_a_missing_object_is_named_by_its_manifest_line(bucket_copy):
    _, remote = bucket_copy
    entries = read_manifest(f"{remote}/train.tsv")
    storage._filesystem().rm(entries[2].path)
    with pytest.raises(FileNotFoundError, match=r"1 audio file\(s\) missing \(line 4: gs://"):
        check_files_exist(f"{remote}/train.tsv", entries)


def test_the_mfcc_stage_reads_a_bucket_manifest_like_a_local_one(bucket_copy, tmp_path):
    local, remote = bucket_copy
    outs = {}
    for where, manifest in (("local", str(local / "train.tsv")), ("bucket", f"{remote}/train.tsv")):
        outs[where] = str(tmp_path / f"mfcc_{where}")
        done = subprocess.run([sys.executable, "-m", "hubert_jax.labels", "mfcc", "--manifest", manifest,
                               "--out", outs[where]], capture_output=True, text=True, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-2000:]
    for suffix in (".npy", ".len"):
        with open(outs["local"] + suffix, "rb") as a, open(outs["bucket"] + suffix, "rb") as b:
            assert a.read() == b.read(), suffix


def test_remote_failures_end_in_one_line_naming_the_path(gcs_bucket):
    missing = f"{gcs_bucket}/nothing/here.tsv"
    with pytest.raises(FileNotFoundError) as caught:
        read_manifest(missing)
    message = str(caught.value)
    assert missing in message and "no such object" in message and "\n" not in message
    with pytest.raises(storage.MissingError, match="gs://no-such-bucket-here/x.npy: no such object"):
        storage.read_bytes("gs://no-such-bucket-here/x.npy")
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/tmp/x") and not storage.is_remote("tfds://x/y")


# ---------------------------------------------------------------------------------------------- the lock
FOREIGN = {"host": "tpu-vm-7", "boot_id": "x", "pid_ns": 1, "pid": 4242, "started": "2026-01-01T00:00:00+00:00",
           "command": ["train.py"], "token": "theirs", "heartbeat": 3}
ACQUIRE = """
import sys
from hubert_jax.training.workdir_lock import ObjectLock, WorkdirBusy
lock = ObjectLock(sys.argv[1], heartbeat_s=60)
sys.stdin.readline()  # every contender waits for the same go
try:
    lock.acquire()
    print("took", flush=True)
    sys.stdin.readline()
    lock.release()
except WorkdirBusy as e:
    print("busy", str(e).splitlines()[0], flush=True)
"""


def test_of_runs_started_together_on_one_bucket_workdir_exactly_one_takes_it(gcs_bucket, tmp_path):
    import json

    workdir = f"{gcs_bucket}/{tmp_path.name}/run"
    procs = [subprocess.Popen([sys.executable, "-c", ACQUIRE, workdir], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(4)]
    import time
    time.sleep(8)  # every contender imported and waiting
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    said = {}
    for p in procs:
        said[p] = p.stdout.readline().strip()
    took = [p for p, line in said.items() if line == "took"]
    assert len(took) == 1, {p.pid: (line, p.stderr.read()[-500:] if not line else "") for p, line in said.items()}
    holder = json.loads(storage.read_bytes(f"{workdir}/run.lock"))
    assert holder["pid"] == took[0].pid
    for p, line in said.items():
        if p is not took[0]:
            assert line.startswith("busy") and f"pid {took[0].pid}" in line, line
    took[0].stdin.write("done\n")
    took[0].stdin.flush()
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()[-2000:]
    assert not storage.exists(f"{workdir}/run.lock")  # given back


def test_another_machines_lock_in_a_bucket_counts_by_its_age_on_the_stores_clock(gcs_bucket, tmp_path, caplog):
    import json
    import logging
    import time

    from hubert_jax.training.workdir_lock import ObjectLock, WorkdirBusy

    lock = ObjectLock(f"{gcs_bucket}/{tmp_path.name}/run", stale_after_s=2.0, heartbeat_s=60)
    assert storage.create_if_absent(lock.path, json.dumps(FOREIGN).encode()) is not None
    with pytest.raises(WorkdirBusy, match="host tpu-vm-7, pid 4242"):
        lock.acquire()
    time.sleep(2.5)  # no heartbeat for longer than stale_after_s, as the store's clock counts it
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert "took over a stale lock (no heartbeat for " in caplog.text and "host tpu-vm-7" in caplog.text
    assert lock.held()
    lock.release()
    assert not storage.exists(lock.path)


def test_a_bucket_lock_taken_over_is_never_written_back_and_stops_the_run(gcs_bucket, tmp_path):
    import json

    from hubert_jax.training.workdir_lock import LockLost, ObjectLock

    lock = ObjectLock(f"{gcs_bucket}/{tmp_path.name}/run", heartbeat_s=3600).acquire()
    lock.check()
    mine = storage.stat(lock.path)["generation"]
    lock._write_heartbeat({**lock._record(), "started": lock._started})  # a heartbeat: a new generation, still ours
    assert lock.held() and storage.stat(lock.path)["generation"] != mine
    # another run takes it over (it judged this run stale)
    assert storage.replace_if_generation(lock.path, json.dumps(FOREIGN).encode(),
                                         storage.stat(lock.path)["generation"]) is not None
    lock._write_heartbeat({**lock._record(), "started": lock._started})  # a late heartbeat: refused by the store
    assert json.loads(storage.read_bytes(lock.path))["token"] == "theirs"
    with pytest.raises(LockLost, match="host tpu-vm-7"):
        lock.check()
    lock.release()  # not ours any more: left in place
    assert json.loads(storage.read_bytes(lock.path))["token"] == "theirs"


def test_each_kind_of_remote_failure_names_its_fix():
    """What gcsfs and google-auth raise (their own exception classes) for a missing object, no permission and no
    credentials (gcsfs goes anonymous when it finds none): one line each, the path and the fix. The emulator
    checks no permissions, so these are the client's exceptions, not a server's answers."""
    from gcsfs.retry import HttpError
    from google.auth.exceptions import DefaultCredentialsError

    path = "gs://corpus/ko/train.tsv"
    cases = {
        HttpError({"code": 404, "message": "No such object: corpus/ko/train.tsv"}): "no such object",
        FileNotFoundError(path): "no such object",
        HttpError({"code": 403, "message": "sa@p.iam.gserviceaccount.com does not have storage.objects.get access "
                                           "to the Google Cloud Storage object."}): "roles/storage.objectAdmin",
        HttpError({"code": 401, "message": "Anonymous caller does not have storage.objects.get access to the "
                                           "Google Cloud Storage object."}): "gcloud auth application-default login",
        DefaultCredentialsError("Your default credentials were not found."): "GOOGLE_APPLICATION_CREDENTIALS",
    }
    for error, fix in cases.items():
        message = str(storage._explained(path, error))
        assert message.startswith(f"{path}: ") and fix in message and "\n" not in message, (error, message)
    assert isinstance(storage._explained(path, FileNotFoundError(path)), FileNotFoundError)
