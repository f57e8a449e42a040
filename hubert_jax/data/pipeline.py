"""The pretraining input pipeline on Grain: manifest (or tfds split) + `.km` labels -> shuffled, randomly
cropped, statically shaped batches, sharded by host, with a checkpointable iterator.

Every batch has the same shape, which TPUs (and jit caches) want: utterances longer than `crop_samples`
are cropped at a random offset (fairseq's `random_crop`), shorter ones are zero-padded with an
attention mask and `-1` labels. Utterances shorter than `min_samples` are dropped, as fairseq's
`min_sample_size` does. All randomness (shuffle order per epoch, crop offsets) comes from the seed and
the element's position, so the iterator's state is a position and a resumed run reads the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from hubert_jax.data.buckets import (
    BatchPlan,
    BucketedBatches,
    batch_sizes,
    check_buckets,
    crop_bucket,
)
from hubert_jax.data.audio import num_samples
from hubert_jax.data.manifest import (
    SAMPLE_RATE,
    IntLabelFile,
    LabelCountError,
    check_files_exist,
    read_entry_audio,
    read_manifest,
)
from hubert_jax.data.mixing import MixConfig, Mixer, mix_rng
from hubert_jax.data.source import Source

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """One split's input: the manifest, its label files and rate, crop and minimum lengths, buckets and normalisation."""
    manifest: str = ""
    labels: tuple[str, ...] = ()  # one .km file per label set, lines in manifest order
    label_rate: float = 50.0  # labels per second (100: MFCC, 50: model features)
    crop_samples: int = 250000  # fairseq max_sample_size
    min_samples: int = 32000  # fairseq min_sample_size
    normalize: bool = False  # layer-norm each waveform (fairseq `normalize`, true for large/xlarge)
    label_tolerance_s: float = 0.1  # allowed label/audio duration mismatch (fairseq's tol)
    # length buckets (samples) and the samples of one global batch (hubert_jax/data/buckets.py); empty:
    # every batch is `batch_size` crops of `crop_samples`
    buckets: tuple[int, ...] = ()
    max_tokens: int = 0
    # WavLM's utterance mixing of the rows of each global batch (hubert_jax/data/mixing.py); None: none
    mix: MixConfig | None = None

    @property
    def label_length(self) -> int:
        """Labels of a full crop."""
        return self.labels_for(self.crop_samples)

    def labels_for(self, samples: int) -> int:
        """Labels of `samples` of audio at the label rate."""
        return int(round(samples * self.label_rate / SAMPLE_RATE))


class LabeledAudio(Source):
    """Random-access source: (audio, labels) of the utterances of a manifest long enough to train on."""

    def __init__(self, config: DataConfig, *, need_labels: bool = True):
        if need_labels and not config.labels:
            raise ValueError(f"{config.manifest}: no label files given (data.labels)")
        entries = read_manifest(config.manifest)
        if not entries:
            raise ValueError(f"{config.manifest}: no utterances")
        check_files_exist(config.manifest, entries)
        self.config = config
        tolerance = max(1, int(math.ceil(config.label_tolerance_s * config.label_rate)))
        # label lines are checked now and read when asked for, never held whole (IntLabelFile)
        try:
            self.label_files = self._open_all(entries, tolerance)
        except LabelCountError as e:
            entries = self._counted_at_16k(entries, e) or []
            if not entries:
                raise
            self.label_files = self._open_all(entries, tolerance)
        self.keep = [i for i, e in enumerate(entries) if e.num_samples >= config.min_samples]
        self.entries = [entries[i] for i in self.keep]
        # the largest label of each set, to be checked against the model's cluster counts
        self.max_label = [f.max_label for f in self.label_files]
        if not self.entries:
            raise ValueError(f"{config.manifest}: no utterance has the {config.min_samples} samples "
                             f"data.min_samples asks for")
        dropped = len(entries) - len(self.entries)
        if dropped:
            logger.info("%s: %d utterances shorter than %d samples left out", config.manifest, dropped,
                        config.min_samples)

    def _open_all(self, entries, tolerance: int) -> list:
        expected = [int(round(e.num_samples * self.config.label_rate / SAMPLE_RATE)) for e in entries]
        return [self._open_labels(path, entries, expected, tolerance) for path in self.config.labels]

    def _counted_at_16k(self, entries, error) -> list | None:
        """When the row a label line does not fit lists its file's native-rate count (fairseq's
        wav2vec_manifest.py for a non-16 kHz file), every row is recounted at 16 kHz from the headers (once,
        and only then); None when that row is not such a row."""
        from hubert_jax.data.audio import count_at_16k

        if count_at_16k(entries[error.line - 1].path, entries[error.line - 1].num_samples) is None:
            return None
        recounted = [(e, count_at_16k(e.path, e.num_samples)) for e in entries]
        changed = sum(n is not None for _, n in recounted)
        logger.warning("%s: %d rows list their file's native-rate count; counted at %d Hz from the files' "
                       "headers", self.config.manifest, changed, SAMPLE_RATE)
        return [e if n is None else dataclasses.replace(e, num_samples=n) for e, n in recounted]

    def _open_labels(self, path: str, entries, expected, tolerance: int) -> IntLabelFile:
        """The label file, checked. A line that does not fit its manifest row but fits the audio file's
        real length blames the manifest's count, not the labels."""
        try:
            return IntLabelFile(path, expected, tolerance=tolerance)
        except LabelCountError as e:
            entry = entries[e.line - 1]
            real = None if e.count == 0 else num_samples(entry.path)
            if real is None or abs(self.config.labels_for(real) - e.count) > tolerance:
                raise
            from hubert_jax.data.audio import count_at_16k

            if count_at_16k(entry.path, entry.num_samples) is not None:
                raise  # the row lists the file's native-rate count: recounted by the caller
            raise ValueError(f"{self.config.manifest}:{entry.line}: the manifest lists {entry.num_samples} samples, but "
                             f"{entry.path} has {real}, and its labels ({path}:{e.line}, {e.count} of them) fit "
                             f"the file: the manifest's count is wrong. Fix the line (or rewrite the manifest "
                             f"from the audio)") from None

    def __len__(self) -> int:
        return len(self.entries)

    def item_buckets(self, buckets) -> list[int]:
        """Pretraining: each utterance is cropped to the longest bucket it fills."""
        return [crop_bucket(e.num_samples, buckets) for e in self.entries]

    def check_num_classes(self, num_classes, label_offset: int = 0) -> None:
        """Every label must have a label embedding: a label >= K would silently turn the loss into NaN."""
        if len(num_classes) != len(self.config.labels):
            raise ValueError(f"{len(self.config.labels)} label files given ({', '.join(self.config.labels)}), but "
                             f"config.model.head.num_classes has {len(num_classes)} entries")
        for path, top, k in zip(self.config.labels, self.max_label, num_classes):
            if top + label_offset >= k:
                raise ValueError(f"{path}: labels go up to {top}, but config.model.head.num_classes gives {k} "
                                 f"clusters for this label set"
                                 + (f" (with label_offset {label_offset})" if label_offset else ""))

    def __getitem__(self, index: int):
        audio = read_entry_audio(self.config.manifest, self.entries[index], normalize=self.config.normalize)
        return {"audio": audio, "labels": [f[self.keep[index]] for f in self.label_files]}


def window(audio: np.ndarray, size: int, rng: np.random.Generator):
    """(values, attention mask, start): a `size`-sample window at a random offset when the audio is longer,
    else the audio zero-padded to `size`."""
    start = int(rng.integers(0, len(audio) - size + 1)) if len(audio) > size else 0
    clip = audio[start:start + size]
    values = np.zeros(size, np.float32)
    values[: len(clip)] = clip
    mask = np.zeros(size, np.int32)
    mask[: len(clip)] = 1
    return values, mask, start


def crop_and_pad(example, rng: np.random.Generator, config: DataConfig, size: int | None = None):
    """A window of `size` (default `crop_samples`) samples at a random offset (labels cut at the same
    time), or zero padding."""
    size = config.crop_samples if size is None else size
    out_audio, mask, start = window(example["audio"], size, rng)
    label_start = config.labels_for(start)
    label_length = config.labels_for(size)
    labels = []
    for lab in example["labels"]:
        cut = lab[label_start: label_start + label_length]
        labels.append(np.pad(cut, (0, label_length - len(cut)), constant_values=-1))
    out = {"input_values": out_audio, "attention_mask": mask}
    if labels:
        out["labels"] = np.stack(labels)
    return out


def host_part(ds, *, global_batch: int, process_index: int, process_count: int):
    """This host's rows of each global batch of `ds` (a grain MapDataset): element i of host h is element
    (i // b) * B + h * b + i % b, where B is the global batch and b = B / hosts."""
    import grain

    local = global_batch // process_count

    class HostPart(grain.MapDataset):
        def __init__(self, parent):
            super().__init__(parent)
            self._length = len(parent) // global_batch * local

        def __len__(self) -> int:
            return self._length

        def _parent_index(self, index: int) -> int:
            batch, row = divmod(index, local)
            return batch * global_batch + process_index * local + row

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.slice(index)
            return self._parent[self._parent_index(index)]

        def __str__(self) -> str:
            return f"HostPart[{process_index}/{process_count} of batches of {global_batch}]"

    return HostPart(ds)


def mixed_rows(ds, mixer: Mixer, *, global_batch: int, seed: int):
    """`ds` (a grain MapDataset of global elements, batch after batch) with each element mixed with another
    of its global batch (`mixer`), the draws keyed by the element's position."""
    import grain

    class MixedRows(grain.MapDataset):
        def __len__(self) -> int:
            return len(self._parent)

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.slice(index)
            batch, row = divmod(index, global_batch)
            return mixer.mix(self._parent[index], row, global_batch, mix_rng(seed, batch, row),
                             lambda other: self._parent[batch * global_batch + other])

        def __str__(self) -> str:
            return f"MixedRows[batches of {global_batch}]"

    return MixedRows(ds)


def check_batch_split(batch_size: int, process_count: int, data_shards: int = 1, mesh_shape=None) -> None:
    """The global batch (config.data.batch_size, fixed-size batches) must split over the hosts and over the
    mesh's data x fsdp axes (bucketed batches are sized to split, hubert_jax/data/buckets.py)."""
    if batch_size % process_count:
        raise ValueError(f"config.data.batch_size: the global batch ({batch_size}) must be divisible by the "
                         f"{process_count} hosts")
    if batch_size % data_shards:
        raise ValueError(f"config.data.batch_size ({batch_size}) must be divisible by the mesh's data x fsdp "
                         f"axes ({data_shards} = {dict(mesh_shape or {})})")


def make_dataset(source, config: DataConfig, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, shuffle: bool = True, repeat: bool = True, transform=None,
                 data_shards: int = 1):
    """A grain MapDataset of this host's part of each global batch (`batch_size` is the global batch).

    The order, the crops and the contents of every global batch depend only on the seed, never on the
    number of hosts: the shuffle and the crop offsets are drawn over the whole manifest, and host h reads
    rows [h * b, (h + 1) * b) of each global batch (b = batch_size / hosts). So a run on 4 hosts trains on
    exactly the batches a run on 1 host does (mixed, with `config.mix`, as on 1 host).
    `transform(example, rng, size)` makes an example `size`
    samples long (default: the pretraining crop, `crop_and_pad`). With `config.buckets`, each global batch
    is one bucket's, of the rows `config.max_tokens` holds (a multiple of `data_shards` and the hosts), and
    `batch_size` is not used (hubert_jax/data/buckets.py)."""
    import grain

    transform = transform or (lambda ex, rng, size=None: crop_and_pad(ex, rng, config, size))
    mixer = Mixer(config.mix, normalize=config.normalize) if config.mix else None
    if config.buckets:
        return grain.MapDataset.source(bucketed_batches(source, config, seed=seed, process_index=process_index,
                                                        process_count=process_count, shuffle=shuffle,
                                                        repeat=repeat, transform=transform,
                                                        data_shards=data_shards, mixer=mixer))
    check_batch_split(batch_size, process_count)
    if len(source) < batch_size:
        raise ValueError(f"{config.manifest}: {len(source)} utterances, fewer than one batch of {batch_size}")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)
    ds = ds.random_map(transform, seed=seed)
    if mixer is not None:
        ds = mixed_rows(ds, mixer, global_batch=batch_size, seed=seed)
    if process_count > 1:
        ds = host_part(ds, global_batch=batch_size, process_index=process_index, process_count=process_count)
    return ds.batch(batch_size // process_count, drop_remainder=True)


def bucket_batch_sizes(config: DataConfig, *, data_shards: int, process_count: int) -> tuple[int, ...]:
    """Rows of each bucket's global batch: whole rows for every data shard and every host."""
    buckets = check_buckets(config.buckets)
    if config.max_tokens <= 0:
        raise ValueError("data.buckets needs data.max_tokens (samples per global batch)")
    return batch_sizes(buckets, config.max_tokens, math.lcm(data_shards, process_count))


def bucketed_batches(source, config: DataConfig, *, seed: int, process_index: int, process_count: int,
                     shuffle: bool, repeat: bool, transform, data_shards: int, mixer=None) -> BucketedBatches:
    """The batches of a bucketed split: each utterance in the bucket its length picks, each bucket's batch size set by
    max_tokens, the order drawn from the seed."""
    sizes = bucket_batch_sizes(config, data_shards=data_shards, process_count=process_count)
    plan = BatchPlan(source.item_buckets(config.buckets), sizes, seed=seed, shuffle=shuffle, repeat=repeat)
    return BucketedBatches(source, plan, config.buckets, transform, process_index=process_index,
                           process_count=process_count, mixer=mixer)


def make_iterator(source, config: DataConfig, *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 2, prefetch: int = 4, transform=None,
                  data_shards: int = 1):
    """An endless, checkpointable iterator (grain DatasetIterator: get_state / set_state) over this host's
    part of each global batch (of `batch_size`, or bucketed: see make_dataset)."""
    import grain

    ds = make_dataset(source, config, batch_size=batch_size, seed=seed, process_index=process_index,
                      process_count=process_count, transform=transform, data_shards=data_shards)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))
