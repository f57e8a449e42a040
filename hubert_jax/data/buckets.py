"""Length buckets with a token budget: batches of utterances of similar length, as fairseq groups them.

`data.buckets` lists a few lengths in samples and `data.max_tokens` the samples of one global batch. A
bucket of length L holds `max_tokens // L` rows, rounded down to a multiple of the data shards and the
hosts (each shard and each host reads whole rows). Every global batch comes from one bucket:
- pretraining puts an utterance in the longest bucket not longer than it and crops it there at a random
  offset (fairseq's `pad_audio=False`: no padding); one shorter than the smallest bucket (but at least
  `min_samples`) is padded up to the smallest;
- fine-tuning puts a whole utterance in the shortest bucket that holds it and pads it (the longest
  utterance is always a bucket, so none is left out).

The plan of an epoch (which utterances form each batch, and the order of the batches) is drawn from the
seed and the epoch alone, and each row's crop from the seed and its global position, so a run's batches
depend on nothing but the seed and the step: resumed runs and N hosts read what one uninterrupted host
would.
"""

from __future__ import annotations

import bisect

import numpy as np

from hubert_jax.data.mixing import mix_rng


def batch_sizes(buckets, max_tokens: int, multiple: int) -> tuple[int, ...]:
    """Rows of each bucket's global batch: what fits `max_tokens`, a multiple of `multiple`. A bucket that
    cannot hold `multiple` rows (one per data shard and host) is an error: it would never be read."""
    sizes = tuple(max_tokens // length // multiple * multiple for length in buckets)
    short = [length for length, rows in zip(buckets, sizes) if rows < multiple]
    if short:
        raise ValueError(
            f"data.max_tokens={max_tokens}: the buckets of {', '.join(map(str, short))} samples hold fewer rows "
            f"than the {multiple} a batch must split into (data shards x hosts); raise data.max_tokens to at "
            f"least {max(short) * multiple} or leave those buckets out of data.buckets")
    return sizes


def geometric(smallest: int, largest: int, ratio: float, multiple: int = 320) -> tuple[int, ...]:
    """Bucket lengths from `smallest` to `largest` samples, each `ratio` times the one before (rounded to
    `multiple`, one frame of 20 ms): cropping an utterance down to its bucket keeps at least 1 / ratio of it."""
    lengths, length = [], float(smallest)
    while length < largest:
        lengths.append(int(round(length / multiple)) * multiple)
        length *= ratio
    return tuple(sorted(set(lengths + [largest])))


def check_buckets(buckets) -> tuple[int, ...]:
    """data.buckets as increasing positive ints (ValueError otherwise)."""
    buckets = tuple(int(b) for b in buckets)
    if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"data.buckets={buckets}: expected increasing positive lengths in samples")
    return buckets


def crop_bucket(length: int, buckets) -> int:
    """Pretraining: the longest bucket not longer than `length` (the smallest for shorter utterances)."""
    return max(bisect.bisect_right(buckets, length) - 1, 0)


def pad_bucket(length: int, buckets) -> int | None:
    """Fine-tuning: the shortest bucket that holds `length`, None when none does."""
    index = bisect.bisect_left(buckets, length)
    return index if index < len(buckets) else None


class BatchPlan:
    """Global batch i of an endless (or one-epoch) run: its bucket and the items it holds."""

    def __init__(self, item_buckets, sizes, *, seed: int, shuffle: bool = True, repeat: bool = True):
        item_buckets = np.asarray(item_buckets)
        self.sizes, self.seed, self.shuffle, self.repeat = tuple(sizes), seed, shuffle, repeat
        self.members = [np.flatnonzero(item_buckets == k) for k in range(len(self.sizes))]
        self.per_epoch = sum(len(m) // s for m, s in zip(self.members, self.sizes))
        self._cached: dict = {}
        if self.per_epoch == 0:
            counts = [len(m) for m in self.members]
            raise ValueError(f"no bucket has a full batch: {counts} utterances per bucket against batches of "
                             f"{list(self.sizes)} (lower data.max_tokens or use fewer buckets)")

    def __len__(self) -> int:
        return self.per_epoch * 10 ** 9 if self.repeat else self.per_epoch  # "endless", as grain's repeat

    def epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(bucket, items) of each batch of `epoch`, in order. The last two epochs asked for are kept (reader
        threads meet at an epoch's boundary); each call returns its own epoch's plan."""
        plan = self._cached.get(epoch)
        if plan is None:
            plan = self._draw(epoch)
            self._cached = {**{e: p for e, p in self._cached.items() if e == epoch - 1}, epoch: plan}
        return plan

    def _draw(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for k, (members, size) in enumerate(zip(self.members, self.sizes)):
            order = rng.permutation(members) if self.shuffle else members
            batches += [(k, order[i: i + size]) for i in range(0, len(order) - size + 1, size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, int, int]:
        """(bucket, items, epoch, batch within the epoch) of global batch `index`."""
        epoch, position = divmod(int(index), self.per_epoch)
        if not self.repeat and epoch:
            raise IndexError(index)
        bucket, items = self.epoch(epoch)[position]
        return bucket, items, epoch, position


class BucketedBatches:
    """A random-access source of this host's rows of each global batch of a `BatchPlan`:
    `transform(example, rng, length)` makes one row of exactly the bucket's `length` samples; `mixer`
    (hubert_jax/data/mixing.py) mixes rows with other rows of their global batch, made as their hosts make
    them."""

    def __init__(self, source, plan: BatchPlan, buckets, transform, *, process_index: int = 0,
                 process_count: int = 1, mixer=None):
        self.source, self.plan, self.buckets, self.transform = source, plan, tuple(buckets), transform
        self.process_index, self.process_count, self.mixer = process_index, process_count, mixer

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict:
        bucket, items, epoch, position = self.plan[index]
        local = len(items) // self.process_count
        first = self.process_index * local
        length = self.buckets[bucket]

        def make(row: int) -> dict:
            rng = np.random.default_rng([self.plan.seed, epoch, position, row])
            return self.transform(self.source[int(items[row])], rng, length)

        rows = []
        for row in range(first, first + local):
            example = make(row)
            if self.mixer is not None:
                example = self.mixer.mix(example, row, len(items), mix_rng(self.plan.seed, epoch, position, row),
                                         make)
            rows.append(example)
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
