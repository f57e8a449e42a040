"""The label stages read and write a bucket (gs://, on the Cloud Storage emulator this test process starts:
tests/storage_emulator.py), through `python -m hubert_jax.labels`: MFCC sharded over two hosts, k-means, labels and
their quality; a model's features dumped over two hosts, and labels from the model over two hosts joined by the
last. Each host has its own scratch folder (hubert_jax/labels/staging.py), and every output equals what the same
commands write on a local disk."""

import io
import json
import os

import numpy as np

from hubert_jax import storage
from hubert_jax.labels.cli import main
from tests import tiny_config

DEMO = os.path.join(tiny_config.ROOT, "data", "demo")
UTTERANCES = 24


def corpus(remote: str, local: str) -> None:
    """The first utterances of data/demo/train.tsv with their phones: in the bucket (the manifest's root the
    bucket folder itself, the audio uploaded) and on disk (the root data/demo)."""
    lines = open(os.path.join(DEMO, "train.tsv"), encoding="utf-8").read().splitlines()[1: UTTERANCES + 1]
    phones = open(os.path.join(DEMO, "train.phn"), encoding="utf-8").read().splitlines()[:UTTERANCES]
    os.makedirs(local, exist_ok=True)
    for root, folder, put in ((".", remote, storage.write_bytes), (DEMO, local, _write)):
        put(f"{folder}/train.tsv", "\n".join([root] + lines).encode() + b"\n")
        put(f"{folder}/train.phn", "\n".join(phones).encode() + b"\n")
    names = [line.split("\t")[0] for line in lines]
    storage._filesystem().put([os.path.join(DEMO, n) for n in names], [f"{remote}/{n}" for n in names])


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def labels(monkeypatch, scratch, *argv) -> None:
    """One label command, as a host whose scratch folder is `scratch`."""
    monkeypatch.setenv("HUBERT_JAX_SCRATCH", str(scratch))
    assert main([str(a) for a in argv]) == 0


def centroids(path: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(path)))


def test_mfcc_kmeans_label_and_quality_in_a_bucket_equal_the_stages_on_disk(gcs_bucket, tmp_path, monkeypatch, capsys):
    remote, local = f"{gcs_bucket}/{tmp_path.name}", str(tmp_path / "disk")
    corpus(remote, local)
    fit = ["--clusters", 8, "--n-init", 2, "--max-iter", 20]
    labels(monkeypatch, tmp_path / "a", "mfcc", "--manifest", f"{local}/train.tsv", "--out", f"{local}/mfcc")
    labels(monkeypatch, tmp_path / "a", "kmeans", "--feats", f"{local}/mfcc", *fit, "--out", f"{local}/km.npy")
    labels(monkeypatch, tmp_path / "a", "label", "--feats", f"{local}/mfcc", "--centroids", f"{local}/km.npy",
           "--out", f"{local}/train.km")

    for rank, host in ((0, "a"), (1, "b")):  # two hosts, each its shard
        labels(monkeypatch, tmp_path / host, "mfcc", "--manifest", f"{remote}/train.tsv", "--out", f"{remote}/mfcc",
               "--rank", rank, "--world", 2)
    assert {"mfcc_0_2.npy", "mfcc_0_2.len", "mfcc_1_2.npy", "mfcc_1_2.len"} <= set(storage.listdir(remote))
    labels(monkeypatch, tmp_path / "c", "kmeans", "--feats", f"{remote}/mfcc", "--nshard", 2, *fit,
           "--out", f"{remote}/km.npy")
    labels(monkeypatch, tmp_path / "d", "label", "--feats", f"{remote}/mfcc", "--nshard", 2,
           "--centroids", f"{remote}/km.npy", "--out", f"{remote}/train.km")

    np.testing.assert_array_equal(centroids(f"{remote}/km.npy"), np.load(f"{local}/km.npy"))
    assert storage.read_bytes(f"{remote}/train.km") == open(f"{local}/train.km", "rb").read()
    made = json.loads(storage.read_bytes(f"{remote}/train.km.made.json"))  # names the bucket, not a scratch copy
    assert made["feats"] == f"{remote}/mfcc" and made["centroids"] == f"{remote}/km.npy"
    assert made["feats_made"][1]["manifest"] == f"{remote}/train.tsv"
    assert json.loads(storage.read_bytes(f"{remote}/km.npy.made.json"))["feats"] == f"{remote}/mfcc"

    capsys.readouterr()
    for where in (local, remote):
        labels(monkeypatch, tmp_path / "a", "quality", "--km", f"{where}/train.km", "--phones", f"{where}/train.phn",
               "--manifest", f"{where}/train.tsv")
    on_disk, in_bucket = capsys.readouterr().out.splitlines()
    assert on_disk.split(": ", 1)[1] == in_bucket.split(": ", 1)[1] and "PNMI" in in_bucket


def test_dump_and_labels_from_a_model_over_two_hosts_in_a_bucket_equal_one_host_on_disk(gcs_bucket, tmp_path,
                                                                                        monkeypatch):
    from flax import nnx

    from hubert_jax.config import preset
    from hubert_jax.models import HubertModel

    remote, local = f"{gcs_bucket}/{tmp_path.name}", str(tmp_path / "disk")
    corpus(remote, local)
    model = HubertModel(preset("hubert-base").replace(**tiny_config.TINY_MODEL), rngs=nnx.Rngs(3))
    model.save_pretrained(f"{local}/model")
    model.save_pretrained(f"{remote}/model")
    layer = ["--layer", 1, "--chunk-size", 8]
    labels(monkeypatch, tmp_path / "a", "dump", "--manifest", f"{local}/train.tsv", "--model", f"{local}/model",
           *layer, "--out", f"{local}/l1", "--rank", 0, "--world", 1)
    labels(monkeypatch, tmp_path / "a", "kmeans", "--feats", f"{local}/l1_0_1", "--clusters", 8, "--n-init", 2,
           "--out", f"{local}/km.npy")
    labels(monkeypatch, tmp_path / "a", "label", "--model", f"{local}/model", *layer, "--manifest",
           f"{local}/train.tsv", "--centroids", f"{local}/km.npy", "--out", f"{local}/train.km")

    for rank, host in ((0, "a"), (1, "b")):
        labels(monkeypatch, tmp_path / host, "dump", "--manifest", f"{remote}/train.tsv", "--model", f"{remote}/model",
               *layer, "--out", f"{remote}/l1", "--rank", rank, "--world", 2)
    labels(monkeypatch, tmp_path / "c", "kmeans", "--feats", f"{remote}/l1", "--nshard", 2, "--clusters", 8,
           "--n-init", 2, "--out", f"{remote}/km.npy")
    np.testing.assert_array_equal(centroids(f"{remote}/km.npy"), np.load(f"{local}/km.npy"))
    assert not [n for n in storage.listdir(remote) if ".chunk" in n]  # the chunks stayed in the scratch folders

    for rank, host in ((0, "a"), (1, "b")):  # the second host to finish finds both parts and joins them
        labels(monkeypatch, tmp_path / host, "label", "--model", f"{remote}/model", *layer, "--manifest",
               f"{remote}/train.tsv", "--centroids", f"{remote}/km.npy", "--out", f"{remote}/train.km",
               "--rank", rank, "--world", 2)
        assert storage.exists(f"{remote}/train.km") == (rank == 1)
    assert storage.read_bytes(f"{remote}/train.km") == open(f"{local}/train.km", "rb").read()
    assert json.loads(storage.read_bytes(f"{remote}/train.km.part1-of-2.made.json"))["model"] == f"{remote}/model"


def test_a_manifest_of_a_bucket_folder_lists_what_the_same_folder_on_disk_lists(gcs_bucket, tmp_path, monkeypatch):
    import shutil

    remote = f"{gcs_bucket}/{tmp_path.name}"
    lines = open(os.path.join(DEMO, "train.tsv"), encoding="utf-8").read().splitlines()[1: UTTERANCES + 1]
    names = [line.split("\t")[0] for line in lines]
    for i, name in enumerate(names):  # in two folders and a hidden one, as a corpus would be laid out
        for folder in (str(tmp_path / "audio"), f"{remote}/audio"):
            target = f"{folder}/{'.hidden' if i == 0 else f'spk{i % 2}'}/{os.path.basename(name)}"
            if storage.is_remote(target):
                storage.upload_file(os.path.join(DEMO, name), target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy(os.path.join(DEMO, name), target)
    for root, out in ((tmp_path / "audio", tmp_path / "manifests"), (f"{remote}/audio", f"{remote}/manifests")):
        labels(monkeypatch, tmp_path / "a", "manifest", root, "--out", out, "--valid-percent", 0.2)
    for split in ("train", "valid"):
        on_disk = (tmp_path / "manifests" / f"{split}.tsv").read_text().splitlines()
        in_bucket = storage.read_bytes(f"{remote}/manifests/{split}.tsv").decode().splitlines()
        assert in_bucket[0] == f"{remote}/audio" and in_bucket[1:] == on_disk[1:] and len(on_disk) > 1, split
    assert sum(len(storage.read_bytes(f"{remote}/manifests/{s}.tsv").splitlines()) - 1
               for s in ("train", "valid")) == UTTERANCES - 1  # the hidden folder's file left out


def test_a_stale_copy_in_a_hosts_scratch_folder_never_replaces_the_buckets_object(gcs_bucket, tmp_path):
    """A host's scratch folder outlives a command: a file an earlier command left there is not uploaded by a later
    one, which uploads only what it wrote (here: a label part, while another host has written the joined file)."""
    import time

    from hubert_jax.labels.staging import Staging

    remote = f"{gcs_bucket}/{tmp_path.name}/labels/train.km"
    stage = Staging(str(tmp_path / "scratch"))
    stale = stage.local(remote)
    os.makedirs(os.path.dirname(stale))
    _write(stale, b"an earlier command's labels\n")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    storage.write_bytes(remote, b"joined by another host\n")

    out = stage.output(remote, owner=False)
    assert out == stale
    _write(f"{out}.part1-of-2", b"this host's part\n")
    assert stage.publish() == [f"{remote}.part1-of-2"]
    assert storage.read_bytes(remote) == b"joined by another host\n"
    assert storage.read_bytes(f"{remote}.part1-of-2") == b"this host's part\n"
