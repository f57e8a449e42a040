"""Prepared tensorflow-datasets speech datasets (e.g. `librispeech`) as an audio source next to manifests.

A split is addressed as `tfds://NAME[/CONFIG][:VERSION]/SPLIT`, e.g. `tfds://librispeech/train_clean100`.
`write_manifest` turns a split into an ordinary manifest whose root line is that address and whose lines
are `example_index<TAB>num_samples`; every stage that takes a manifest (MFCC, dumping, label checks,
the pretraining input pipeline) then reads audio straight from the dataset's record files, and `.km`
label files stay in manifest order as usual. Transcripts, when the dataset has a text feature, go to a
`.wrd` file beside it.

TFDS' own `Audio` feature needs TensorFlow even to be constructed, so this module reads what `tfds build`
wrote without it: `dataset_info.json` for the splits and shards, `features.json` for which feature holds
the audio, ArrayRecord shards through the `array_record` package, and `tf.train.Example` records through
the proto that tensorflow-datasets ships. Datasets must be prepared in the random-access ArrayRecord
format (`tfds build librispeech --file_format=array_record`), which Grain needs as well.

The data dir may be a bucket (`--data-dir gs://BUCKET/tensorflow_datasets`, or `?data_dir=` in the address):
the JSON files go through hubert_jax.storage, and `array_record` reads the shards from Cloud Storage with its
own client (Google's default credentials; `CLOUD_STORAGE_EMULATOR_ENDPOINT` points it at an emulator), a
ranged request per record, so no host copies the dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re

import numpy as np

from hubert_jax import storage
from hubert_jax.lengths import SAMPLE_RATE

SCHEME = "tfds://"
_ADDRESS = re.compile(r"^tfds://(?P<name>[^/:]+)(?:/(?P<config>[^/:]+))?(?::(?P<version>[\d.]+))?/(?P<split>[^/]+)$")
_AUDIO_CLASS = "tensorflow_datasets.core.features.audio_feature.Audio"
_TEXT_CLASS = "tensorflow_datasets.core.features.text_feature.Text"


def default_data_dir() -> str:
    """Where tfds keeps datasets when no data_dir is given ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


@dataclasses.dataclass(frozen=True)
class Address:
    """A tfds:// address: dataset name, split, optional config, version and data_dir."""
    name: str
    split: str
    config: str | None = None
    version: str | None = None
    data_dir: str | None = None

    @classmethod
    def parse(cls, text: str, data_dir: str | None = None) -> Address:
        """The address of tfds://NAME[/CONFIG][:VERSION]/SPLIT[?data_dir=DIR] (ValueError naming the text otherwise)."""
        text, _, query = text.partition("?")
        m = _ADDRESS.match(text)
        if m is None:
            raise ValueError(f"{text!r}: expected a dataset address tfds://NAME[/CONFIG][:VERSION]/SPLIT")
        if query.startswith("data_dir="):
            data_dir = query[len("data_dir="):]
        return cls(m["name"], m["split"], m["config"], m["version"], data_dir)

    def __str__(self) -> str:
        out = SCHEME + self.name + (f"/{self.config}" if self.config else "")
        out += (f":{self.version}" if self.version else "") + f"/{self.split}"
        return out + (f"?data_dir={self.data_dir}" if self.data_dir else "")


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def dataset_dir(address: Address) -> str:
    """The prepared dataset's folder: DATA_DIR/NAME[/CONFIG]/VERSION (the newest version if none given)."""
    base = storage.join(address.data_dir or default_data_dir(), address.name)
    if address.config:
        base = storage.join(base, address.config)
    if address.version:
        path = storage.join(base, address.version)
    else:
        versions = sorted((v for v in storage.listdir(base) if re.fullmatch(r"\d+\.\d+\.\d+", v)), key=_version_key)
        if not versions:
            raise FileNotFoundError(f"{base}: no prepared versions of {address.name!r} (run `tfds build "
                                    f"{address.name} --file_format=array_record --data_dir "
                                    f"{address.data_dir or default_data_dir()}` first)")
        path = storage.join(base, versions[-1])
    if not storage.isfile(storage.join(path, "dataset_info.json")):
        raise FileNotFoundError(f"{path}: no dataset_info.json; is this a prepared tensorflow-datasets folder?")
    return path


def _read_json(path: str) -> dict:
    try:
        with storage.open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e


def _top_features(features_json: dict) -> dict[str, dict]:
    return features_json.get("featuresDict", {}).get("features", {})


class TfdsSplit:
    """Random access to one split's examples: `len`, `audio(i)`, `text(i)`, `num_samples()`."""

    def __init__(self, address: Address | str, *, audio_key: str | None = None, text_key: str | None = None):
        self.address = Address.parse(address) if isinstance(address, str) else address
        self.path = dataset_dir(self.address)
        info = _read_json(storage.join(self.path, "dataset_info.json"))
        file_format = info.get("fileFormat", "tfrecord")
        if file_format != "array_record":
            raise ValueError(f"{self.path}: prepared as {file_format!r}; hubert-jax reads the random-access "
                             f"ArrayRecord format: rebuild with `tfds build {self.address.name} "
                             f"--file_format=array_record`")
        splits = {s["name"]: s for s in info.get("splits", [])}
        if self.address.split not in splits:
            raise ValueError(f"{self.path}: no split {self.address.split!r} (have {sorted(splits)})")
        split = splits[self.address.split]
        lengths = [int(n) for n in split.get("shardLengths", [])]
        template = split.get("filepathTemplate") or "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
        self.files = [storage.join(self.path, template.format(
            DATASET=info["name"], SPLIT=self.address.split, FILEFORMAT=file_format,
            SHARD_X_OF_Y=f"{i:05d}-of-{len(lengths):05d}", SHARD_INDEX=f"{i:05d}", NUM_SHARDS=f"{len(lengths):05d}"))
            for i in range(len(lengths))]
        missing = [f for f in self.files if not storage.isfile(f)]
        if missing:
            raise FileNotFoundError(f"{self.path}: {len(missing)} of {len(self.files)} shard files of split "
                                    f"{self.address.split!r} missing (first: {missing[0]})")
        self._length = sum(lengths)
        features = _top_features(_read_json(storage.join(self.path, "features.json")))
        audio = [k for k, v in features.items() if v.get("pythonClassName") == _AUDIO_CLASS]
        self.audio_key = audio_key or (audio[0] if len(audio) == 1 else None)
        if self.audio_key not in features:
            raise ValueError(f"{self.path}/features.json: cannot tell the audio feature (Audio features: {audio}; "
                             f"pass audio_key)")
        spec = features[self.audio_key].get("audio", {})
        dims = spec.get("shape", {}).get("dimensions", ["-1"])
        self.channels = int(dims[1]) if len(dims) == 2 and int(dims[1]) > 0 else 1
        self.sample_rate = int(spec.get("sampleRate", 0)) or None
        self.lazy_encoded = bool(spec.get("lazyDecode", False))
        self.dtype = np.dtype(spec.get("dtype", "int64"))
        texts = [k for k, v in features.items() if v.get("pythonClassName") == _TEXT_CLASS]
        self.text_key = text_key or (texts[0] if len(texts) == 1 else None)
        self._source = None

    def __len__(self) -> int:
        return self._length

    def _records(self):
        if self._source is None:
            from array_record.python.array_record_data_source import (
                ArrayRecordDataSource,
            )

            self._source = ArrayRecordDataSource(self.files)
            if len(self._source) != self._length:
                raise ValueError(f"{self.path}: split {self.address.split!r} has {len(self._source)} records, "
                                 f"dataset_info.json says {self._length}")
        return self._source

    def example(self, index: int):
        """The tf.train.Example features of example `index` (IndexError naming the address when out of range)."""
        from tensorflow_datasets.proto import tf_example_pb2

        if not 0 <= index < self._length:
            raise IndexError(f"{self.address}: example {index} out of range (split has {self._length})")
        return tf_example_pb2.Example.FromString(self._records()[index]).features.feature

    def audio(self, index: int) -> tuple[np.ndarray, int]:
        """(float32 samples x channels, sample rate) of example `index`. Integer audio (TFDS stores
        LibriSpeech as int16 values in int64) is scaled to [-1, 1)."""
        return self._audio(self.example(index))

    def text(self, index: int) -> str | None:
        """The transcript of example `index` (None when the dataset has none)."""
        return self._text(self.example(index))

    def _audio(self, example) -> tuple[np.ndarray, int]:
        feature = example[self.audio_key]
        if self.lazy_encoded or feature.HasField("bytes_list"):
            import soundfile as sf

            return sf.read(io.BytesIO(feature.bytes_list.value[0]), dtype="float32", always_2d=True)
        if feature.HasField("float_list"):
            values = np.asarray(feature.float_list.value, np.float32)
        else:
            values = np.asarray(feature.int64_list.value, np.int64)
            full_scale = 2.0 ** 31 if self.dtype == np.int32 else 32768.0
            values = values.astype(np.float32) / full_scale
        return values.reshape(-1, self.channels), self.sample_rate or SAMPLE_RATE

    def _text(self, example) -> str | None:
        if self.text_key is None:
            return None
        return example[self.text_key].bytes_list.value[0].decode("utf-8")


@functools.lru_cache(maxsize=16)
def open_split(address: str) -> TfdsSplit:
    """The split of a tfds:// address, opened once per process (cached)."""
    return TfdsSplit(Address.parse(address))


def write_manifest(address: Address | str, out: str) -> int:
    """`{out}.tsv` (root: the address, then `index<TAB>num_samples`) and `{out}.wrd` if the dataset has
    transcripts. Reads every example once to count its samples. Returns the number of examples."""

    split = TfdsSplit(address)
    rows, texts = [], []
    for i in range(len(split)):
        example = split.example(i)  # parsed once for both the sample count and the transcript
        audio, rate = split._audio(example)
        n = audio.shape[0] if rate == SAMPLE_RATE else round(audio.shape[0] * SAMPLE_RATE / rate)
        rows.append(f"{i}\t{n}")
        texts.append(split._text(example))
    if not storage.is_remote(out):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    _write_atomic(f"{out}.tsv", [str(split.address)] + rows)
    if split.text_key is not None:
        _write_atomic(f"{out}.wrd", [t.strip() for t in texts])
    return len(rows)


def _write_atomic(path: str, lines: list[str]) -> None:
    storage.write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
