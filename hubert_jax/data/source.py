"""What the input pipeline (hubert_jax/data/pipeline.py) reads: a `Source`, random access to a split's
utterances. A task's `data()` returns one for each split (hubert_jax/training/tasks/base.py: `Data`).

A source has
- `len(source)` and `source[i]`: the i-th raw example, a dict with "audio" (float32 samples at 16 kHz) and
  what the task trains on ("labels": frame labels, "target": a transcript's ids or a class);
- `item_buckets(buckets)`: each utterance's length bucket (data.buckets, hubert_jax/data/buckets.py);
- `transform`: how an example becomes a batch row of `size` samples, `transform(example, rng, size)`, or None
  for the pretraining crop (`pipeline.crop_and_pad`: a random crop of data.crop_samples, labels cut with it).
"""

from __future__ import annotations


class Source:
    """A random-access training source: its length, its examples by index, its items' lengths for bucketing, and the
    transform that makes a batch row."""
    transform = None  # None: the pretraining crop; else transform(example, rng, size=None) -> a batch row

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError

    def item_buckets(self, buckets) -> list[int]:
        """The index into `buckets` of each utterance's bucket, in order."""
        raise NotImplementedError
