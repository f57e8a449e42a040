"""The pretraining configuration: every field a recipe file in `configs/` may set, with fairseq's HuBERT base
values as defaults. Recipe files start from `pretraining_defaults()` and change what differs;
`python train.py --config FILE --config.a.b=v` overrides any field (ml_collections: unknown keys and
type mismatches are errors that name the key).
"""

from __future__ import annotations

import copy
import os
import re

import ml_collections


def load_config(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, by its path (what train.py's --config reads). A config built on another
    loads it this way, `load_config(os.path.join(os.path.dirname(__file__), "base.py"))`: nothing goes on
    sys.path, and a copied config only needs that path edited."""
    import importlib.util

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file")
    name = "_hubert_jax_config_" + re.sub(r"\W", "_", path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file defines get_config() (configs/*.py)")
    return module.get_config()


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a training workdir's run follows (its config.json; sequences as tuples, as configs write them)."""
    import json

    from hubert_jax import storage

    path = storage.join(workdir, "config.json")
    if not storage.isfile(path):
        raise FileNotFoundError(f"{workdir}: no config.json there (expected a training run's --workdir)")
    with storage.open(path, encoding="utf-8") as f:
        data = json.load(f)
    if "task" not in data or "train" not in data:
        raise ValueError(f"{path} is no training run's config (it has no task / train sections)")

    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    return ml_collections.ConfigDict(tuples(data))


def pretraining_defaults() -> ml_collections.ConfigDict:
    """Every config field with its default: the common sections, and each registered task's own (ml_collections
    ConfigDict; configs/*.py start from it)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # what is trained (hubert_jax/training/tasks/): "hubert": masked prediction; "wavlm": WavLM's denoising
    # masked prediction (see c.mix); "distill": DistilHuBERT (see c.distill); "ctc" / "classify" (one label per
    # utterance) / "frames" (frame labels): fine-tuning (see c.finetune)
    c.task = "hubert"

    c.model = ml_collections.ConfigDict()
    c.model.preset = "hubert-base"
    # architecture fields changed from the preset (HubertConfig names); fairseq base's dropouts
    c.model.overrides = ml_collections.ConfigDict(dict(
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1, layerdrop=0.05,
        mask_time_prob=0.05))
    c.model.head = ml_collections.ConfigDict(dict(num_classes=(100,), final_dim=256, logit_temp=0.1,
                                                  untie_final_proj=False, label_rate=100.0, label_offset=0))
    c.model.dtype = "float32"  # compute dtype: bfloat16 on accelerators
    c.model.param_dtype = "float32"
    c.model.scan_layers = False
    c.model.remat_policy = "none"  # encoder layers: none | full | dots | dots_no_batch
    c.model.remat_conv = False  # recompute the conv feature encoder in the backward pass (long crops, small HBM)
    c.model.attention_impl = "auto"
    c.model.init_from = ""  # a hubert-jax directory (e.g. a converted fairseq HuBERT with its heads)

    c.masking = ml_collections.ConfigDict(dict(mask_prob=0.8, mask_length=10, min_masks=2))
    c.loss = ml_collections.ConfigDict(dict(masked=1.0, unmasked=0.0, features_pen=10.0, feature_grad_mult=0.1))

    c.data = ml_collections.ConfigDict()
    # labels: pretraining frame labels (.km); targets: fine-tuning transcripts (.wrd) or utterance labels
    c.data.train = ml_collections.ConfigDict(dict(manifest="", labels=("",), targets=""))
    c.data.valid = ml_collections.ConfigDict(dict(manifest="", labels=("",), targets=""))
    c.data.crop_samples = 250000
    c.data.min_samples = 32000
    c.data.normalize = False
    # global batch in utterances. fairseq base: 32 GPUs x 1.4M samples (87.5 s) of crops of at most
    # 250k samples (15.6 s), i.e. 5 full crops per GPU = 160
    c.data.batch_size = 160
    # length buckets (hubert_jax/data/buckets.py): a few crop lengths in samples and the samples of one
    # global batch; each batch is one bucket's, its rows what max_tokens holds (batch_size is then unused).
    # Pretraining crops each utterance to the longest bucket it fills (no padding); fine-tuning pads it to
    # the shortest that holds it (the longest utterance is always the last bucket). Empty: fixed crops.
    c.data.buckets = ()
    c.data.max_tokens = 0
    c.data.num_threads = 2
    # multilingual pretraining (XLSR, hubert_jax/data/languages.py): one manifest per language instead of
    # data.train.manifest, drawn with probability proportional to (hours_l / hours)^alpha
    c.data.languages = ml_collections.ConfigDict(dict(manifests=(), alpha=0.5))
    # fine-tuning: every utterance is padded to this many samples (0: the longest of the splits); CTC
    # leaves longer ones out, classification crops them
    c.data.max_samples = 0

    c.optim = ml_collections.ConfigDict(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=10.0))
    c.optim.schedule = ml_collections.ConfigDict(dict(
        # total_steps 0: the schedule is as long as the run, train.steps
        kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=0, end_ratio=0.0, power=1.0,
        warmup_ratio=0.1, hold_ratio=0.4, init_ratio=0.01))

    c.train = ml_collections.ConfigDict(dict(
        steps=400000, log_every=100, eval_every=5000, eval_batches=20, checkpoint_every=5000, keep_checkpoints=3,
        max_nan_in_a_row=10, tensorboard=True,
        # the workdir lock (hubert_jax/training/workdir_lock.py): heartbeat period, and the heartbeat age after
        # which another machine's lock counts as stale (a lock of this machine's is stale once its process is gone)
        lock_heartbeat_s=30.0, lock_stale_after_s=300.0,
        # resume a workdir although data.batch_size/max_tokens/buckets/crop_samples/min_samples changed (refused
        # otherwise: the data iterator's saved position then reads other batches than the run it continues)
        allow_new_batch_plan=False))
    # device mesh (hubert_jax/sharding.py): one of data/fsdp/tensor may be -1 (the rest of the devices);
    # dcn_data > 1 spreads the data axis over that many TPU slices (multi-slice)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))
    # each task's own sections, with the defaults it declares (hubert_jax/training/tasks/: mix for "wavlm",
    # wav2vec2, distill, finetune and text for the fine-tuning tasks)
    from hubert_jax.training.tasks import task_sections

    for section, (defaults, _) in task_sections().items():
        c[section] = ml_collections.ConfigDict(copy.deepcopy(defaults))
    return c


if __name__ == "__main__":  # python -m hubert_jax.training.config [FILE]: every field and its value
    import sys

    print(load_config(sys.argv[1]) if len(sys.argv) > 1 else pretraining_defaults())
