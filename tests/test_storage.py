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
