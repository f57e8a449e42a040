"""A prepared tensorflow-datasets split as an audio source: the dataset is written on the spot in the layout
`tfds build --file_format=array_record` produces (tfds' own serializer, protos and ArrayRecord writer;
no TensorFlow), shaped like tfds' `librispeech` (int16 speech in an int64 Audio feature, a Text feature)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from hubert_jax.data.manifest import check_files_exist, iter_audio, read_manifest
from hubert_jax.data.tfds_source import Address, TfdsSplit, open_split
from hubert_jax.labels import cli

AUDIO = "tensorflow_datasets.core.features.audio_feature.Audio"


def write_tfds_dataset(data_dir, name="tiny_speech", version="1.2.0", splits=None, file_format="array_record"):
    from array_record.python.array_record_module import ArrayRecordWriter
    from google.protobuf import json_format
    from tensorflow_datasets.core import example_serializer
    from tensorflow_datasets.core.features import feature as feature_lib
    from tensorflow_datasets.core.proto import dataset_info_pb2, feature_pb2

    path = os.path.join(data_dir, name, version)
    os.makedirs(path)
    features = feature_pb2.Feature(
        python_class_name="tensorflow_datasets.core.features.features_dict.FeaturesDict",
        features_dict=feature_pb2.FeaturesDict(features={
            "speech": feature_pb2.Feature(python_class_name=AUDIO, audio=feature_pb2.AudioFeature(
                shape=feature_pb2.Shape(dimensions=[-1]), dtype="int64", sample_rate=16000, encoding="none")),
            "text": feature_pb2.Feature(python_class_name="tensorflow_datasets.core.features.text_feature.Text",
                                        text=feature_pb2.TextFeature()),
            "speaker_id": feature_pb2.Feature(
                python_class_name="tensorflow_datasets.core.features.tensor_feature.Tensor",
                tensor=feature_pb2.TensorFeature(shape=feature_pb2.Shape(), dtype="int64", encoding="none")),
        }))
    with open(os.path.join(path, "features.json"), "w") as f:
        json.dump(json_format.MessageToDict(features), f)
    serializer = example_serializer.ExampleSerializer({
        "speech": feature_lib.TensorInfo(shape=(None,), dtype=np.int64),
        "text": feature_lib.TensorInfo(shape=(), dtype=np.object_),
        "speaker_id": feature_lib.TensorInfo(shape=(), dtype=np.int64)})
    info = dataset_info_pb2.DatasetInfo(name=name, version=version, file_format=file_format)
    for split, shards in (splits or {}).items():
        for i, examples in enumerate(shards):
            writer = ArrayRecordWriter(os.path.join(path, f"{name}-{split}.{file_format}-{i:05d}-of-"
                                                          f"{len(shards):05d}"), "group_size:1")
            for ex in examples:
                writer.write(serializer.serialize_example(ex))
            writer.close()
        info.splits.add(name=split, shard_lengths=[len(s) for s in shards])
    with open(os.path.join(path, "dataset_info.json"), "w") as f:
        f.write(json_format.MessageToJson(info))
    return path


def utterance(seed, seconds):
    rng = np.random.default_rng(seed)
    speech = np.clip(rng.normal(0, 3000, int(16000 * seconds)), -32768, 32767).astype(np.int64)
    return {"speech": speech, "text": f"utterance {seed}".upper().encode(), "speaker_id": seed % 3}


@pytest.fixture()
def dataset(tmp_path):
    shards = [[utterance(0, 0.5), utterance(1, 0.3)], [utterance(2, 0.4)]]
    write_tfds_dataset(str(tmp_path / "tfds"), splits={"train": shards, "dev": [[utterance(7, 0.2)]]})
    return str(tmp_path / "tfds"), [ex for shard in shards for ex in shard]


def test_address_round_trip():
    a = Address.parse("tfds://librispeech/clean:2.1.0/train_clean100?data_dir=/data/tfds")
    assert (a.name, a.config, a.version, a.split, a.data_dir) == ("librispeech", "clean", "2.1.0", "train_clean100",
                                                                  "/data/tfds")
    assert Address.parse(str(a)) == a
    with pytest.raises(ValueError, match="tfds://NAME"):
        Address.parse("tfds://librispeech")


def test_split_reads_every_example_in_order(dataset):
    data_dir, examples = dataset
    split = TfdsSplit(Address("tiny_speech", "train", data_dir=data_dir))
    assert len(split) == 3 and split.audio_key == "speech" and split.text_key == "text"
    for i, ex in enumerate(examples):
        audio, rate = split.audio(i)
        assert rate == 16000 and audio.shape == (len(ex["speech"]), 1)
        np.testing.assert_array_equal(audio[:, 0], ex["speech"].astype(np.float32) / 32768)
        assert split.text(i) == ex["text"].decode()
    with pytest.raises(IndexError, match="out of range"):
        split.audio(3)


def test_manifest_from_split_feeds_the_label_stages(dataset, tmp_path, capsys):
    data_dir, examples = dataset
    out = str(tmp_path / "manifests" / "train")
    assert cli.main(["tfds", "--dataset", "tfds://tiny_speech/train", "--data-dir", data_dir, "--out", out]) == 0
    lines = open(f"{out}.tsv").read().splitlines()
    assert lines[0] == f"tfds://tiny_speech/train?data_dir={data_dir}"
    assert lines[1:] == [f"{i}\t{len(ex['speech'])}" for i, ex in enumerate(examples)]
    assert open(f"{out}.wrd").read().splitlines() == [ex["text"].decode() for ex in examples]

    entries = read_manifest(f"{out}.tsv")
    check_files_exist(f"{out}.tsv", entries)
    stream, skipped = iter_audio(entries, strict=True)
    got = [audio for _, audio in stream]
    assert not skipped and [len(a) for a in got] == [len(ex["speech"]) for ex in examples]
    np.testing.assert_array_equal(got[2], examples[2]["speech"].astype(np.float32) / 32768)

    assert cli.main(["mfcc", "--manifest", f"{out}.tsv", "--out", str(tmp_path / "mfcc")]) == 0
    lengths = np.loadtxt(tmp_path / "mfcc.len", dtype=int)
    assert lengths.tolist() == [1 + (len(ex["speech"]) - 400) // 160 for ex in examples]  # 25 ms every 10 ms


def test_bad_datasets_are_named(dataset, tmp_path):
    data_dir, _ = dataset
    with pytest.raises(ValueError, match=r"no split 'test'.*\['dev', 'train'\]"):
        TfdsSplit(Address("tiny_speech", "test", data_dir=data_dir))
    with pytest.raises(FileNotFoundError, match="no prepared versions of 'librispeech'.*tfds build"):
        TfdsSplit(Address("librispeech", "train", data_dir=data_dir))
    write_tfds_dataset(str(tmp_path / "tfrec"), splits={}, file_format="tfrecord")
    with pytest.raises(ValueError, match="prepared as 'tfrecord'.*--file_format=array_record"):
        TfdsSplit(Address("tiny_speech", "train", data_dir=str(tmp_path / "tfrec")))
    os.remove(os.path.join(data_dir, "tiny_speech", "1.2.0", "tiny_speech-train.array_record-00001-of-00002"))
    with pytest.raises(FileNotFoundError, match="1 of 2 shard files of split 'train' missing"):
        TfdsSplit(Address("tiny_speech", "train", data_dir=data_dir))


def test_manifest_index_past_the_split_is_reported(dataset, tmp_path):
    data_dir, _ = dataset
    manifest = tmp_path / "dev.tsv"
    manifest.write_text(f"tfds://tiny_speech/dev?data_dir={data_dir}\n0\t3200\n5\t3200\n")
    open_split.cache_clear()
    with pytest.raises(FileNotFoundError, match=r"dev.tsv: 1 audio file\(s\) missing \(line 3: tfds://"):
        check_files_exist(str(manifest), read_manifest(str(manifest)))


def test_a_split_in_a_bucket_reads_as_the_same_split_on_disk(dataset, gcs_bucket, tmp_path, monkeypatch):
    """The prepared dataset uploaded to the bucket (the emulator): its manifest written into the bucket names it
    there, and its audio and MFCC equal the split's on disk."""
    from hubert_jax import storage

    data_dir, examples = dataset
    remote = f"{gcs_bucket}/{tmp_path.name}"
    monkeypatch.setenv("HUBERT_JAX_SCRATCH", str(tmp_path / "scratch"))  # where mfcc writes before uploading
    for folder, _, files in os.walk(data_dir):
        for name in files:
            path = os.path.join(folder, name)
            storage.upload_file(path, f"{remote}/tfds/{os.path.relpath(path, data_dir)}")
    out = f"{remote}/manifests/train"
    assert cli.main(["tfds", "--dataset", "tfds://tiny_speech/train", "--data-dir", f"{remote}/tfds", "--out", out]) == 0
    lines = storage.read_bytes(f"{out}.tsv").decode().splitlines()
    assert lines[0] == f"tfds://tiny_speech/train?data_dir={remote}/tfds"
    assert lines[1:] == [f"{i}\t{len(ex['speech'])}" for i, ex in enumerate(examples)]
    assert storage.read_bytes(f"{out}.wrd").decode().splitlines() == [ex["text"].decode() for ex in examples]

    stream, skipped = iter_audio(read_manifest(f"{out}.tsv"), strict=True)
    for (_, audio), ex in zip(stream, examples, strict=True):
        np.testing.assert_array_equal(audio, ex["speech"].astype(np.float32) / 32768)
    assert not skipped
    local = str(tmp_path / "local")
    assert cli.main(["tfds", "--dataset", "tfds://tiny_speech/train", "--data-dir", data_dir, "--out", local]) == 0
    for manifest, prefix in ((f"{local}.tsv", tmp_path / "mfcc_local"), (f"{out}.tsv", f"{remote}/mfcc")):
        assert cli.main(["mfcc", "--manifest", manifest, "--out", str(prefix)]) == 0
    assert storage.read_bytes(f"{remote}/mfcc.npy") == open(tmp_path / "mfcc_local.npy", "rb").read()
