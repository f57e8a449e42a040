"""Unit-label stages of the HuBERT recipe, one subcommand each:

    python -m hubert_jax.labels manifest /data/audio --out work/manifest --valid-percent 0.01
    python -m hubert_jax.labels mfcc    --manifest data/demo/train.tsv --out work/mfcc/train [--rank R --world W]
    python -m hubert_jax.labels kmeans  --feats work/mfcc/train --clusters 100 --out work/km100.npy
    python -m hubert_jax.labels label   --feats work/mfcc/train --centroids work/km100.npy --out work/train.km
    python -m hubert_jax.labels label   --model work/it1 --layer 6 --manifest data/demo/train.tsv \
                                        --centroids work/km500.npy --out work/train.km --rank 0 --world 1
    python -m hubert_jax.labels dump    --manifest data/demo/train.tsv --preset hubert-base --layer 6 \
                                        --out work/l6/train --rank 0 --world 1
    python -m hubert_jax.labels quality --km work/train.km --phones data/demo/train.phn --manifest data/demo/train.tsv
    python -m hubert_jax.labels tfds    --dataset tfds://librispeech/train_clean100 --out work/ls/train_clean100

Every path may be `gs://` except `--data-dir` and the tfds shards: feature, centroid and label files go through a
scratch folder on each host (labels/staging.py), audio and manifests are read from the bucket.

The `tfds` command writes a manifest (and `.wrd` transcripts) for a prepared tensorflow-datasets split;
the other commands then read that split's audio from its ArrayRecord files.

Features are stored like fairseq's dumps: `{out}.npy` (all frames, float32) and `{out}.len` (frames per
utterance, in manifest order; 0 for an unusable file that was skipped, with the reason in `{out}.skipped`,
which `label` carries over to `{km}.skipped` so that training can say why a label line is empty).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from hubert_jax.data.manifest import (
    check_files_exist,
    iter_audio,
    read_manifest,
    write_int_labels,
)
from hubert_jax import storage
from hubert_jax.data.audio import resampled_counts, resampled_summary
from hubert_jax.cli_errors import prog_name
from hubert_jax.labels import provenance
from hubert_jax.labels.features import (FeatureWriter, describe_rows, load_features, load_skipped, nonfinite_rows,
                                        write_skipped)
from hubert_jax.labels.mfcc import mfcc_with_deltas
from hubert_jax.labels.sample import frame_rows, sample_utterances
from hubert_jax.labels.staging import Staging
from hubert_jax.progress import Progress, main_process
from hubert_jax.lengths import SAMPLE_RATE


def cmd_mfcc(args) -> None:
    """MFCC of the manifest, or of host `rank`'s contiguous slice into `{out}_{rank}_{world}` (as dump's shards,
    read back in manifest order by `kmeans` / `label --nshard world`)."""
    import jax

    from hubert_jax.labels.dump import shard_range

    entries = read_manifest(args.manifest)
    world = jax.process_count() if args.world is None else args.world
    rank = jax.process_index() if args.rank is None else args.rank
    sharded = args.rank is not None or args.world is not None or world > 1
    first, last = shard_range(len(entries), world, rank)
    entries = entries[first:last]
    prefix = args.stage.output(f"{args.out}_{rank}_{world}" if sharded else args.out)
    shown = args.stage.name(prefix)
    check_files_exist(args.manifest, entries)
    resampled_before = resampled_counts()
    stream, skipped = iter_audio(entries, strict=args.strict, manifest=args.manifest, threads=args.threads)
    batch, seconds, start = [], 0.0, time.perf_counter()
    bar = Progress(len(entries), "mfcc", unit="utt", enabled=main_process())
    # Batches are computed in `threads` threads (NumPy releases the GIL), each on one BLAS thread: the filter
    # products are too small to share, and OpenBLAS' idle threads spin. Written in order as they finish, so
    # memory holds a few batches, not the corpus.
    workers = max(args.threads, 1)
    with FeatureWriter(prefix, 39) as out, threadpool_limits(1, user_api="blas"), \
            ThreadPoolExecutor(workers, thread_name_prefix="mfcc") as pool:
        pending = collections.deque()

        def write(batch, features):  # the batch's features, after the unusable rows before each of its utterances
            for (index, _), f in zip(batch, features.result()):
                while out.count < index:  # iter_audio yields in manifest order; a gap is a skipped row
                    out.add(np.zeros((0, 39)), skipped=skipped[out.count])
                out.add(f)

        def compute(batch):
            pending.append((batch, pool.submit(mfcc_with_deltas, [a for _, a in batch])))
            while len(pending) > workers:
                write(*pending.popleft())

        index = 0
        for entry, audio in stream:
            while entries[index] is not entry:  # the rows iter_audio skipped before this one
                index += 1
            bar.update(index + 1 - bar.count)
            batch.append((index, audio))
            seconds += len(audio) / SAMPLE_RATE
            if len(batch) == args.batch:
                compute(batch)
                batch = []
        compute(batch)
        while pending:
            write(*pending.popleft())
        while out.count < len(entries):
            out.add(np.zeros((0, 39)), skipped=skipped[out.count])
        bar.update(len(entries) - bar.count)
        frames = out.rows
    bar.close()
    elapsed = time.perf_counter() - start
    provenance.write(prefix, {**_manifest_record(args.manifest), "stage": "mfcc", "features": "kaldi mfcc + deltas",
                              **({"rank": rank, "world": world, "utterances": len(entries)} if sharded else {})})
    resampled = resampled_summary(resampled_before)
    print(f"{shown}.npy: {frames} frames of 39-d MFCC from {len(entries) - len(skipped)} "
          f"files ({len(skipped)} skipped{f', listed in {shown}.skipped' if skipped else ''}"
          f"{f'; {resampled}' if resampled else ''}); {seconds:.0f} s of audio in {elapsed:.1f} s = "
          f"{seconds / max(elapsed, 1e-9):.0f} audio seconds per second")


def _output_folder(path: str) -> None:
    """Make the folder an output file goes into (an error naming it if it cannot be made)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f"{path}: cannot make its folder {folder} ({e.strerror or e})") from None


def _manifest_record(manifest: str) -> dict:
    return {"manifest": storage.absolute(manifest), "manifest_sha256": provenance.file_sha256(manifest)}


def _records(feats: str, nshard: int) -> list:
    """The provenance records of a feature prefix: its own, or each shard's with nshard (None where a file
    has none)."""
    if nshard <= 0:
        return [provenance.read(feats)]
    return [provenance.read(f"{feats}_{rank}_{nshard}") for rank in range(nshard)]


def _audio_paths(feats: str, nshard: int) -> list[str] | None:
    """The audio file of each utterance of the features, from the manifest their record names (None when
    no record names one)."""
    manifests = {r.get("manifest") for r in _records(feats, nshard) if r}
    if len(manifests) != 1 or None in manifests or not storage.isfile(next(iter(manifests))):
        return None
    return [e.path for e in read_manifest(next(iter(manifests)))]


def cmd_kmeans(args) -> None:
    import jax

    from hubert_jax.labels.kmeans import KMeansConfig, fit, inertia, save_centroids

    local = args.stage.fetch(args.feats, prefix=True)
    feats, lengths = load_features(local, args.nshard)
    out = args.stage.output(args.out, owner=jax.process_index() == 0)
    _output_folder(out)  # before the fit: a folder that cannot be made fails now, not after it
    utterances = sample_utterances(len(lengths), args.percent, args.seed)  # whole utterances, as fairseq
    rows = frame_rows(lengths, utterances) if len(utterances) < len(lengths) else None
    take = len(feats) if rows is None else len(rows)
    if take < args.clusters:
        raise ValueError(f"{args.feats}: --percent {args.percent} takes {len(utterances)} utterances, {take} frames, "
                         f"fewer than --clusters {args.clusters}: raise --percent")
    rng = np.random.default_rng(args.seed)
    bad = nonfinite_rows(feats, rows)
    if len(bad):  # a NaN frame would make a NaN centroid, and every frame's label the same
        print(f"{args.feats}: dropped {describe_rows(bad, lengths, _audio_paths(local, args.nshard))}: NaN or "
              f"infinite values", file=sys.stderr)
        rows = np.setdiff1d(np.arange(len(feats)) if rows is None else rows, bad)
    config = KMeansConfig(args.clusters, batch_size=args.batch_size, max_iter=args.max_iter, n_init=args.n_init,
                          seed=args.seed)
    mesh = None
    if args.data_parallel or jax.process_count() > 1:  # several hosts: every batch is split over all of their devices
        from hubert_jax.sharding import make_mesh

        mesh = make_mesh({"data": -1})
    start = time.perf_counter()
    centers = fit(feats, config, rows=rows, mesh=mesh,
                  progress=lambda total: _kmeans_progress(total, args.max_iter))
    if jax.process_index() == 0:
        save_centroids(out, centers)
    elapsed = time.perf_counter() - start
    check = np.sort(rng.choice(len(feats), min(len(feats), 200000), replace=False))  # inertia on a sample
    check = np.setdiff1d(check, bad)  # a NaN frame has no distance to any centroid
    per_frame = inertia(feats, centers, rows=check, mesh=mesh) / len(check)
    if jax.process_index() == 0:
        provenance.write(out, {"stage": "kmeans", "feats": storage.absolute(args.feats),
                               "feats_made": _records(local, args.nshard), "clusters": args.clusters,
                               "percent": args.percent, "seed": args.seed, "utterances": len(utterances),
                               "frames": int(take - len(bad))})
    print(f"{args.out}: {args.clusters} centroids from {take - len(bad)} frames of {len(utterances)} utterances in "
          f"{elapsed:.1f} s; inertia per frame "
          f"{per_frame:.4g}" + (f" (on {len(check)} frames)" if len(check) < len(feats) else ""))


def _kmeans_progress(total: int, max_iter: int) -> Progress:
    if main_process():  # the bar's total is max_iter passes; the early stop usually ends the fit far sooner
        print(f"k-means: at most {total} batches ({max_iter} passes); it stops when converged, so the time "
              f"left shown is an upper bound", file=sys.stderr)
    return Progress(total, "k-means", unit="batch", enabled=main_process())


def cmd_label(args) -> None:
    """One .km line per utterance, written as the utterances are labelled (memory: one chunk of frames, not
    the corpus' labels). With several hosts each labels a contiguous share of the utterances into
    `{out}.part{rank}-of-{world}`, and process 0 joins the parts in order."""
    import jax

    from hubert_jax.labels.dump import shard_range
    from hubert_jax.labels.kmeans import NonFiniteFeatures, label_utterances, load_centroids
    from hubert_jax.labels.model_labels import concatenate

    if (args.feats is None) == (args.model is None):
        raise SystemExit("label: give exactly one of --feats PREFIX (dumped features) or --model DIR (features "
                         "computed on the fly, with --layer and --manifest)")
    if args.model is not None:
        return _label_from_model(args)
    local = args.stage.fetch(args.feats, prefix=True)
    feats, lengths = load_features(local, args.nshard)
    records = _records(local, args.nshard)
    sampled = [r for r in records if r and r.get("percent", 1) < 1]
    if sampled:
        raise ValueError(f"label: {args.feats} holds a sample of {sampled[0]['percent']:g} of the manifest's "
                         f"utterances (dump --percent), for k-means; a .km file needs every utterance: label "
                         f"--model (no dump) or a dump without --percent")
    centroids = args.stage.fetch(args.centroids)
    centers = load_centroids(centroids)
    rank, world = jax.process_index(), jax.process_count()
    out = args.stage.output(args.out, owner=rank == 0)
    _output_folder(out)
    if centers.shape[1] != feats.shape[1]:
        raise ValueError(f"{args.centroids}: {centers.shape[1]}-d centroids for {feats.shape[1]}-d features "
                         f"in {args.feats}.npy")
    made = {"stage": "label", "feats": storage.absolute(args.feats), "feats_made": records,
            "centroids": storage.absolute(args.centroids), "centroids_sha256": provenance.file_sha256(centroids)}
    first, last = shard_range(len(lengths), world, rank)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    part = out if world == 1 else f"{out}.part{rank}-of-{world}"
    with Progress(int(offsets[last] - offsets[first]), "label", unit="frame", enabled=main_process()) as bar:
        try:
            write_int_labels(part, label_utterances(feats, lengths, centers, first=first, last=last, progress=bar))
        except NonFiniteFeatures as e:
            raise ValueError(
                f"label: {args.feats}: {describe_rows(e.rows, lengths, _audio_paths(local, args.nshard))} "
                f"are NaN or infinite and have no nearest centroid; fix or drop those utterances") from None
    if world == 1:
        provenance.write(out, made)
        write_skipped(f"{out}.skipped", load_skipped(local, args.nshard))
        print(f"{args.out}: {len(lengths)} utterances, {int(offsets[-1])} frames")
        return
    from jax.experimental import multihost_utils

    args.stage.publish()  # in a bucket, this host's part is there before process 0 looks for it
    multihost_utils.sync_global_devices(f"label parts {args.out}")
    if rank == 0:
        parts = [args.stage.sibling(out, f".part{r}-of-{world}") for r in range(world)]
        concatenate(parts, out)
        write_skipped(f"{out}.skipped", load_skipped(local, args.nshard))
        provenance.write(out, made)
        for path in parts:
            args.stage.remove(path)
        print(f"{args.out}: {len(lengths)} utterances from {world} hosts")
    multihost_utils.sync_global_devices(f"label done {args.out}")


def _label_from_model(args) -> None:
    import jax

    from hubert_jax.auto import FlaxAutoModel
    from hubert_jax.labels.dump import shard_range
    from hubert_jax.labels.kmeans import load_centroids
    from hubert_jax.labels.model_labels import label_with_model, part_path

    for flag in ("layer", "manifest"):
        if getattr(args, flag) is None:
            raise SystemExit(f"label --model: give --{flag} as well")
    model = FlaxAutoModel.from_pretrained(args.model)
    centroids = args.stage.fetch(args.centroids)
    centers = load_centroids(centroids)
    entries = read_manifest(args.manifest)
    check_files_exist(args.manifest, entries)
    rank = jax.process_index() if args.rank is None else args.rank
    world = jax.process_count() if args.world is None else args.world
    out = args.stage.output(args.out, resume=True, owner=world == 1)
    _output_folder(out)
    first, last = shard_range(len(entries), world, rank)
    start = time.perf_counter()

    def other_parts(paths: list[str]) -> list[str | None]:  # in a bucket: this host's part uploaded, the others' copied
        args.stage.publish()
        return [path if r == rank else args.stage.sibling(out, path[len(out):]) for r, path in enumerate(paths)]

    with Progress(last - first, f"label layer {args.layer}", unit="utt", enabled=main_process()) as bar:
        stats = label_with_model(model, entries, out, layer=args.layer, centers=centers, rank=rank, world=world,
                                 chunk_size=args.chunk_size, max_tokens=args.max_tokens, strict=args.strict,
                                 threads=args.threads, progress=bar, manifest=args.manifest, parts=other_parts,
                                 made=_manifest_record(args.manifest) | {
                                     "model": storage.absolute(args.model),
                                     "centroids_sha256": provenance.file_sha256(centroids)})
    elapsed = time.perf_counter() - start
    print(f"{args.stage.name(part_path(out, rank, world))}: layer {args.layer} labels of {stats['utterances']} "
          f"utterances, {stats['computed']} of {stats['chunks']} chunks computed now, {stats['skipped']} files skipped; "
          f"{stats['audio_seconds']:.0f} s of audio in {elapsed:.1f} s"
          + (f"; joined every host's part into {args.out}" if stats["joined"] and world > 1 else ""))


def _model(args):
    """--model DIR (trained) or --preset NAME (random weights, seeded by --seed)."""
    from hubert_jax import families
    from hubert_jax.auto import FlaxAutoModel
    from hubert_jax.config import preset

    if (args.model is None) == (args.preset is None):
        raise SystemExit("dump: give exactly one of --model DIR (trained) or --preset NAME (random weights)")
    if args.model is not None:
        return FlaxAutoModel.from_pretrained(args.model)
    from flax import nnx

    config = preset(args.preset)
    return families.base_model_class(config.model_type)(config, rngs=nnx.Rngs(args.seed))


def cmd_dump(args) -> None:
    import jax

    from hubert_jax.labels.dump import dump_features

    model = _model(args)
    entries = read_manifest(args.manifest)
    check_files_exist(args.manifest, entries)
    sample = {}
    if args.percent < 1:  # k-means' sample only: the other utterances' features are never computed
        entries = [entries[i] for i in sample_utterances(len(entries), args.percent, args.sample_seed)]
        sample = {"percent": args.percent, "sample_seed": args.sample_seed}
    rank = jax.process_index() if args.rank is None else args.rank
    world = jax.process_count() if args.world is None else args.world
    prefix = args.stage.output(f"{args.out}_{rank}_{world}", resume=True)
    start = time.perf_counter()
    from hubert_jax.labels.dump import shard_range

    first, last = shard_range(len(entries), world, rank)
    with Progress(last - first, f"dump layer {args.layer}", unit="utt", enabled=main_process()) as bar:
        stats = dump_features(model, entries, prefix, layer=args.layer, rank=rank, world=world,
                              chunk_size=args.chunk_size, max_tokens=args.max_tokens, strict=args.strict,
                              threads=args.threads, progress=bar, manifest=args.manifest,
                              made=_manifest_record(args.manifest) | sample | {
                                  "model": storage.absolute(args.model) if args.model else f"preset {args.preset}"})
    elapsed = time.perf_counter() - start
    print(f"{args.stage.name(prefix)}.npy: layer {args.layer} of {stats['utterances']} utterances, "
          f"{stats['computed']} of {stats['chunks']} chunks computed now, {stats['skipped']} files skipped; "
          f"{stats['audio_seconds']:.0f} s of audio in {elapsed:.1f} s = "
          f"{stats['audio_seconds'] / max(elapsed, 1e-9):.1f} audio seconds per second")


def cmd_quality(args) -> None:
    from hubert_jax.labels.quality import quality_of_km_file

    q = quality_of_km_file(args.km, args.phones, args.manifest, args.label_rate)
    print(f"{args.km}: phone purity {q.phone_purity:.3f}  cluster purity {q.cluster_purity:.3f}  "
          f"PNMI {q.pnmi:.3f}  ({q.frames} frames)")


def cmd_tfds(args) -> None:
    from hubert_jax.data.tfds_source import Address, write_manifest

    address = Address.parse(args.dataset, data_dir=args.data_dir)
    start = time.perf_counter()
    count = write_manifest(address, args.out)
    print(f"{args.out}.tsv: {count} examples of {address} in {time.perf_counter() - start:.1f} s")


def cmd_manifest(args) -> None:
    from hubert_jax.data.scan import audio_files, check_root, write_manifests

    extensions = tuple(e.strip() for e in args.ext.split(",") if e.strip())
    if not extensions:
        raise ValueError(f"--ext={args.ext!r}: give at least one extension (e.g. flac,wav)")
    check_root(args.root)
    total = sum(1 for _ in audio_files(args.root, extensions))  # a listing only: the bar's total
    if total == 0:
        raise FileNotFoundError(f"{args.root}: no .{', .'.join(extensions)} files under it (--ext chooses the "
                                f"extensions)")
    bar = Progress(total, "manifest", unit="file")
    start = time.perf_counter()

    def report(path: str, why: str) -> None:
        print(f"{path}: {why}; left out", file=sys.stderr)

    summary = write_manifests(args.root, args.out, extensions=extensions, valid_fraction=args.valid_percent,
                              seed=args.seed, threads=args.threads, report=report, progress=bar.update)
    bar.close()
    for split, path in summary.paths.items():
        print(f"{path}: {summary.files[split]} files, {summary.hours(split):.2f} h at {SAMPLE_RATE} Hz")
    elapsed = time.perf_counter() - start
    print(f"{total} files read in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} files/s)"
          + (f"; {len(summary.unreadable)} left out (listed above)" if summary.unreadable else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("python -m hubert_jax.labels"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manifest", help="a fairseq manifest (train.tsv, valid.tsv) from a folder of audio files")
    p.add_argument("root", help="the folder holding the audio (searched recursively; the manifests' root line)")
    p.add_argument("--out", required=True, help="output folder: {out}/train.tsv and {out}/valid.tsv (as fairseq's "
                                                "wav2vec_manifest.py --dest)")
    p.add_argument("--ext", default="flac,wav", help="audio file extensions, comma-separated")
    p.add_argument("--valid-percent", type=float, default=0.01,
                   help="fraction of the files for valid.tsv, in [0, 1) (fairseq's default 0.01; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="chooses the valid files (with each file's path)")
    p.add_argument("--threads", type=int, default=16, help="header reads at once")
    p.set_defaults(func=cmd_manifest, local=True)
    p = sub.add_parser("mfcc", help="39-d Kaldi MFCC + deltas for every utterance of a manifest")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="output prefix: {out}.npy and {out}.len")
    p.add_argument("--batch", type=int, default=32, help="utterances per vectorised batch")
    p.add_argument("--threads", type=int, default=4, help="files read and decoded ahead, and batches computed, "
                                                          "in parallel")
    p.add_argument("--strict", action="store_true", help="stop at the first unusable audio file")
    p.add_argument("--rank", type=int, help="this host's shard, written to {out}_{rank}_{world} (default: "
                                            "jax.process_index(); one process without --rank/--world: {out})")
    p.add_argument("--world", type=int, help="number of shards (default: jax.process_count())")
    p.set_defaults(func=cmd_mfcc)
    p = sub.add_parser("dump", help="layer-L features of a hubert-jax model, sharded by rank/world, resumable")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="prefix; writes {out}_{rank}_{world}.npy/.len")
    p.add_argument("--layer", type=int, required=True, help="hidden_states index (fairseq output_layer)")
    p.add_argument("--model", help="a hubert-jax or transformers model directory")
    p.add_argument("--preset", help="a random-weight preset instead of --model (e.g. hubert-base)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, help="this shard (default: jax.process_index())")
    p.add_argument("--world", type=int, help="number of shards (default: jax.process_count())")
    p.add_argument("--chunk-size", type=int, default=64, help="utterances per resumable chunk")
    p.add_argument("--max-tokens", type=int, default=64 * SAMPLE_RATE,
                   help="samples per model call (utterances are batched over a few padded lengths)")
    p.add_argument("--threads", type=int, default=4, help="files read and decoded ahead in parallel")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--percent", type=float, default=1.0,
                   help="dump only this fraction of the utterances, drawn by --sample-seed: k-means' sample, "
                        "the same utterances as kmeans --percent P --seed S on a full dump")
    p.add_argument("--sample-seed", type=int, default=0)
    p.set_defaults(func=cmd_dump)
    p = sub.add_parser("kmeans", help="fit mini-batch k-means on (a sample of) dumped features")
    p.add_argument("--feats", required=True)
    p.add_argument("--nshard", type=int, default=0, help="read the dump shards {feats}_{rank}_{nshard}")
    p.add_argument("--clusters", type=int, required=True)
    p.add_argument("--out", required=True, help="centroids .npy")
    p.add_argument("--percent", type=float, default=1.0,
                   help="fraction of the utterances to fit on, drawn by --seed (fairseq's; recipe: 0.1)")
    p.add_argument("--batch-size", type=int, default=10000)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--n-init", type=int, default=20)
    p.add_argument("--data-parallel", action="store_true",
                   help="shard every batch over all devices (always on with several hosts)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_kmeans)
    p = sub.add_parser("label", help="write a fairseq .km file: nearest centroid per frame, of dumped features "
                                     "(--feats) or of a model's layer computed on the fly (--model, no dump)")
    p.add_argument("--feats", help="dumped features (mfcc / dump)")
    p.add_argument("--nshard", type=int, default=0, help="read the dump shards {feats}_{rank}_{nshard}")
    p.add_argument("--centroids", required=True)
    p.add_argument("--out", required=True)
    g = p.add_argument_group("from a model, without a dump (sharded by rank/world, resumable)")
    g.add_argument("--model", help="a hubert-jax or transformers model directory")
    g.add_argument("--layer", type=int, help="hidden_states index (fairseq output_layer)")
    g.add_argument("--manifest")
    g.add_argument("--rank", type=int, help="this host's part, {out}.part{rank}-of-{world} (default: "
                                            "jax.process_index()); the last host done joins them into {out}")
    g.add_argument("--world", type=int, help="number of parts (default: jax.process_count())")
    g.add_argument("--chunk-size", type=int, default=64, help="utterances per resumable chunk")
    g.add_argument("--max-tokens", type=int, default=64 * SAMPLE_RATE, help="samples per model call")
    g.add_argument("--threads", type=int, default=4, help="files read and decoded ahead in parallel")
    g.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_label)
    p = sub.add_parser("quality", help="phone purity, cluster purity and PNMI of a .km file")
    p.add_argument("--km", required=True)
    p.add_argument("--phones", required=True, help="frame-level phone ids at 100 Hz (the corpus' .phn)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--label-rate", type=int, default=100, choices=(100, 50))
    p.set_defaults(func=cmd_quality)
    p = sub.add_parser("tfds", help="a manifest (+ .wrd) for a prepared tensorflow-datasets split")
    p.add_argument("--dataset", required=True, help="tfds://NAME[/CONFIG][:VERSION]/SPLIT")
    p.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--out", required=True, help="output prefix: {out}.tsv and {out}.wrd")
    p.set_defaults(func=cmd_tfds)
    for name, p in sub.choices.items():
        if name != "manifest":  # one host lists the folder
            _distributed_arguments(p)
    args = parser.parse_args(argv)
    args.stage = Staging()
    if getattr(args, "local", False):
        args.func(args)
        return 0
    from hubert_jax import distributed

    distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                           process_id=args.process_id, timeout_s=args.init_timeout, mode=args.distributed)
    args.func(args)
    uploaded = args.stage.publish()  # gs:// outputs, written in the scratch folder (labels/staging.py)
    if uploaded:
        print(f"uploaded {len(uploaded)} file(s): {', '.join(uploaded)}")
    return 0


def _distributed_arguments(p) -> None:
    """Multi-host: run the same command on every host (hubert_jax/distributed.py); dump shards by host,
    kmeans splits every batch over all hosts' devices, label splits the utterances."""
    g = p.add_argument_group("multi-host")
    g.add_argument("--distributed", default="auto", choices=("auto", "on", "off"))
    g.add_argument("--coordinator_address", help="host:port of process 0 (outside TPU pods/SLURM/MPI)")
    g.add_argument("--num_processes", type=int)
    g.add_argument("--process_id", type=int)
    g.add_argument("--init_timeout", type=int, default=300)


if __name__ == "__main__":
    sys.exit(main())
