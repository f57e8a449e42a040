"""The end-to-end HuBERT recipe on the corpus shipped in data/demo, small enough for 2 CPU cores:

  1. MFCC (39-d, 100 Hz) -> k-means -> iteration-1 labels; their PNMI against the corpus' phones
  2. iteration 1: a tiny HuBERT (configs/demo.py) trained on them; masked accuracy on the valid split
  3. its layer-L features -> k-means -> iteration-2 labels (50 Hz); their PNMI
  4. iteration 2 (short) on those labels
  5. export: a directory that FlaxAutoModel.from_pretrained and transformers' HubertModel both load

    python -m hubert_jax.demo [--workdir work/demo]
    python -m hubert_jax.demo --family wavlm [--workdir work/demo_wavlm]

`--family wav2vec2` runs wav2vec 2.0's contrastive pretraining instead (hubert_jax/demos/wav2vec2.py).
`--family wavlm` runs the same stages with WavLM's denoising masked prediction (a tiny WavLM encoder, the
inputs utterance-mixed, configs/wavlm_base_plus.py's mixing), then 6: speaker identification from frozen
features with a linear head (hubert_jax/probe.py) for three iteration-1 models trained on the same labels
for the same steps: HuBERT, WavLM without mixing and WavLM with mixing (WavLM's claim, in miniature).

Every stage writes under --workdir and a rerun picks up where the last one stopped (training resumes from
its checkpoints).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from hubert_jax.cli_errors import prog_name
from hubert_jax.demos.common import DATA, demo_config, in_work_folder, say

SPLITS = ("train", "valid")


def kmeans_labels(feats: dict[str, str], out_dir: str, clusters: int, seed: int) -> dict[str, str]:
    """Fit k-means on the train features, label every split; returns {split: .km path}."""
    from hubert_jax.data.manifest import write_int_labels
    from hubert_jax.labels.features import load_features, split_utterances
    from hubert_jax.labels.kmeans import KMeansConfig, fit, predict

    os.makedirs(out_dir, exist_ok=True)
    train, _ = load_features(feats["train"])
    centers = fit(np.asarray(train), KMeansConfig(clusters, batch_size=10000, max_iter=100, n_init=5, seed=seed))
    np.save(os.path.join(out_dir, "centroids.npy"), centers)
    out = {}
    for split, prefix in feats.items():
        x, lengths = load_features(prefix)
        out[split] = os.path.join(out_dir, f"{split}.km")
        write_int_labels(out[split], split_utterances(predict(np.asarray(x), centers), lengths))
    return out


def every_other_frame(km: dict[str, str], out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for split, path in km.items():
        out[split] = os.path.join(out_dir, f"{split}.km")
        with open(path) as src, open(out[split], "w") as dst:
            dst.writelines(" ".join(line.split()[::2]) + "\n" for line in src)
    return out


def majority_share(path: str, *, text: bool = False) -> float:
    """The share of the most frequent label (of a .km file's frames, or with `text` of a file's lines): the
    accuracy of always guessing it."""
    if text:
        lines = [line.strip() for line in open(path, encoding="utf-8")]
        return max(lines.count(c) for c in set(lines)) / len(lines)
    labels = np.concatenate([np.asarray(line.split(), int) for line in open(path) if line.strip()])
    return float(np.bincount(labels).max() / len(labels))


def label_quality(km: dict[str, str], label_rate: int) -> dict[str, float]:
    from hubert_jax.labels.quality import quality_of_km_file

    result = {}
    for split, path in km.items():
        q = quality_of_km_file(path, os.path.join(DATA, f"{split}.phn"), os.path.join(DATA, f"{split}.tsv"),
                               label_rate)
        print(f"  {split}: phone purity {q.phone_purity:.3f}  cluster purity {q.cluster_purity:.3f}  "
              f"PNMI {q.pnmi:.3f}")
        result[split] = q.pnmi
    return result


def train_iteration(cfg, km: dict[str, str], label_rate: float, steps: int, workdir: str):
    from hubert_jax.training.run import run

    cfg.model.head.label_rate = label_rate
    for split in SPLITS:
        cfg.data[split].manifest = os.path.join(DATA, f"{split}.tsv")
        cfg.data[split].labels = (km[split],)
    cfg.train.steps = cfg.optim.schedule.total_steps = steps
    cfg.optim.schedule.warmup_steps = min(cfg.optim.schedule.warmup_steps, steps // 4)
    return run(cfg, workdir)


def dump_layer(model_dir: str, layer: int, out_dir: str) -> dict[str, str]:
    from hubert_jax.data.manifest import read_manifest
    from hubert_jax.labels.dump import dump_features
    from hubert_jax.auto import FlaxAutoModel

    model = FlaxAutoModel.from_pretrained(model_dir)
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for split in SPLITS:
        manifest = os.path.join(DATA, f"{split}.tsv")
        prefix = os.path.join(out_dir, split)
        stats = dump_features(model, read_manifest(manifest), prefix, layer=layer)
        print(f"  {split}: layer {layer} of {stats['utterances']} utterances")
        out[split] = prefix
    return out


def check_export(directory: str, trainer, state) -> dict[str, float]:
    """The exported model's hidden states, loaded back by hubert-jax and (when installed) transformers,
    against the trained model's own."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from hubert_jax.auto import FlaxAutoModel

    x = np.asarray(np.random.default_rng(0).standard_normal((1, 32000)), np.float32)
    # the trained weights on the host, as the loaded ones are: both models then run the same program on the same
    # device, so any difference is the export's (the run's own sharding can round a masked sum differently)
    trained = nnx.merge(trainer.graphdef, *jax.device_get((state["params"], state["rest"]))).base_model
    want = np.asarray(trained(jnp.asarray(x)).last_hidden_state)
    loaded = FlaxAutoModel.from_pretrained(directory)
    diffs = {"hubert-jax": float(np.abs(np.asarray(loaded(jnp.asarray(x)).last_hidden_state) - want).max())}
    try:
        import torch
        import transformers
    except ImportError:
        print("  (transformers not installed: skipped loading the export with transformers)")
        return diffs
    tmodel = getattr(transformers, type(trained).__name__).from_pretrained(directory).eval()
    with torch.no_grad():
        got = tmodel(torch.from_numpy(x)).last_hidden_state.numpy()
    diffs["transformers"] = float(np.abs(got - want).max())
    return diffs


def speaker_probes(family_runs: dict, wd: str, steps: int, km: dict, clusters: int) -> dict[str, dict]:
    """Stage 6: the speaker-identification probe's accuracies for each iteration-1 model; `family_runs`
    maps a name to the run whose model is probed, or to (family, mix) for one trained here on `km`."""
    from hubert_jax.auto import FlaxAutoModel
    from hubert_jax.probe import probe

    splits = {s: (os.path.join(DATA, f"{s}.tsv"), os.path.join(DATA, f"{s}.spk")) for s in SPLITS}
    out = {}
    for name, what in family_runs.items():
        if isinstance(what, tuple):
            family, mix = what
            cfg = demo_config(family, mix=mix)
            cfg.model.head.num_classes = (clusters,)
            what = train_iteration(cfg, km, 100.0, steps, os.path.join(wd, "compare", name))
        directory = what.trainer.export(what.state, os.path.join(wd, "compare", name, "model"))
        out[name] = probe(FlaxAutoModel.from_pretrained(directory), splits["train"], splits["valid"])
        print(f"  {name}: speaker identification accuracy: valid {out[name]['valid']:.3f}, "
              f"cross-validated {out[name]['cross_validated']:.3f}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog=prog_name("python -m hubert_jax.demo"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("hubert", "wavlm", "wav2vec2"), default="hubert",
                        help="HuBERT's masked prediction, WavLM's on utterance-mixed input (adds stage 6), or "
                             "wav2vec 2.0's contrastive pretraining (hubert_jax/demos/wav2vec2.py)")
    parser.add_argument("--workdir", help="default: work/demo (hubert), work/demo_wavlm, work/demo_wav2vec2")
    parser.add_argument("--dtype", default="float32", help="wav2vec2: the compute dtype (bfloat16: the "
                                                           "stability check)")
    parser.add_argument("--ctc-steps", type=int, help="wav2vec2: CTC fine-tuning steps (default: configs/ctc_demo.py)")
    parser.add_argument("--skip-ctc", action="store_true", help="wav2vec2: no CTC comparison")
    parser.add_argument("--clusters", type=int, default=50, help="k-means clusters for both iterations")
    parser.add_argument("--steps1", type=int, help="iteration-1 steps (default: configs/demo.py)")
    parser.add_argument("--steps2", type=int, help="iteration-2 steps (default: a third of iteration 1)")
    parser.add_argument("--layer", type=int, help="iteration-1 layer for the iteration-2 labels (default: the "
                                                  "last but one; see README for why not the middle)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not os.path.isfile(os.path.join(DATA, "train.tsv")):
        raise SystemExit(f"{DATA}: the demo corpus is not there; run the demo from a clone of the repository "
                         f"installed with `pip install -e .`")
    family = args.family
    if family == "wav2vec2":
        from hubert_jax.demos import wav2vec2

        return wav2vec2.main(args)
    return in_work_folder(args.workdir or ("work/demo" if family == "hubert" else "work/demo_wavlm"),
                          lambda wd: _demo(args, wd, start))


def _demo(args, wd: str, start: float) -> dict:
    """Stages 1-6 in the work folder `wd` (a local folder)."""
    from hubert_jax.labels import cli as labels_cli

    family = args.family
    name = {"hubert": "HuBERT", "wavlm": "WavLM (utterance mixing)"}[family]
    base = demo_config(family)
    steps1 = args.steps1 or base.train.steps
    steps2 = args.steps2 or max(steps1 // 3, 1)
    layer = args.layer or max(base.model.overrides.num_hidden_layers - 1, 1)

    say(f"1. MFCC features and k-means ({args.clusters} clusters): iteration-1 labels")
    mfcc = {}
    for split in SPLITS:
        mfcc[split] = os.path.join(wd, "mfcc", split)
        os.makedirs(os.path.dirname(mfcc[split]), exist_ok=True)
        labels_cli.main(["mfcc", "--manifest", os.path.join(DATA, f"{split}.tsv"), "--out", mfcc[split]])
    km1 = kmeans_labels(mfcc, os.path.join(wd, "labels", "iter1"), args.clusters, base.seed)
    pnmi1 = label_quality(km1, 100)
    print("  the same labels at the model's 50 Hz (every other frame), for a like-for-like comparison:")
    pnmi1_50 = label_quality(every_other_frame(km1, os.path.join(wd, "labels", "iter1_50hz")), 50)

    say(f"2. iteration 1: tiny {name} on the MFCC labels, {steps1} steps")
    cfg1 = demo_config(family)
    cfg1.model.head.num_classes = (args.clusters,)
    it1 = train_iteration(cfg1, km1, 100.0, steps1, os.path.join(wd, "iter1"))  # exports iter1/model

    say(f"3. layer-{layer} features of iteration 1 and k-means: iteration-2 labels (50 Hz)")
    feats = dump_layer(os.path.join(wd, "iter1", "model"), layer, os.path.join(wd, "features", f"layer{layer}"))
    km2 = kmeans_labels(feats, os.path.join(wd, "labels", "iter2"), args.clusters, base.seed)
    pnmi2 = label_quality(km2, 50)

    say(f"4. iteration 2 on those labels, {steps2} steps")
    cfg2 = demo_config(family)
    cfg2.model.head.num_classes = (args.clusters,)
    it2 = train_iteration(cfg2, km2, 50.0, steps2, os.path.join(wd, "iter2"))

    say("5. export")
    model_dir = it2.trainer.export(it2.state, os.path.join(wd, "model"))
    diffs = check_export(model_dir, it2.trainer, it2.state)
    for who, d in diffs.items():
        print(f"  loaded with {who}: max |difference| from the trained model {d:.2e}")

    speaker = {}
    if family == "wavlm":
        say(f"6. speaker identification from frozen features (linear head), iteration-1 models, {steps1} steps each")
        speaker = speaker_probes({"hubert": ("hubert", True), "wavlm_no_mixing": ("wavlm", False),
                                  "wavlm_mixing": it1}, wd, steps1, km1, args.clusters)
        speaker["always_the_commonest"] = {"valid": majority_share(os.path.join(DATA, "valid.spk"), text=True)}

    chance = {"iter1": majority_share(km1["valid"]), "iter2": majority_share(km2["valid"])}
    summary = {
        "pnmi_mfcc_100hz": pnmi1, "pnmi_mfcc_50hz": pnmi1_50, "pnmi_iter1_layer": pnmi2, "layer": layer,
        "valid_accuracy_m": {"iter1": it1.valid.get("accuracy_m"), "iter2": it2.valid.get("accuracy_m")},
        "majority_share": chance, "export": model_dir, "load_diffs": diffs,
        "minutes": (time.perf_counter() - start) / 60, "family": family,
    }
    if speaker:
        summary["speaker_id_accuracy"] = speaker
    say("summary")
    print("  label PNMI against the phones (train / valid):")
    for name, pnmi in (("MFCC k-means, 100 Hz", pnmi1), ("MFCC k-means, 50 Hz", pnmi1_50),
                       (f"iteration 1 layer {layer}, 50 Hz", pnmi2)):
        print(f"    {name:<32}{pnmi['train']:.3f} / {pnmi['valid']:.3f}")
    for it, result in (("iter1", it1), ("iter2", it2)):
        print(f"  masked-prediction accuracy ({it}, valid): {result.valid.get('accuracy_m', float('nan')):.3f} "
              f"(always guessing the commonest label: {chance[it]:.3f})")
    if speaker:
        print("  speaker identification from frozen iteration-1 features, linear head (accuracy: valid, and")
        print("  5-fold cross-validated over all 220 utterances):")
        for key, label in (("hubert", "HuBERT"), ("wavlm_no_mixing", "WavLM, no mixing"),
                           ("wavlm_mixing", "WavLM, utterance mixing"),
                           ("always_the_commonest", "always the commonest speaker")):
            cv = speaker[key].get("cross_validated")
            print(f"    {label:<32}{speaker[key]['valid']:.3f}" + (f" / {cv:.3f}" if cv is not None else ""))
    print(f"  model: {model_dir}  ({summary['minutes']:.1f} min in all)")
    return summary


if __name__ == "__main__":
    main()
