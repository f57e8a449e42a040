"""The label pipeline against fairseq's `simple_kmeans` scripts: wall time, CPU time, peak anonymous memory and
disk of each stage at several corpus sizes, k-means inertia and PNMI, and what 4,000 hours would take.

    python benchmarks/labels.py --hours 1 4 [--fairseq-python /tmp/peer/bin/python] [--clusters 100]
        [--percent 0.1] [--workdir work/bench_labels] [--model-stages]

Corpus: data/demo/train.tsv's utterances repeated, each copy with a random gain (0.8-1.2) and speed (0.9-1.1,
linear resampling) from a seed, up to each size (16-bit FLAC, written once into the workdir).

Stages, each one subprocess, as one host of a sharded run executes them (rank 0 of 1):
- ours: `labels mfcc`, `labels kmeans --percent P` (whole utterances), `labels label --feats`;
- fairseq (--fairseq-python, a venv with `fairseq-fixed`, see scripts/make_peer_fixtures.py):
  `dump_mfcc_feature.py`, `learn_kmeans.py --percent P` (scikit-learn MiniBatchKMeans, fairseq's defaults:
  batch 10000, max_iter 100, n_init 20, max_no_improvement 100), `dump_km_label.py`;
- with --model-stages, ours without a full dump (no fairseq counterpart): `dump --percent P` of a small random
  HuBERT's layer 2 and `label --model` over every utterance (memory and time shape, not a real model's speed).

Peak anonymous memory is the largest RssAnon of /proc/PID/status, read every 20 ms (file pages of memory-
mapped features are left out: the kernel drops them under pressure); CPU time is the child's user + system
time. Quality: both centroid sets scored on the same features (ours): inertia per frame on a 200,000-frame
sample of the largest corpus, and PNMI of the demo train split's labels against its phones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "demo")
FAIRSEQ_SCRIPTS = "fairseq/examples/hubert/simple_kmeans"


# ----------------------------------------------------------------------------------------------- the corpus
def make_corpus(hours: float, folder: str, seed: int = 0) -> str:
    """A manifest of about `hours` of audio from the demo train split (see the module); returns its path."""
    import soundfile as sf

    from hubert_jax.data.manifest import read_audio, read_manifest

    manifest = os.path.join(folder, "train.tsv")
    if os.path.exists(manifest):
        return manifest
    os.makedirs(folder, exist_ok=True)
    entries = read_manifest(os.path.join(DEMO, "train.tsv"))
    rng = np.random.default_rng(seed)
    rows, total, copy = [], 0.0, 0
    while total < hours * 3600:
        for e in entries:
            audio = read_audio(e.path)
            speed, gain = rng.uniform(0.9, 1.1), rng.uniform(0.8, 1.2)
            n = int(len(audio) / speed)
            out = np.interp(np.arange(n) * speed, np.arange(len(audio)), audio) * gain
            name = f"c{copy:03d}/{os.path.basename(e.path)}"
            os.makedirs(os.path.join(folder, f"c{copy:03d}"), exist_ok=True)
            sf.write(os.path.join(folder, name), np.clip(out, -1, 1), 16000, subtype="PCM_16")
            rows.append(f"{name}\t{n}")
            total += n / 16000
            if total >= hours * 3600:
                break
        copy += 1
    with open(manifest + ".tmp", "w") as f:
        f.write("\n".join([os.path.abspath(folder)] + rows) + "\n")
    os.replace(manifest + ".tmp", manifest)
    return manifest


# ------------------------------------------------------------------------------------------- one measured run
def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd`; its wall time, CPU time and peak anonymous memory (MB). Raises with its output if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    anon = next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
                peak[0] = max(peak[0], anon)
            except (OSError, StopIteration):
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime, "anon_mb": peak[0] / 1024,
            "maxrss_mb": usage.ru_maxrss / 1024}


def disk_mb(*paths: str) -> float:
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p)) / 2 ** 20


# -------------------------------------------------------------------------------------------------- pipelines
def ours(manifest: str, out: str, clusters: int, percent: float) -> dict:
    labels = [sys.executable, "-m", "hubert_jax.labels"]
    local = ["--distributed", "off"]
    feats, km = os.path.join(out, "mfcc"), os.path.join(out, "km.npy")
    return {
        "mfcc": measure(labels + ["mfcc", "--manifest", manifest, "--out", feats, *local]) | {
            "disk_mb": disk_mb(feats + ".npy", feats + ".len")},
        "kmeans": measure(labels + ["kmeans", "--feats", feats, "--clusters", str(clusters), "--percent", str(percent),
                                    "--out", km, *local]) | {"disk_mb": disk_mb(km)},
        "label": measure(labels + ["label", "--feats", feats, "--centroids", km, "--out", os.path.join(out, "train.km"),
                                   *local]) | {"disk_mb": disk_mb(os.path.join(out, "train.km"))},
    }, feats, km


# torchaudio 2.9+ has no sox_effects, which fairseq's audio reader imports even when it applies no effect (16 kHz
# mono input, as here); this module stands in for it in the fairseq processes only, and fails if ever called
SOX_SHIM = """import sys, types
def _no_sox(*args, **kwargs):
    raise RuntimeError("benchmarks/labels.py: sox effects are not available (the corpus is 16 kHz mono)")
sys.modules["torchaudio.sox_effects"] = types.SimpleNamespace(apply_effects_tensor=_no_sox)
"""


def fairseq(python: str, manifest: str, out: str, clusters: int, percent: float) -> dict:
    scripts = subprocess.run([python, "-c", "import fairseq, os; print(os.path.dirname(fairseq.__file__))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    scripts = os.path.join(os.path.dirname(scripts), FAIRSEQ_SCRIPTS)
    tsv_dir, km = os.path.dirname(manifest), os.path.join(out, "km.pkl")
    os.makedirs(os.path.join(out, "shim"), exist_ok=True)
    with open(os.path.join(out, "shim", "sitecustomize.py"), "w") as f:
        f.write(SOX_SHIM)
    env = dict(os.environ, PYTHONPATH=os.path.join(out, "shim"))
    feats = [os.path.join(out, "train_0_1" + s) for s in (".npy", ".len")]
    stages = {
        "mfcc": measure([python, os.path.join(scripts, "dump_mfcc_feature.py"), tsv_dir, "train", "1", "0", out],
                        env=env) | {"disk_mb": disk_mb(*feats)},
        "kmeans": measure([python, os.path.join(scripts, "learn_kmeans.py"), out, "train", "1", km, str(clusters),
                           "--percent", str(percent)], env=env) | {"disk_mb": disk_mb(km)},
        "label": measure([python, os.path.join(scripts, "dump_km_label.py"), out, "train", km, "1", "0", out],
                         env=env) | {"disk_mb": disk_mb(os.path.join(out, "train_0_1.km"))},
    }
    centers = os.path.join(out, "km_centers.npy")
    subprocess.run([python, "-c", f"import joblib, numpy; numpy.save({centers!r}, "
                                  f"joblib.load({km!r}).cluster_centers_.astype('float32'))"], check=True)
    return stages, centers


def model_stages(manifest: str, out: str, model: str, percent: float) -> dict:
    labels = [sys.executable, "-m", "hubert_jax.labels"]
    local = ["--distributed", "off"]
    sample, km = os.path.join(out, "l2_sample"), os.path.join(out, "km_l2.npy")
    stages = {"dump --percent": measure(labels + ["dump", "--manifest", manifest, "--model", model, "--layer", "2",
                                                  "--percent", str(percent), "--out", sample, *local]) | {
        "disk_mb": disk_mb(sample + "_0_1.npy", sample + "_0_1.len")}}
    measure(labels + ["kmeans", "--feats", sample + "_0_1", "--clusters", "50", "--out", km, *local])
    stages["label --model"] = measure(labels + ["label", "--model", model, "--layer", "2", "--manifest", manifest,
                                                "--centroids", km, "--out", os.path.join(out, "l2.km"), *local]) | {
        "disk_mb": disk_mb(os.path.join(out, "l2.km"))}
    return stages


def small_model(path: str) -> str:
    """A random HuBERT of 4 layers of 128 on 7 convolutions of 64 channels (the demo's and curves' size)."""
    if not os.path.exists(os.path.join(path, "config.json")):
        from flax import nnx

        import hubert_jax

        config = hubert_jax.HubertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                         intermediate_size=256, conv_dim=(64,) * 7, num_conv_pos_embeddings=32,
                                         num_conv_pos_embedding_groups=8)
        hubert_jax.HubertModel(config, rngs=nnx.Rngs(0)).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------- quality
def quality(feats: str, centroid_sets: dict) -> dict:
    """Inertia per frame on a sample of `feats` and PNMI on the demo train split, for each centroid set."""
    from hubert_jax.labels.features import load_features
    from hubert_jax.labels.kmeans import inertia, label_utterances
    from hubert_jax.labels.mfcc import mfcc_with_deltas
    from hubert_jax.labels.quality import quality_of_km_file
    from hubert_jax.data.manifest import read_audio, read_manifest

    x, _ = load_features(feats)
    rows = np.sort(np.random.default_rng(0).choice(len(x), min(len(x), 200_000), replace=False))
    sample = np.asarray(x[rows], np.float32)
    demo = mfcc_with_deltas([read_audio(e.path) for e in read_manifest(os.path.join(DEMO, "train.tsv"))])
    lengths = [len(f) for f in demo]
    demo = np.concatenate(demo).astype(np.float32)
    result = {}
    for name, path in centroid_sets.items():
        centers = np.load(path)
        km = os.path.join(os.path.dirname(path), f"demo_{name}.km")
        with open(km, "w") as f:
            for labels in label_utterances(demo, lengths, centers):
                f.write(" ".join(map(str, labels)) + "\n")
        q = quality_of_km_file(km, os.path.join(DEMO, "train.phn"), os.path.join(DEMO, "train.tsv"))
        result[name] = {"inertia": inertia(sample, centers) / len(sample), "pnmi": q.pnmi}
    return result


# ------------------------------------------------------------------------------------------------------ report
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--percent", type=float, default=0.1)
    p.add_argument("--fairseq-python", help="python of a venv with fairseq-fixed (skipped without it)")
    p.add_argument("--model-stages", action="store_true", help="also dump --percent and label --model")
    p.add_argument("--workdir", default=os.path.join(ROOT, "work", "bench_labels"))
    args = p.parse_args(argv)

    import jax

    print(f"device: {jax.devices()[0].platform} ({os.cpu_count()} cores); corpus: data/demo/train.tsv repeated "
          f"with gain and speed changes; {args.clusters} clusters on {args.percent:g} of the utterances")
    print("| hours | stage | tool | wall s | CPU s | peak anon MB | max RSS MB | disk MB |")
    print("|---|---|---|---|---|---|---|---|")
    results, last = {}, None
    for hours in args.hours:
        manifest = make_corpus(hours, os.path.join(args.workdir, f"corpus_{hours:g}h"))
        runs = {}
        runs["hubert-jax"], feats, our_km = ours(manifest, os.path.join(args.workdir, f"ours_{hours:g}h"),
                                                 args.clusters, args.percent)
        centroid_sets = {"hubert-jax": our_km}
        if args.fairseq_python:
            runs["fairseq"], centroid_sets["fairseq"] = fairseq(
                args.fairseq_python, manifest, os.path.join(args.workdir, f"fairseq_{hours:g}h"), args.clusters,
                args.percent)
        if args.model_stages:
            runs["hubert-jax (model)"] = model_stages(manifest, os.path.join(args.workdir, f"model_{hours:g}h"),
                                                      small_model(os.path.join(args.workdir, "small_model")),
                                                      args.percent)
        for tool, stages in runs.items():
            for stage, m in stages.items():
                print(f"| {hours:g} | {stage} | {tool} | {m['wall']:.1f} | {m['cpu']:.1f} | {m['anon_mb']:.0f} | "
                      f"{m['maxrss_mb']:.0f} | {m['disk_mb']:.1f} |", flush=True)
        results[hours], last = runs, (feats, centroid_sets)

    if args.fairseq_python:
        print("\n| hours | stage | wall: hubert-jax / fairseq | CPU: hubert-jax / fairseq | peak anon: hubert-jax / "
              "fairseq |")
        print("|---|---|---|---|---|")
        for hours, runs in results.items():
            for stage, m in runs["hubert-jax"].items():
                ref = runs["fairseq"][stage]
                print(f"| {hours:g} | {stage} | {m['wall'] / ref['wall']:.2f} | {m['cpu'] / ref['cpu']:.2f} | "
                      f"{m['anon_mb'] / max(ref['anon_mb'], 1):.2f} |")

    print("\n| tool | inertia per frame (largest corpus, our MFCC) | PNMI (demo train, its phones) |")
    print("|---|---|---|")
    for name, q in quality(*last).items():
        print(f"| {name} | {q['inertia']:.4g} | {q['pnmi']:.3f} |")

    small, large = min(args.hours), max(args.hours)
    if large > small:
        print(f"\ngrowth of peak anonymous memory from {small:g} h to {large:g} h (flat: within 20%):")
        for tool in results[large]:
            print("  " + tool + ": " + ", ".join(
                f"{stage} {results[large][tool][stage]['anon_mb'] / max(results[small][tool][stage]['anon_mb'], 1):.2f}x"
                for stage in results[large][tool]))
    if large > small:
        print(f"\n4,000 h of audio, per stage: the fixed cost (start-up, compilation) plus the cost per audio hour, "
              f"both from the wall times at {small:g} h and {large:g} h (assumed linear; k-means grows with its "
              f"sample and stops early, so its figure is an upper bound). N hosts each take 1/N of mfcc, label and "
              f"dump; our k-means splits each batch over the hosts (all-reduce cost left out), fairseq's "
              f"learn_kmeans runs in one process on the whole sample:")
        for tool, stages in results[large].items():
            slope = {s: (m["wall"] - results[small][tool][s]["wall"]) / (large - small) for s, m in stages.items()}
            fixed = {s: max(0.0, results[small][tool][s]["wall"] - slope[s] * small) for s in stages}
            alone = {s: not (tool == "fairseq" and s == "kmeans") for s in stages}  # divides over hosts

            def hours(n):
                return sum(fixed[s] + max(slope[s], 0) * 4000 / (n if alone[s] else 1) for s in stages) / 3600

            print(f"  {tool}: " + ", ".join(f"{s} {max(slope[s], 0) * 4000 / 3600:.1f} h" for s in stages)
                  + f" on one host; in all {hours(1):.1f} h on one host, {hours(8):.1f} h on 8, {hours(32):.1f} h on 32")
    json.dump({str(h): r for h, r in results.items()}, open(os.path.join(args.workdir, "results.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
