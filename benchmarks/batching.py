"""Fixed crops against length buckets, on two length distributions, one table.

    python benchmarks/batching.py                  # the README's table (a few minutes on 2 CPU cores)
    python benchmarks/batching.py --smoke          # seconds: tiny sizes, to check that it runs

Distributions (lengths drawn, no audio needed for the shares):
- `librispeech`: a LibriSpeech 960 h stand-in: mostly 12-17 s, a tail of shorter ones, a few up to 35 s
  (mean about 12.3 s, few under 2 s);
- `korean`: a Korean conversational stand-in (AIHub-like): log-normal, mean about 4 s, a tail to 20 s.

Schemes, each with the same samples per step (`--max-tokens`):
- `fixed crops`: today's default: every utterance cropped or zero-padded to 250,000 samples (15.6 s),
  those under min_samples (32,000) dropped (fairseq base's max/min_sample_size);
- `buckets`: geometric buckets (`--ratio`) from 0.5 s to 15.6 s, each utterance cropped down to the
  longest bucket it fills (hubert_jax/data/buckets.py), min_samples 8,000.

Columns: padding = padded share of the computed samples; dropped = share of the corpus' audio that no batch
trains on (cropped away, too short, or the last partial batch of a bucket); shapes = compiled batch
shapes; real audio s/s = non-padding audio per second of a tiny HuBERT's real train step on this machine
(median over batches drawn from the plan, compilation excluded), and its ratio to fixed crops. Last line:
the input pipeline itself (FLAC read, crop, batch, one thread) in audio seconds per second per core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hubert_jax.lengths import SAMPLE_RATE as SR  # noqa: E402


def lengths(kind: str, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "librispeech":
        part = rng.choice(3, count, p=[0.68, 0.30, 0.02])
        seconds = np.where(part == 0, rng.normal(14.3, 1.3, count),
                           np.where(part == 1, rng.uniform(1.5, 13.0, count), rng.uniform(16.0, 35.0, count)))
        seconds = np.clip(seconds, 1.0, 35.0)
    else:
        seconds = np.clip(rng.lognormal(np.log(4.0) - 0.18, 0.6, count), 0.5, 20.0)
    return (seconds * SR).astype(np.int64)


def fixed_plan(n: np.ndarray, crop: int, min_samples: int, rows: int):
    """(batches as (rows, crop) shapes with their real samples, computed, real, corpus samples)."""
    kept = n[n >= min_samples]
    real = np.minimum(kept, crop)
    usable = len(kept) // rows * rows
    batches = [(crop, real[i: i + rows]) for i in range(0, usable, rows)]
    return batches, usable * crop, int(real[:usable].sum())


def bucket_plan(n: np.ndarray, buckets, max_tokens: int, min_samples: int):
    from hubert_jax.data.buckets import BatchPlan, batch_sizes, crop_bucket

    kept = n[n >= min_samples]
    sizes = batch_sizes(buckets, max_tokens, 1)
    plan = BatchPlan([crop_bucket(int(x), buckets) for x in kept], sizes, seed=0, repeat=False)
    batches = [(buckets[k], np.minimum(kept[items], buckets[k])) for k, items in plan.epoch(0)]
    computed = sum(length * len(real) for length, real in batches)
    return batches, computed, int(sum(real.sum() for _, real in batches))


def tiny_trainer():
    import jax

    from hubert_jax.sharding import mesh_from_config
    from hubert_jax.training.config import pretraining_defaults
    from hubert_jax.training.tasks import make_trainer

    cfg = pretraining_defaults()
    cfg.model.overrides.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4))
    cfg.model.head.update(dict(num_classes=(50,), final_dim=16, label_rate=50.0))
    cfg.mesh.update(dict(data=1, fsdp=1, tensor=1))
    return make_trainer(cfg, mesh_from_config(cfg.mesh, devices=jax.devices()[:1]))


def throughput(trainer, state, batches, steps: int) -> tuple[float, dict]:
    """Median real audio seconds per second over `steps` batches (in plan order), compilation excluded."""
    import jax

    rng = np.random.default_rng(0)
    rates, compiled = [], set()
    for length, real in batches[:steps]:
        rows = len(real)
        mask = (np.arange(length)[None] < real[:, None]).astype(np.int32)
        batch = {"input_values": (rng.standard_normal((rows, length)) * mask).astype(np.float32),
                 "attention_mask": mask,
                 "labels": rng.integers(0, 50, (rows, 1, length * 50 // SR), dtype=np.int32)}
        batch = {k: jax.device_put(v, trainer.batch_sharding) for k, v in batch.items()}
        if (rows, length) not in compiled:  # compile this shape outside the timing
            state, metrics = trainer.train_step(state, batch)
            jax.block_until_ready(metrics)
            compiled.add((rows, length))
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        rates.append(real.sum() / SR / (time.perf_counter() - start))
    return float(np.median(rates)), state


def pipeline_rate(kind: str, buckets, max_tokens: int, count: int) -> float:
    """Audio seconds per second of the real input pipeline (FLAC files, buckets, one thread)."""
    import soundfile as sf

    from hubert_jax.data.pipeline import DataConfig, LabeledAudio, make_dataset

    root = tempfile.mkdtemp(prefix="batching-")
    rng = np.random.default_rng(1)
    rows, labels = [root], []
    for i, n in enumerate(lengths(kind, count, seed=1)):
        sf.write(os.path.join(root, f"{i}.flac"), (0.1 * rng.standard_normal(n)).astype(np.float32), SR)
        rows.append(f"{i}.flac\t{n}")
        labels.append(" ".join(["1"] * int(round(n * 50 / SR))))
    with open(os.path.join(root, "train.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(root, "train.km"), "w") as f:
        f.write("\n".join(labels) + "\n")
    config = DataConfig(manifest=os.path.join(root, "train.tsv"), labels=(os.path.join(root, "train.km"),),
                        label_rate=50.0, min_samples=8000, buckets=tuple(buckets), max_tokens=max_tokens)
    ds = make_dataset(LabeledAudio(config), config, batch_size=0, seed=0)
    start, audio = time.perf_counter(), 0.0
    for i in range(min(len(ds), 20)):
        audio += ds[i]["attention_mask"].sum() / SR
    return audio / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=1.25, help="bucket spacing (next / previous length)")
    parser.add_argument("--max-tokens", type=int, default=1_000_000, help="samples per step, both schemes")
    parser.add_argument("--utterances", type=int, default=20000, help="corpus size for the shares")
    parser.add_argument("--steps", type=int, default=24, help="timed train steps per scheme")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.utterances, args.steps, args.max_tokens = 400, 2, 500_000
    import jax

    from hubert_jax.data.buckets import geometric

    buckets = geometric(8000, 250000, args.ratio)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {args.max_tokens:,} samples per step; "
          f"buckets x{args.ratio}: {len(buckets)} from {buckets[0]} to {buckets[-1]} samples")
    trainer = tiny_trainer()
    state = trainer.init()
    print("| corpus | scheme | padding | dropped | shapes | real audio s/s | vs fixed crops |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("librispeech", "korean"):
        n = lengths(kind, args.utterances)
        corpus = n.sum()
        rows = max(1, args.max_tokens // 250000)
        schemes = {"fixed crops": fixed_plan(n, 250000, 32000, rows),
                   "buckets": bucket_plan(n, buckets, args.max_tokens, 8000)}
        base = None
        for name, (batches, computed, real) in schemes.items():
            order = np.random.default_rng(0).permutation(len(batches))
            rate, state = throughput(trainer, state, [batches[i] for i in order], args.steps)
            base = base or rate
            shapes = len({(length, len(r)) for length, r in batches})
            print(f"| {kind} (mean {n.mean() / SR:.1f} s) | {name} | {1 - real / computed:.1%} | "
                  f"{1 - real / corpus:.1%} | {shapes} | {rate:.0f} | {rate / base:.2f}x |")
    print(f"input pipeline (FLAC read, crop, batch; korean lengths, one thread): "
          f"{pipeline_rate('korean', buckets, args.max_tokens, 40 if args.smoke else 300):.0f} audio s/s per core")


if __name__ == "__main__":
    main()
