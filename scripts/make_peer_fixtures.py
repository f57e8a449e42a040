"""Checkpoints written by fairseq, unilm and s3prl themselves, with those tools' own outputs, for the tests.

    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 && \
        /tmp/peer/bin/pip install fairseq-fixed soundfile && /tmp/peer/bin/pip install --no-deps s3prl
    # unilm's standalone WavLM: wavlm/WavLM.py and wavlm/modules.py of GitHub's microsoft/unilm, in /tmp/unilm/wavlm
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 /tmp/peer/bin/python scripts/make_peer_fixtures.py \
        --unilm /tmp/unilm/wavlm --out tests/fixtures/peer
    # then our exports back to fairseq (the python that has hubert_jax installed makes them)
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 /tmp/peer/bin/python scripts/make_peer_fixtures.py --exports "$(which python)"

It writes, under --out, one folder per format:
- fairseq: real `fairseq-hydra-train` runs of 2 updates on a tiny synthetic corpus (so `cfg`, `task_state`
  with its pickled Dictionary objects, optimizer history and state are the trainer's own): HuBERT base-like
  (post-LN, group norm, one label set), HuBERT large-like (pre-LN, layer norm, normalize, two label sets,
  untied final_proj), HuBERT CTC fine-tuned from the base-like run, wav2vec 2.0 pretraining and wav2vec 2.0
  CTC fine-tuned from it. Only `checkpoint_last.pt` is kept (optimizer state included).
  `hubert_large/checkpoint_dictconfig.pt` is the large-like run re-saved by fairseq's own loader and saver,
  which keeps `cfg` as an omegaconf DictConfig (as the released checkpoints have it), optimizer state stripped.
- unilm: WavLM base-like and large-like, built with unilm's own `WavLM`/`WavLMConfig` and saved as the
  released files are (`{'cfg': dict, 'model': state_dict}`).
- export (`--exports OURS_PYTHON`): our `--to-fairseq` exports of the fairseq fixtures above, of a HuBERT
  encoder alone and of a wav2vec 2.0 base model (tests/test_export_fairseq.py makes them), loaded by fairseq
  (`{name}.npz`: its outputs, as below) and, for the three pretraining ones, trained on for 3 updates by
  fairseq-hydra-train restored from them (`meta.json`: content digests, the runs' losses).
- s3prl: a DistilHuBERT `DistillerModel` after one optimizer step, saved with the runner's keys
  (`Distiller`, `Config`, `Args`, `Optimizer`, `Step`), read back through s3prl's own `UpstreamExpert`.

Each folder has `expected.npz` with the tool's outputs on fixed audio (`audio_0`, `audio_1`, unpadded):
`hidden_{i}_{L}` = input of layer 0 (L=0) and output of layer L, in transformers' numbering; `last_{i}` =
the model's final output (with the final LayerNorm of pre-LN models); CTC folders `logits_{i}`. It also
holds a padded batch of both clips (`padded_last`, `padded_mask`, the frames fairseq counts as valid).
HuBERT folders add the criterion's loss on `audio_0` with the labels and the mask it used
(`loss_labels_{k}`, `loss_mask`, `loss`, the criterion's loss divided by its sample size; `loss_nomask` with
pred_nomask_weight 0.5, whose sample size counts the unmasked frames too; `sample_size{,_nomask}`).
wav2vec 2.0 pretraining adds `projected_states_{i}` / `projected_quantized_*` from an unmasked forward.
`meta.json` says what each file is.

Tiny models (2 layers of 32, conv channels 48, the real conv strides so features are at 50 Hz) keep the
fixtures at a few MB. Nothing here is imported by the package or the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SR = 16000
CONV = "[(48,10,5)] + [(48,3,2)] * 4 + [(48,2,2)] * 2"
TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_feature_layers=CONV, conv_pos=8, conv_pos_groups=4)
LETTERS = "ETAONIHS"


def fixed_audio() -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 11840)]


# ----------------------------------------------------------------------------- the synthetic corpus
def write_corpus(root: str) -> None:
    """train/valid manifests, 50 Hz k-means labels (two label sets) and letter transcripts."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    os.makedirs(f"{root}/wav", exist_ok=True)
    for split, count in (("train", 8), ("valid", 2)):
        rows, km, km2, ltr = [], [], [], []
        for i in range(count):
            n = int(rng.integers(16000, 32000))
            t = np.arange(n) / SR
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
            name = f"wav/{split}{i}.wav"
            sf.write(f"{root}/{name}", wave.astype(np.float32), SR, subtype="PCM_16")
            rows.append(f"{name}\t{n}")
            frames = n // 320
            km.append(" ".join(map(str, rng.integers(0, 12, frames))))
            km2.append(" ".join(map(str, rng.integers(0, 7, frames))))
            words = ["".join(rng.choice(list(LETTERS), int(rng.integers(1, 4)))) for _ in range(2)]
            ltr.append(" ".join(" ".join(w) + " |" for w in words))
        for ext, lines in (("tsv", [root] + rows), ("km", km), ("km2", km2), ("ltr", ltr)):
            with open(f"{root}/{split}.{ext}", "w") as f:
                f.write("\n".join(lines) + "\n")
    for ext, k in (("km", 12), ("km2", 7)):
        with open(f"{root}/dict.{ext}.txt", "w") as f:  # as the recipe writes it: clusters 0..K-1 in order
            f.writelines(f"{c} 1\n" for c in range(k))
    with open(f"{root}/dict.ltr.txt", "w") as f:
        f.writelines(f"{c} {100 - i}\n" for i, c in enumerate("|" + LETTERS))


# ----------------------------------------------------------------------------- fairseq runs
COMMON = {
    "common": dict(cpu=True, fp16=False, seed=1, log_interval=1),
    "distributed_training": dict(distributed_world_size=1),
    "dataset": dict(num_workers=0, max_tokens=64000, disable_validation=True),
    "checkpoint": dict(no_epoch_checkpoints=True),
    "optimization": dict(max_update=2, lr=[0.0005]),
    "optimizer": dict(_name="adam", adam_betas="(0.9,0.98)", adam_eps=1e-06, weight_decay=0.01),
    "lr_scheduler": dict(_name="polynomial_decay", warmup_updates=1),
}


def fix_hubert_ctc() -> None:
    """fairseq 0.12 (and its main branch) can neither build nor load hubert_ctc: HubertEncoder reads
    `cfg.autoregressive`, which only HubertSeq2SeqConfig declares. This adds it (False, as CTC is)."""
    from omegaconf import open_dict
    from fairseq.models.hubert import hubert_asr

    init = hubert_asr.HubertEncoder.__init__
    if getattr(init, "fixed", False):
        return

    def patched(self, cfg, task):
        with open_dict(cfg):
            cfg.autoregressive = False
        init(self, cfg, task)

    patched.fixed = True
    hubert_asr.HubertEncoder.__init__ = patched


def hydra_train(run_dir: str, sections: dict, *, common: dict = COMMON, log: str | None = None) -> str:
    """One fairseq-hydra-train run from a config file written as fairseq's example yaml files are (its
    output into `log` when given)."""
    import yaml

    config = {group: dict(values) for group, values in common.items()}
    for group, values in sections.items():
        config.setdefault(group, {}).update(values)
    config["checkpoint"]["save_dir"] = os.path.join(run_dir, "ckpt")
    config["hydra"] = {"run": {"dir": os.path.join(run_dir, "hydra")}}
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "run.yaml"), "w") as f:
        f.write("# @package _group_\n" + yaml.safe_dump(config, sort_keys=False))
    if sections["model"]["_name"] == "hubert_ctc":  # fairseq-hydra-train's main, after fix_hubert_ctc
        cmd = [sys.executable, os.path.abspath(__file__), "--fairseq-hydra-train"]
    else:
        cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")]
    args = [*cmd, "--config-dir", run_dir, "--config-name", "run"]
    if log is None:
        subprocess.run(args, check=True, cwd=run_dir)
    else:
        with open(log, "w") as f:
            subprocess.run(args, check=True, cwd=run_dir, stdout=f, stderr=subprocess.STDOUT)
    return os.path.join(run_dir, "ckpt", "checkpoint_last.pt")


def fairseq_runs(corpus: str, work: str) -> dict[str, str]:
    hubert_task = dict(_name="hubert_pretraining", data=corpus, label_dir=corpus, label_rate=50, sample_rate=16000,
                       pad_audio=False, random_crop=True)
    hubert_criterion = dict(_name="hubert", pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10])
    hubert = dict(_name="hubert", label_rate=50, final_dim=16, mask_prob=0.8, feature_grad_mult=0.1,
                  encoder_layerdrop=0.05, dropout_input=0.1, dropout_features=0.1, untie_final_proj=True, **TINY)
    ctc_criterion = dict(_name="ctc", zero_infinity=True)
    ctc = dict(apply_mask=True, mask_prob=0.5, mask_length=4, freeze_finetune_updates=0)
    paths = {}
    paths["hubert_base"] = hydra_train(f"{work}/hubert_base", {
        "task": {**hubert_task, "labels": ["km"], "normalize": False}, "criterion": hubert_criterion,
        "model": {**hubert, "extractor_mode": "default"}})
    paths["hubert_large"] = hydra_train(f"{work}/hubert_large", {
        "task": {**hubert_task, "labels": ["km", "km2"], "normalize": True}, "criterion": hubert_criterion,
        "model": {**hubert, "extractor_mode": "layer_norm", "layer_norm_first": True}})
    paths["hubert_ctc"] = hydra_train(f"{work}/hubert_ctc", {
        "task": dict(_name="hubert_pretraining", data=corpus, label_dir=corpus, fine_tuning=True, labels=["ltr"],
                     single_target=True, normalize=False),
        "criterion": ctc_criterion, "optimization": dict(sentence_avg=True),
        "model": dict(_name="hubert_ctc", w2v_path=paths["hubert_base"], **ctc)})
    paths["wav2vec2"] = hydra_train(f"{work}/wav2vec2", {
        "task": dict(_name="audio_pretraining", data=corpus, normalize=False, max_sample_size=250000,
                     min_sample_size=8000),
        "criterion": dict(_name="wav2vec", infonce=True, log_keys=["prob_perplexity", "code_perplexity", "temp"],
                          loss_weights=[0.1, 10]),
        "model": dict(_name="wav2vec2", quantize_targets=True, final_dim=16, latent_vars=8, latent_groups=2,
                      num_negatives=10, mask_prob=0.65, mask_length=4, feature_grad_mult=0.1,
                      encoder_layerdrop=0.05, **TINY)})
    paths["wav2vec2_ctc"] = hydra_train(f"{work}/wav2vec2_ctc", {
        "task": dict(_name="audio_finetuning", data=corpus, labels="ltr", normalize=False),
        "criterion": ctc_criterion, "optimization": dict(sentence_avg=True),
        "model": dict(_name="wav2vec_ctc", w2v_path=paths["wav2vec2"], **ctc)})
    return paths


def resave_with_dictconfig(path: str, out: str) -> None:
    """fairseq's own loader and saver: the released checkpoints (and files re-saved after
    `load_checkpoint_to_cpu`, as release scripts strip the optimizer state) keep `cfg` as an omegaconf
    DictConfig, which fairseq 0.12's trainer no longer writes."""
    from fairseq import checkpoint_utils
    from omegaconf import DictConfig

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    assert isinstance(state["cfg"], DictConfig), type(state["cfg"])
    del state["last_optimizer_state"]
    checkpoint_utils.torch_persistent_save(state, out)


# ----------------------------------------------------------------------------- training curves (--curves)
# The demo's tiny architecture (configs/demo.py) as fairseq names it: 4 x 128, FFN 256, 4 heads, 7 convs of 64
# channels with the base strides, positional conv 32 wide in 8 groups, group-norm extractor, post-LN, no dropout
DEMO_ARCH = dict(extractor_mode="default", conv_feature_layers="[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2",
                 encoder_layers=4, encoder_embed_dim=128, encoder_ffn_embed_dim=256, encoder_attention_heads=4,
                 conv_pos=32, conv_pos_groups=8, layer_norm_first=False, conv_bias=False, activation_fn="gelu",
                 dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
                 dropout_input=0.0, dropout_features=0.0, feature_grad_mult=0.1, mask_length=10)
CURVE_UPDATES = 600
CURVE_COMMON = {
    "common": dict(cpu=True, fp16=False, log_format="json", log_interval=25),
    "distributed_training": dict(distributed_world_size=1),
    # 8 crops of 2 s a batch (every demo utterance is longer than 2 s, so no padding on either side)
    "dataset": dict(num_workers=0, batch_size=8, max_tokens=None, validate_interval=10000,
                    validate_interval_updates=100, disable_validation=False),
    "checkpoint": dict(no_epoch_checkpoints=True, no_save=True),
    "optimization": dict(max_update=CURVE_UPDATES, lr=[0.002], clip_norm=10.0),
    "optimizer": dict(_name="adam", adam_betas="(0.9,0.98)", adam_eps=1e-06, weight_decay=0.01),
    "lr_scheduler": dict(_name="polynomial_decay", warmup_updates=100),
}
LN2 = float(np.log(2.0))
# what differs between fairseq's curve runs and configs/curves_*.py, and why it was left so
NOT_MIRRORED = {
    "both": [
        "batches: fairseq's epoch ends with the remainder, 193 = 24 x 8 + 1 utterances, so one update in 25 sees a "
        "single utterance; hubert-jax draws full batches of 8 from a shuffled stream that repeats (static shapes)",
        "first update: fairseq's polynomial_decay starts at lr = peak / warmup, optax's linear warmup at 0; every "
        "later update has the same rate",
        "fairseq 0.12 pads the frames to a multiple of 2 inside the encoder (99 -> 100, the extra frame masked in "
        "attention); hubert-jax keeps 99",
        "validation: fairseq scores all 27 valid utterances with new random crops and masks at every evaluation "
        "(batch_size 8: 8 + 8 + 8 + 3); hubert-jax scores the 24 of three full batches, the same crops and masks "
        "each time",
        "fairseq's span masks come from np.random.default_rng(None) (fresh entropy) whatever common.seed says, so "
        "two fairseq runs of one seed differ; hubert-jax's are keyed by the seed and step",
    ],
    "hubert": [
        "fairseq scores each frame against 54 label embeddings (the 50 clusters and dict.km.txt's 4 specials, "
        "never a target); hubert-jax from scratch against the 50 clusters (a converted fairseq checkpoint keeps "
        "the 54 rows, label_offset 4)",
    ],
    "wav2vec2": [
        "the wav2vec 2.0 demo samples its English and Korean halves as two languages (XLSR, alpha 0.5); fairseq's "
        "audio_pretraining task reads one manifest, so both sides read the whole train split",
        "the codebook is 2 x 8, not the demo's former 2 x 64 (or the recipes' 2 x 320): with 64 a group fairseq "
        "itself stays at chance for all 600 updates on this corpus (valid accuracy 0.028 against 1/101)",
    ],
}


def curve_sections(objective: str, manifests: str, labels: str) -> dict:
    """fairseq's settings for one objective, mirroring configs/curves_{objective}.py field by field."""
    if objective == "hubert":  # configs/demo.py: MFCC k-means labels (50 clusters, 100 Hz)
        return {
            "task": dict(_name="hubert_pretraining", data=manifests, label_dir=labels, labels=["km"], label_rate=100,
                         sample_rate=16000, max_sample_size=32000, min_sample_size=16000, pad_audio=False,
                         random_crop=True, normalize=False),
            "criterion": dict(_name="hubert", pred_masked_weight=1.0, pred_nomask_weight=0.5, loss_weights=[10.0]),
            "model": dict(_name="hubert", label_rate=100, final_dim=64, mask_prob=0.8, logit_temp=0.1,
                          untie_final_proj=False, skip_masked=False, skip_nomask=False, **DEMO_ARCH)}
    if objective == "wav2vec2":  # hubert_jax/demos/wav2vec2.py's settings, on the whole train split. A codebook
        # of 2 x 8: with 2 x 64 (and so with the recipes' 2 x 320) fairseq stays at chance for all 600 updates
        return {
            "task": dict(_name="audio_pretraining", data=manifests, max_sample_size=32000, min_sample_size=16000,
                         normalize=False, enable_padding=False),
            "criterion": dict(_name="wav2vec", infonce=True, loss_weights=[0.1, 10.0],
                              log_keys=["prob_perplexity", "code_perplexity", "temp"]),
            "model": dict(_name="wav2vec2", quantize_targets=True, final_dim=64, latent_dim=64, latent_vars=8,
                          latent_groups=2, latent_temp=[2.0, 0.5, 0.998], num_negatives=100, cross_sample_negatives=0,
                          codebook_negatives=0, mask_prob=0.65, logit_temp=0.1, **DEMO_ARCH)}
    raise ValueError(objective)


def curve_manifests(data: str, out: str) -> str:
    """The corpus' train/valid manifests with an absolute root (fairseq joins it with each row)."""
    os.makedirs(out, exist_ok=True)
    for split in ("train", "valid"):
        rows = open(os.path.join(data, f"{split}.tsv"), encoding="utf-8").read().splitlines()[1:]
        with open(os.path.join(out, f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("\n".join([os.path.abspath(data)] + rows) + "\n")
    return out


def parse_fairseq_log(path: str) -> dict:
    """fairseq's json log lines ([train_inner] every log_interval updates, [valid] every
    validate_interval_updates) as lists of floats, in fairseq's own names and units (losses in bits)."""
    out = {"train": [], "valid": []}
    for line in open(path, encoding="utf-8", errors="replace"):
        for tag, key in (("[train_inner]", "train"), ("[valid]", "valid")):
            if tag in line and "{" in line:
                raw = json.loads(line[line.index("{"):])
                out[key].append({k: float(v) for k, v in raw.items() if _is_number(v)})
    return out


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def our_names(objective: str, row: dict, prefix: str = "") -> dict:
    """One fairseq log row in hubert-jax's metric names and units (nats; the loss / sample size)."""
    get = lambda k: row.get(prefix + k)  # noqa: E731
    out = {"update": int(row["num_updates"] if "num_updates" in row else row[prefix + "num_updates"])}
    if get("loss") is not None:
        out["loss"] = get("loss") * LN2
    if objective == "hubert":
        names = {"accuracy_m": "correct_m_0", "accuracy_u": "correct_u_0"}
        if get("loss_features_pen") is not None:
            out["features_pen"] = get("loss_features_pen") * LN2 / 10.0
    else:
        names = {"accuracy": "accuracy", "prob_perplexity": "prob_perplexity",
                 "code_perplexity": "code_perplexity", "temperature": "temp"}
        # the criterion's parts: loss_0 the contrastive term, loss_1 0.1 x (V - prob perplexity) / V, loss_2
        # 10 x the conv features' mean square
        for ours, theirs, weight in (("contrastive", "loss_0", 1.0), ("diversity", "loss_1", 0.1),
                                     ("features_pen", "loss_2", 10.0)):
            if get(theirs) is not None:
                out[ours] = get(theirs) * LN2 / weight
    out.update({ours: get(theirs) for ours, theirs in names.items() if get(theirs) is not None})
    for ours, theirs in (("lr", "lr"), ("grad_norm", "gnorm"), ("updates_per_s", "ups")):
        if get(theirs) is not None:
            out[ours] = get(theirs)
    return out


def record_curves(data: str, labels: str, out_dir: str, work: str, seeds: list[int], objectives: list[str]) -> None:
    """tests/fixtures/peer/curves/{objective}.json: fairseq's logged figures every 25 updates and on the
    valid split every 100, for each seed, with the settings and the wall time of each run."""
    import time

    import fairseq
    import torch

    manifests = curve_manifests(data, os.path.join(work, "manifests"))
    os.makedirs(out_dir, exist_ok=True)
    for objective in objectives:
        sections = curve_sections(objective, manifests, labels)
        runs = {}
        for seed in seeds:
            run_dir = os.path.join(work, f"{objective}_seed{seed}")
            common = {**CURVE_COMMON, "common": {**CURVE_COMMON["common"], "seed": seed}}
            log = os.path.join(work, f"{objective}_seed{seed}.log")
            start = time.perf_counter()
            hydra_train(run_dir, sections, common=common, log=log)
            seconds = time.perf_counter() - start
            logged = parse_fairseq_log(log)
            runs[str(seed)] = {
                "train": [our_names(objective, r) for r in logged["train"]],
                "valid": [our_names(objective, r, "valid_") for r in logged["valid"]],
                "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads()}
            print(f"{objective} seed {seed}: {seconds:.0f} s; valid {runs[str(seed)]['valid'][-1]}", flush=True)
        settings = {group: dict(values) for group, values in CURVE_COMMON.items()}
        for group, values in sections.items():
            settings.setdefault(group, {}).update(values)
        settings["task"]["data"] = "data/demo (its manifests, with an absolute root)"
        if "label_dir" in settings["task"]:
            settings["task"]["label_dir"] = "tests/fixtures/peer/curves/labels"
        with open(os.path.join(out_dir, f"{objective}.json"), "w") as f:
            json.dump({"objective": objective, "tool": "fairseq-hydra-train",
                       "versions": {"fairseq": fairseq.__version__, "torch": torch.__version__},
                       "config": f"configs/curves_{objective}.py", "updates": CURVE_UPDATES, "settings": settings,
                       "not_mirrored": NOT_MIRRORED["both"] + NOT_MIRRORED[objective],
                       "units": "hubert-jax's metric names; losses in nats divided by fairseq's sample size",
                       "seeds": runs}, f, indent=1, sort_keys=True)
            f.write("\n")


def save_initial_weights(data: str, labels: str, work: str, seed: int, objective: str, out: str) -> None:
    """fairseq's own initial weights for `seed`: the curve run's settings for one update at learning rate 0
    (Adam moves nothing, weight decay is scaled by the rate), so checkpoint_last.pt holds update 0's weights."""
    manifests = curve_manifests(data, os.path.join(work, "manifests"))
    common = {**CURVE_COMMON, "common": {**CURVE_COMMON["common"], "seed": seed},
              "checkpoint": dict(no_epoch_checkpoints=True),
              "optimization": {**CURVE_COMMON["optimization"], "max_update": 1, "lr": [0.0]},
              "dataset": {**CURVE_COMMON["dataset"], "disable_validation": True}}
    path = hydra_train(os.path.join(work, f"{objective}_init{seed}"), curve_sections(objective, manifests, labels),
                       common=common, log=os.path.join(work, f"{objective}_init{seed}.log"))
    shutil.copyfile(path, out)


# ----------------------------------------------------------------------------- recording outputs
def layer_hooks(layers):
    """Captures the input of layer 0 and each layer's output (fairseq layers run T x B x C)."""
    seen = []

    def pre(_, args, kwargs):
        x = args[0] if args else kwargs["x"]
        seen.append(x.transpose(0, 1).detach().numpy().copy())

    def post(_, __, out):
        seen.append(out[0].transpose(0, 1).detach().numpy().copy())

    handles = [layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [layer.register_forward_hook(post) for layer in layers]
    return seen, handles


def record_layers(run, layers, audio) -> dict:
    """run(x (1, T) tensor) -> final output (1, F, C). Hidden states of every layer and the final output."""
    import torch

    out = {}
    for i, x in enumerate(audio):
        seen, handles = layer_hooks(layers)
        with torch.no_grad():
            last = run(torch.from_numpy(x)[None])
        for h in handles:
            h.remove()
        # fairseq 0.12 pads the frames to a multiple of 2 inside the encoder (masked as padding): keep the real ones
        for layer, value in enumerate(seen):
            out[f"hidden_{i}_{layer}"] = value[0, : last.shape[1]]
        out[f"last_{i}"] = last[0].numpy()
    return out


def padded(audio):
    import torch

    n = max(len(a) for a in audio)
    x = torch.zeros(len(audio), n)
    pad = torch.ones(len(audio), n, dtype=torch.bool)
    for i, a in enumerate(audio):
        x[i, : len(a)] = torch.from_numpy(a)
        pad[i, : len(a)] = False
    return x, pad


def load_fairseq(path):
    from fairseq import checkpoint_utils

    fix_hubert_ctc()
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
    return models[0].eval(), cfg, task


def record_fairseq_hubert(path, audio, mask=None) -> dict:
    """Hidden states, and the hubert criterion on audio_0 with random labels and the span mask fairseq draws
    (or `mask`, given to fairseq's own apply_mask in place of its draw: fairseq's compute_mask_indices takes
    fresh entropy unless it is given a seed, so a re-recording passes the mask it recorded before)."""
    import torch
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.models.hubert import hubert

    model, cfg, task = load_fairseq(path)
    out = record_layers(lambda x: model.extract_features(x, padding_mask=None, mask=False)[0],
                        model.encoder.layers, audio)
    x, pad = padded(audio)
    with torch.no_grad():
        feats, padding = model.extract_features(x, padding_mask=pad, mask=False)
    out["padded_last"], out["padded_mask"] = feats.numpy(), (~padding).numpy()

    rng = np.random.default_rng(7)
    frames = len(audio[0]) // 320
    labels = [torch.from_numpy(rng.integers(0, len(d) - d.nspecial, (1, frames))) for d in task.dictionaries]
    targets = [lab + d.nspecial for lab, d in zip(labels, task.dictionaries)]  # dict.km.txt lists 0..K-1
    draw = hubert.compute_mask_indices

    def compute_mask_indices(*args, **kw):
        nonlocal mask
        if mask is None:
            mask = draw(*args, **kw)
        return mask.copy()

    source = torch.from_numpy(audio[0])[None]
    sample = {"net_input": {"source": source, "padding_mask": torch.zeros(source.shape, dtype=torch.bool)},
              "target_list": targets, "id": torch.tensor([0])}
    hubert.compute_mask_indices = compute_mask_indices
    try:
        for suffix, nomask in (("", 0.0), ("_nomask", 0.5)):  # masked frames only; unmasked ones at weight 0.5
            criterion = HubertCriterion(task, pred_masked_weight=1.0, pred_nomask_weight=nomask,
                                        loss_weights=[10.0])
            with torch.no_grad():
                loss, sample_size, log = criterion(model, sample, reduce=True)
            out[f"loss{suffix}"] = np.float64(loss.item() / sample_size)
            out[f"sample_size{suffix}"] = np.int64(sample_size)
    finally:
        hubert.compute_mask_indices = draw
    out["loss_mask"] = mask
    for k, lab in enumerate(labels):
        out[f"loss_labels_{k}"] = lab.numpy()
    return out


def record_fairseq_ctc(path, audio) -> dict:
    import torch

    model, cfg, task = load_fairseq(path)
    out = {}
    for i, a in enumerate(audio):
        with torch.no_grad():
            net = model(source=torch.from_numpy(a)[None], padding_mask=None)
        out[f"logits_{i}"] = net["encoder_out"].transpose(0, 1)[0].numpy()
    w2v = model.w2v_encoder.w2v_model
    out.update(record_layers(lambda x: w2v.extract_features(x, padding_mask=None, mask=False)[0]
                             if type(w2v).__name__ == "HubertModel" else
                             w2v.extract_features(x, padding_mask=None, mask=False)["x"], w2v.encoder.layers, audio))
    return out


def record_fairseq_wav2vec2(path, audio) -> dict:
    import torch

    model, cfg, task = load_fairseq(path)
    out = record_layers(lambda x: model.extract_features(x, padding_mask=None, mask=False)["x"],
                        model.encoder.layers, audio)
    x, pad = padded(audio)
    with torch.no_grad():
        res = model.extract_features(x, padding_mask=pad, mask=False)
    out["padded_last"], out["padded_mask"] = res["x"].numpy(), (~res["padding_mask"]).numpy()
    for i, a in enumerate(audio):  # the quantizer and both projections, unmasked (transformers' names)
        with torch.no_grad():
            feats = model.feature_extractor(torch.from_numpy(a)[None]).transpose(1, 2)
            feats = model.layer_norm(feats)
            unmasked = feats.clone()
            feats = model.post_extract_proj(feats)
            enc, _ = model.encoder(feats, padding_mask=None)
            q = model.quantizer(unmasked, produce_targets=False)
            out[f"projected_states_{i}"] = model.final_proj(enc)[0].numpy()
            out[f"projected_quantized_{i}"] = model.project_q(q["x"])[0].numpy()
    return out


def record_fairseq_wav2vec2_criterion(path, audio) -> dict:
    """fairseq's wav2vec criterion (infonce, loss_weights [0.1, 10]) on both clips as one padded batch, in
    eval mode (no dropout, hard codewords), with the masks and distractors fairseq drew (recorded through
    apply_mask and sample_negatives). The distractors become indices into the batch's (B * frames)
    quantized frames, as `Wav2Vec2ForPreTraining` takes them."""
    import torch
    from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion

    model, cfg, task = load_fairseq(path)
    used = {}
    apply_mask, sample_negatives = model.apply_mask, model.sample_negatives

    def record_mask(*args, **kw):
        x, mask_indices = apply_mask(*args, **kw)
        used["mask"] = mask_indices.numpy().copy()
        return x, mask_indices

    def record_negatives(y, num, padding_count=None):
        negs, idxs = sample_negatives(y, num, padding_count=padding_count)
        used["negatives"] = idxs.numpy().copy()  # (B, num * N), into the (B x num) masked frames
        used["high"] = y.shape[1] - (padding_count or 0)
        return negs, idxs

    model.apply_mask, model.sample_negatives = record_mask, record_negatives
    criterion = Wav2vecCriterion(task, infonce=True, loss_weights=[0.1, 10.0],
                                 log_keys=["prob_perplexity", "code_perplexity", "temp"])
    # the longer clip alone: fairseq's own batches crop to equal lengths (no padding), as ours do
    source = torch.from_numpy(np.stack([audio[0][:8000], audio[0][8000:16000]]))
    sample = {"net_input": {"source": source, "padding_mask": None}, "id": torch.tensor([0, 1])}
    np.random.seed(5)
    torch.manual_seed(5)
    with torch.no_grad():
        loss, sample_size, log = criterion(model, sample, reduce=True)
    mask = used["mask"]  # (B, T) bool, the same count per row
    frames = [np.flatnonzero(row) for row in mask]
    n, negatives = mask.shape[1], model.n_negatives
    idx = used["negatives"].reshape(len(mask), -1, negatives)  # (B, masked, N), row-local masked positions
    flat = np.zeros((*mask.shape, negatives), np.int64)
    for b in range(len(mask)):
        local = idx[b] - b * used["high"]
        flat[b, frames[b]] = frames[b][local] + b * n
    return {"source": source.numpy(), "mask": mask, "negatives": flat, "loss": np.float64(loss.item()),
            "sample_size": np.int64(sample_size), "correct": np.int64(log["correct"]),
            "count": np.int64(log["count"]), "prob_perplexity": np.float64(log["prob_perplexity"]),
            "code_perplexity": np.float64(log["code_perplexity"]), "temp": np.float64(log["temp"]),
            "loss_0": np.float64(log["loss_0"]), "loss_1": np.float64(log["loss_1"]),
            "loss_2": np.float64(log["loss_2"])}


def record_unilm(unilm_dir, out_dir, audio, *, large: bool) -> dict:
    import torch

    sys.path.insert(0, unilm_dir)
    from WavLM import WavLM, WavLMConfig

    torch.manual_seed(11 if large else 10)
    cfg = {**TINY, "extractor_mode": "layer_norm" if large else "default", "layer_norm_first": large,
           "normalize": large, "conv_bias": large, "relative_position_embedding": True, "num_buckets": 32,
           "max_distance": 64, "gru_rel_pos": True, "encoder_layerdrop": 0.05 if not large else 0.0}
    config = WavLMConfig(cfg)
    model = WavLM(config)
    with torch.no_grad():  # fresh modules start at tidy values (zero bias, unit norms): perturb every tensor
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    torch.save({"cfg": config.__dict__, "model": model.state_dict()}, os.path.join(out_dir, "wavlm.pt"))
    out = record_layers(lambda x: model.extract_features(x, padding_mask=None)[0], model.encoder.layers, audio)
    x, pad = padded(audio)
    with torch.no_grad():
        feats, mask = model.extract_features(x, padding_mask=pad)
    out["padded_last"], out["padded_mask"] = feats.numpy(), (~mask).numpy()
    return out


def record_s3prl(out_dir, audio) -> dict:
    import torch
    from s3prl.upstream.distiller.expert import UpstreamExpert
    from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel

    torch.manual_seed(12)
    config = {"distiller": {"extractor_mode": "default", "extractor_conv_feature_layers": CONV,
                            "extractor_dropout": 0.0, "feature_grad_mult": 0.1, "conv_pos": 8, "conv_pos_groups": 4,
                            "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
                            "encoder_attention_heads": 4, "activation_fn": "gelu", "layer_norm_first": False,
                            "attention_type": "original", "dropout": 0.1, "attention_dropout": 0.1,
                            "activation_dropout": 0.1, "encoder_layerdrop": 0.0, "final_dim": 32,
                            "out_layer_type": "expand-last", "n_tasks": 2, "task_emb_type": "expand-last",
                            "loss_type": "l1", "feat_pen_loss": 0.0, "cosine_loss": 1.0, "pred_layer_id": [1, 2],
                            "init_teacher_conv_layers": True, "init_teacher_encoder_layers": True},
              "teacher": {"model": "hubert_base", "n_layers": 12}, "task": {"sequence_length": 250000},
              "audio": {"target_level": None}}
    model = DistillerModel(DistillerConfig(config["distiller"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    wave = torch.from_numpy(np.concatenate(audio))[None]
    _, _, pred, _, _ = model(wave, torch.ones_like(wave), get_hidden=True)
    pred.abs().mean().backward()  # one update on a stand-in target: the weights and optimizer state are real
    optimizer.step()
    args = argparse.Namespace(upstream="distiller", config="pretrain/distiller/config_runner.yaml",
                              expdir="result/pretrain/distilhubert", auto_resume=False, init_ckpt=None, seed=1337,
                              device="cpu", multi_gpu=False, past_exp=None, upstream_config=None)
    path = os.path.join(out_dir, "states-1.ckpt")
    torch.save({"Optimizer": optimizer.state_dict(), "Step": 1, "Args": args, "Config": config,
                "Distiller": model.float().state_dict()}, path)
    expert = UpstreamExpert(path).eval()
    layers = expert.model.model.encoder.layers
    out = record_layers(lambda x: expert([x[0]])["hidden_states"][len(layers)], layers, audio)
    for i, a in enumerate(audio):  # s3prl's own hidden_states[1..L] are the layer outputs recorded above
        with torch.no_grad():
            states = expert([torch.from_numpy(a)])["hidden_states"]
        for layer in range(1, len(layers) + 1):
            np.testing.assert_allclose(states[layer][0].numpy(), out[f"hidden_{i}_{layer}"], atol=1e-6)
    return out


# ----------------------------------------------------------------------------- main
def write_criterion(out_dir) -> None:
    """wav2vec2/criterion.npz when missing: fairseq's wav2vec criterion on the fixture checkpoint (see below); the
    hubert criterion's entries of hubert_base / hubert_large expected.npz, recorded again from the same
    checkpoints (every array already there must come out equal)."""
    clips = np.load(os.path.join(out_dir, "audio.npz"))
    audio = [clips["audio_0"], clips["audio_1"]]
    criterion = os.path.join(out_dir, "wav2vec2", "criterion.npz")
    if not os.path.isfile(criterion):  # its masks and distractors are fresh draws: kept once written
        arrays = record_fairseq_wav2vec2_criterion(os.path.join(out_dir, "wav2vec2", "checkpoint_last.pt"), audio)
        np.savez_compressed(criterion, **arrays)
    for name in ("hubert_base", "hubert_large"):
        path = os.path.join(out_dir, name, "expected.npz")
        old = dict(np.load(path)) if os.path.isfile(path) else {}
        new = record_fairseq_hubert(os.path.join(out_dir, name, "checkpoint_last.pt"), audio, old.get("loss_mask"))
        for key, value in old.items():
            np.testing.assert_array_equal(new[key], value, err_msg=f"{name}: {key} changed")
        np.savez_compressed(path, **new)


# ----------------------------------------------------------------------------- exports to fairseq
CONTINUED = ("hubert_base", "hubert_encoder", "wav2vec2")  # pretraining exports fairseq-hydra-train continues


def continue_from_export(path: str, corpus: str, run_dir: str) -> dict:
    """fairseq-hydra-train restored from an exported pretraining file, with the file's own model settings and
    task (its data pointed at the tiny corpus): 3 updates. Returns what the run's log says."""
    import torch

    cfg = torch.load(path, map_location="cpu", weights_only=False)["cfg"]
    task = {**cfg["task"], "data": corpus}
    if task["_name"] == "hubert_pretraining":
        task.update(label_dir=corpus, pad_audio=False, random_crop=True)
        criterion = dict(_name="hubert", pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10])
    else:
        task.update(max_sample_size=250000, min_sample_size=8000)
        criterion = dict(_name="wav2vec", infonce=True, log_keys=["prob_perplexity", "code_perplexity", "temp"],
                         loss_weights=[0.1, 10])
    log = os.path.join(run_dir, "train.log")
    hydra_train(run_dir, {"task": task, "criterion": criterion, "model": dict(cfg["model"]),
                          "optimization": dict(max_update=3), "common": dict(log_format="json"),
                          "checkpoint": dict(restore_file=path, reset_optimizer=True, reset_lr_scheduler=True,
                                             reset_meters=True, reset_dataloader=True)}, log=log)
    text = open(log, encoding="utf-8", errors="replace").read()
    restored = [line for line in text.splitlines() if "Loaded checkpoint" in line or "loaded checkpoint" in line]
    if not restored or path not in restored[0]:
        raise SystemExit(f"{log}: fairseq did not say it restored {path}")
    losses = [row["loss"] for row in parse_fairseq_log(log)["train"]]
    return {"restored": os.path.basename(path), "updates": len(losses), "losses": losses}


def record_exports(ours_python: str, out: str, work: str) -> None:
    """Our exports (tests/test_export_fairseq.py run as a script with `ours_python`), loaded by fairseq: its
    outputs on the fixed audio per export, and pretraining continued from three of them."""
    import fairseq
    import torch

    exports = os.path.join(work, "exports")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([ours_python, os.path.join(root, "tests", "test_export_fairseq.py"), exports], check=True)
    with open(os.path.join(exports, "digests.json")) as f:
        digests = json.load(f)
    audio = fixed_audio()
    folder = os.path.join(out, "export")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    meta = {"tool": "fairseq checkpoint_utils.load_model_ensemble_and_task, fairseq-hydra-train",
            "versions": {"torch": torch.__version__, "fairseq": fairseq.__version__}, "exports": {}, "continued": {}}
    for name, digest in sorted(digests.items()):
        path = os.path.join(exports, f"{name}.pt")
        if name.endswith("_ctc"):
            arrays = record_fairseq_ctc(path, audio)
        elif name.startswith("hubert"):
            arrays = record_fairseq_hubert(path, audio)
        else:
            arrays = record_fairseq_wav2vec2(path, audio)
        np.savez_compressed(os.path.join(folder, f"{name}.npz"), **arrays)
        _, cfg, task = load_fairseq(path)
        meta["exports"][name] = {"digest": digest, "model": cfg.model._name, "task": cfg.task._name}
    corpus = os.path.join(work, "corpus")
    write_corpus(corpus)
    for name in CONTINUED:
        meta["continued"][name] = continue_from_export(os.path.join(exports, f"{name}.pt"), corpus,
                                                       os.path.join(work, f"continue_{name}"))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


def save(out_dir, name, arrays, meta):
    np.savez_compressed(os.path.join(out_dir, name, "expected.npz"), **arrays)
    with open(os.path.join(out_dir, name, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unilm", help="folder with unilm's WavLM.py and modules.py (the checkpoint fixtures)")
    parser.add_argument("--out", default="tests/fixtures/peer")
    parser.add_argument("--work", help="keep the fairseq runs here (default: a temp dir)")
    parser.add_argument("--criterion-only", action="store_true",
                        help="only (re)write the criteria's fixtures (wav2vec2/criterion.npz, the hubert folders' "
                             "loss entries) from the checkpoints already in --out")
    parser.add_argument("--curves", nargs="*", choices=("hubert", "wav2vec2"),
                        help="record fairseq's training curves on the demo corpus (tests/fixtures/peer/curves)")
    parser.add_argument("--labels", default="tests/fixtures/peer/curves/labels",
                        help="--curves: the demo's MFCC k-means labels (train.km, valid.km, dict.km.txt)")
    parser.add_argument("--seeds", default="1,2,3", help="--curves: fairseq seeds")
    parser.add_argument("--initial", metavar="OUT.pt", help="--curves: instead, save fairseq's update-0 weights of "
                                                          "the first seed and objective to OUT.pt")
    parser.add_argument("--exports", metavar="OURS_PYTHON", help="only (re)write tests/fixtures/peer/export: our "
                        "exports to fairseq (made with OURS_PYTHON, the python that has hubert_jax) loaded and "
                        "trained on by fairseq")
    args = parser.parse_args(argv)
    if args.exports:
        if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") != "1":
            parser.error("fairseq's own loader needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 under torch >= 2.6")
        work = args.work or tempfile.mkdtemp(prefix="peer-exports-")
        record_exports(args.exports, args.out, work)
        print(f"wrote {os.path.join(args.out, 'export')}")
        return
    if args.curves is not None:
        objectives = args.curves or ["hubert", "wav2vec2"]
        work = args.work or tempfile.mkdtemp(prefix="peer-curves-")
        data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo")
        seeds = [int(x) for x in args.seeds.split(",")]
        if args.initial:
            save_initial_weights(data, os.path.abspath(args.labels), work, seeds[0], objectives[0], args.initial)
        else:
            record_curves(data, os.path.abspath(args.labels), os.path.join(args.out, "curves"), work, seeds,
                          objectives)
        return
    if not args.unilm and not args.criterion_only:
        parser.error("--unilm is required to write the checkpoint fixtures")
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") != "1":
        parser.error("fairseq's own loader needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 under torch >= 2.6")
    if args.criterion_only:
        write_criterion(args.out)
        return
    import fairseq
    import s3prl
    import torch

    audio = fixed_audio()
    work = args.work or tempfile.mkdtemp(prefix="peer-fixtures-")  # removed at the end unless --work
    corpus = os.path.join(work, "corpus")
    write_corpus(corpus)
    runs = fairseq_runs(corpus, work)
    versions = {"torch": torch.__version__, "fairseq": fairseq.__version__,
                "s3prl": getattr(s3prl, "__version__", "?")}
    shutil.rmtree(args.out, ignore_errors=True)
    for name, path in runs.items():
        os.makedirs(os.path.join(args.out, name))
        shutil.copyfile(path, os.path.join(args.out, name, "checkpoint_last.pt"))
    shutil.copyfile(os.path.join(corpus, "dict.ltr.txt"), os.path.join(args.out, "dict.ltr.txt"))
    resave_with_dictconfig(runs["hubert_large"], os.path.join(args.out, "hubert_large", "checkpoint_dictconfig.pt"))
    fixtures = os.path.join(args.out, "{}", "checkpoint_last.pt")
    for name in ("hubert_base", "hubert_large"):
        save(args.out, name, record_fairseq_hubert(fixtures.format(name), audio),
             {"tool": "fairseq-hydra-train", "versions": versions, "file": "checkpoint_last.pt"})
    for name in ("hubert_ctc", "wav2vec2_ctc"):
        save(args.out, name, record_fairseq_ctc(fixtures.format(name), audio),
             {"tool": "fairseq-hydra-train", "versions": versions, "file": "checkpoint_last.pt",
              "w2v_path": runs[name.replace("_ctc", "").replace("hubert", "hubert_base")]})
    save(args.out, "wav2vec2", record_fairseq_wav2vec2(fixtures.format("wav2vec2"), audio),
         {"tool": "fairseq-hydra-train", "versions": versions, "file": "checkpoint_last.pt"})
    np.savez_compressed(os.path.join(args.out, "audio.npz"), audio_0=audio[0], audio_1=audio[1])
    write_criterion(args.out)
    unilm = {f: hashlib.sha256(open(os.path.join(args.unilm, f), "rb").read()).hexdigest()[:16]
             for f in ("WavLM.py", "modules.py")}
    for name, large in (("wavlm_base", False), ("wavlm_large", True)):
        os.makedirs(os.path.join(args.out, name))
        save(args.out, name, record_unilm(args.unilm, os.path.join(args.out, name), audio, large=large),
             {"tool": "unilm WavLM.py", "versions": versions, "unilm_sha256": unilm, "file": "wavlm.pt"})
    os.makedirs(os.path.join(args.out, "distilhubert"))
    save(args.out, "distilhubert", record_s3prl(os.path.join(args.out, "distilhubert"), audio),
         {"tool": "s3prl DistillerModel + UpstreamExpert", "versions": versions, "file": "states-1.ckpt"})
    np.savez_compressed(os.path.join(args.out, "audio.npz"), audio_0=audio[0], audio_1=audio[1])
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fairseq-hydra-train"]:
        from fairseq_cli.hydra_train import cli_main

        fix_hubert_ctc()
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        cli_main()
    else:
        main()
