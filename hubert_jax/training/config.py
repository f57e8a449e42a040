"""The pretraining configuration: every field a recipe file in `configs/` may set, with fairseq's HuBERT base
values as defaults. Recipe files start from `pretraining_defaults()` and change what differs;
`python train.py --config FILE --config.a.b=v` overrides any field (ml_collections: unknown keys and
type mismatches are errors that name the key).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import ml_collections

from hubert_jax.config import HubertConfig, preset

logger = logging.getLogger(__name__)


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


def pretraining_defaults() -> ml_collections.ConfigDict:
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

    # fine-tuning (task "ctc" / "classify" / "frames", hubert_jax/training/tasks/finetune.py)
    c.finetune = ml_collections.ConfigDict(dict(
        freeze_feature_encoder=True,  # transformers' freeze_feature_encoder()
        freeze_encoder_steps=0,  # fairseq freeze_finetune_updates: only the head trains before this step
        ctc_loss_reduction="mean",  # transformers' ctc_loss_reduction ("mean": per target length, then batch)
        frame_rate=100.0,  # task "frames": labels per second of the frame-label files
        num_classes=0))  # task "frames": label count (0: the largest label + 1)
    # CTC transcripts (hubert_jax/data/targets.py): normalisation and the vocabulary
    c.text = ml_collections.ConfigDict(dict(
        vocab="",  # a vocab.json to use; empty: built from the training transcripts
        uppercase=True, remove=".,?!;:\"",
        unknown="unk"))  # a character outside the vocabulary: "unk" (-> <unk>, as transformers) or "error"

    c.optim = ml_collections.ConfigDict(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=10.0))
    c.optim.schedule = ml_collections.ConfigDict(dict(
        kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=400000, end_ratio=0.0, power=1.0,
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
    # WavLM's utterance mixing (task "wavlm", hubert_jax/data/mixing.py): the share of utterances mixed, the
    # longest segment as a share of the primary, the primary / secondary energy ratio range (dB), and optional
    # noise files (a manifest) with the share of mixed utterances that get noise and its ratio range
    c.mix = ml_collections.ConfigDict(dict(prob=0.2, max_share=0.5, energy_db=(-5.0, 5.0), noise_manifest="",
                                           noise_prob=0.0, noise_db=(-5.0, 20.0)))
    # wav2vec 2.0 (task "wav2vec2", hubert_jax/training/tasks/wav2vec2.py): the Gumbel temperature's start,
    # floor and per-update decay (fairseq base: 2 -> 0.5 by x0.999995); distractors, logit temperature and the
    # diversity weight are the model config's (num_negatives, contrastive_logits_temperature,
    # diversity_loss_weight), the feature penalty config.loss.features_pen
    c.wav2vec2 = ml_collections.ConfigDict(dict(gumbel=(2.0, 0.5, 0.999995)))
    # DistilHuBERT (task "distill"): the teacher's directory, the teacher layers the heads predict
    c.distill = ml_collections.ConfigDict(dict(teacher="", pred_layers=(4, 8, 12), inter_dim=-1, cosine_weight=1.0,
                                               feat_pen_weight=0.0, init_from_teacher=True))
    return c


def init_from_json(model_cfg) -> dict | None:
    """config.json of `model.init_from`, or None without one."""
    if not model_cfg.get("init_from"):
        return None
    from hubert_jax.config import read_json_object

    path = os.path.join(model_cfg.init_from, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.model.init_from={model_cfg.init_from}: no config.json there (expected a "
                                f"hubert-jax or transformers model directory)")
    return read_json_object(path)


def model_config(model_cfg) -> HubertConfig:
    """The architecture: `model.init_from`'s config.json when set (the model being continued), else the
    preset; then `model.overrides`. An override that is no field of the config is an error."""
    from hubert_jax.config import SpeechConfig

    saved = init_from_json(model_cfg)
    base = preset(model_cfg.preset) if saved is None else SpeechConfig.from_dict(saved)
    overrides = dict(model_cfg.overrides)
    unknown = sorted(set(overrides) - type(base).field_names())
    if unknown:
        raise ValueError(f"config.model.overrides: {unknown} are not {type(base).__name__} fields")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    config = base.replace(**overrides)
    config.validate()
    return config


# the heads' settings that a model directory's `hubert_pretraining` fixes (their shapes, and how labels map)
HEAD_FIELDS_FROM_INIT = ("num_classes", "final_dim", "untie_final_proj", "label_offset", "logit_temp", "label_rate")


def with_init_from_heads(cfg):
    """`cfg`, or for masked prediction from a directory with pretraining heads (a converted fairseq HuBERT,
    our export) a copy whose `model.head` takes the directory's settings: the heads' shapes come with their
    weights, and fairseq's label dictionaries fix the cluster counts and the specials' offset. Fields that
    change are logged."""
    if not cfg.model.init_from:
        return cfg
    from hubert_jax.models.pretraining_hubert import HeadConfig
    from hubert_jax.pretrained import PRETRAINING_HEADS

    saved = (init_from_json(cfg.model) or {}).get("hubert_pretraining")
    if not saved or not os.path.isfile(os.path.join(cfg.model.init_from, PRETRAINING_HEADS)):
        return cfg
    try:
        head = HeadConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(cfg.model.init_from, 'config.json')}: {e}") from e
    cfg = cfg.copy_and_resolve_references()
    for name in HEAD_FIELDS_FROM_INIT:
        current, value = cfg.model.head[name], getattr(head, name)
        value = type(current)(value)
        if value != current:
            logger.info("config.model.head.%s: %r -> %r, from %s", name, current, value, cfg.model.init_from)
            cfg.model.head[name] = value
    return cfg


def head_config(model_cfg):
    from hubert_jax.models.pretraining_hubert import HeadConfig

    fields = {f.name for f in dataclasses.fields(HeadConfig)}
    head = dict(model_cfg.head)
    unknown = sorted(set(head) - fields)
    if unknown:
        raise ValueError(f"config.model.head: unknown keys {unknown} (known: {sorted(fields)})")
    return HeadConfig(**head)
