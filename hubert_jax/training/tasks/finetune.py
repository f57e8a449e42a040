"""What the fine-tuning tasks (CTC, utterance classification, frame classification: tasks/ctc.py,
classify.py, frames.py) share.

The model is a transformers-layout head model (`*ForCTC`, `*ForSequenceClassification`,
`*ForAudioFrameClassification`) whose base model starts from `model.init_from` (any directory hubert-jax
loads: our pretraining export, a transformers or converted fairseq checkpoint), or from scratch. What
fairseq's and transformers' fine-tuning recipes do:
- the conv feature encoder stays frozen (`finetune.freeze_feature_encoder`, transformers'
  `freeze_feature_encoder()`), and for the first `finetune.freeze_encoder_steps` steps only the head
  trains (fairseq's `freeze_finetune_updates`). Frozen parameters get neither gradient nor update
  (no weight decay either);
- SpecAugment on the projected features: time spans replaced by the mask vector (`mask_time_prob`,
  `mask_time_length`) and feature channels zeroed (`mask_feature_prob`, `mask_feature_length`),
  drawn from the step's key as transformers does in training, plus `layerdrop` (model overrides).
Whole utterances are read (padded to `data.max_samples`, or to the longest; with `data.buckets`, to the
shortest bucket that holds them). The targets' meta (vocabulary or classes, padded sizes) goes to
`{workdir}/finetune.json`, which a later run of the workdir must match. At the end the run exports
`{workdir}/model`: a transformers directory (`model.safetensors`, `config.json`), our
`flax_model.safetensors`, and the processor files (`preprocessor_config.json`, plus the tokenizer's for CTC).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax import storage
from hubert_jax.data.manifest import read_manifest
from hubert_jax.data.pipeline import DataConfig
from hubert_jax.data.targets import TargetAudio
from hubert_jax.lengths import feat_extract_output_lengths
from hubert_jax.masking import span_mask
from hubert_jax.training.resolve import model_config
from hubert_jax.training.tasks.base import Data, Task, batch_means
from hubert_jax.training.trainer import model_options

META_FILE = "finetune.json"  # the vocabulary / classes and padded sizes of a run, in its workdir


def finetune_data_config(cfg, manifest: str, max_samples: int) -> DataConfig:
    """Whole utterances: with data.buckets, those up to the longest utterance (`max_samples`), which
    is always the last bucket, so that every utterance is kept."""
    buckets = tuple(b for b in cfg.data.get("buckets", ()) if b < max_samples)
    buckets = buckets + (max_samples,) if cfg.data.get("buckets") else ()
    return DataConfig(manifest=manifest, buckets=buckets, max_tokens=int(cfg.data.get("max_tokens", 0)))


class Targets:
    """What a fine-tuning task reads for its splits: per split, one target per utterance (an id sequence,
    a class index or a frame-label array), and what goes into the meta."""

    def __init__(self, per_split: dict, meta: dict, *, label_length: int | None, crop: bool,
                 frame_rate: float | None = None):
        self.per_split, self.meta = per_split, meta
        self.label_length, self.crop, self.frame_rate = label_length, crop, frame_rate


class FineTuneTask(Task):
    """What the fine-tuning tasks share: a head on a pretrained encoder (init_from), frozen parts, SpecAugment, the
    targets' meta in the workdir."""
    sections = {
        "finetune": dict(
            freeze_feature_encoder=True,  # transformers' freeze_feature_encoder()
            freeze_encoder_steps=0,  # fairseq freeze_finetune_updates: only the head trains before this step
            ctc_loss_reduction="mean",  # transformers' ctc_loss_reduction ("mean": per target length, then batch)
            frame_rate=100.0,  # task "frames": labels per second of the frame-label files
            num_classes=0),  # task "frames": label count (0: the largest label + 1)
        # CTC transcripts (hubert_jax/data/targets.py): normalisation and the vocabulary
        "text": dict(
            vocab="",  # a vocab.json to use; empty: built from the training transcripts
            uppercase=True, remove=".,?!;:\"",
            unknown="unk"),  # a character outside the vocabulary: "unk" (-> <unk>, as transformers) or "error"
    }
    log_keys = ("loss", "accuracy")
    """A head model on a pretrained encoder; subclasses say which head, how targets are read and scored."""

    head_kind = ""  # a hubert_jax.families.HEAD_KINDS entry: "ForCTC", "ForSequenceClassification", "ForAudioFrameClassification"
    target_files = ""  # what config.data.{split}.targets holds, for the error when it is missing
    reads_target_lines = True  # targets are text lines, one per utterance (frame labels are read otherwise)

    def __init__(self, cfg, meta: dict | None = None):
        """`meta`: the targets' vocabulary or classes (from `data` or the workdir's finetune.json)."""
        super().__init__(cfg)
        self.meta = None
        if meta is not None:
            self.use_meta(meta)

    def use_meta(self, meta: dict) -> None:
        self.meta = meta

    # ------------------------------------------------------------------ data
    def read_targets(self, splits: dict, rows: dict, lines: dict, max_samples: int) -> Targets:
        raise NotImplementedError

    def data(self, workdir):
        cfg = self.cfg
        splits = {"train": cfg.data.train}
        if cfg.data.valid.manifest:
            splits["valid"] = cfg.data.valid
        for name, part in splits.items():
            if not part.get("targets"):
                raise ValueError(f"config.data.{name}.targets: give the {name} split's {self.target_files}")
        rows = {name: read_manifest(part.manifest) for name, part in splits.items()}
        for name, entries in rows.items():
            if not entries:
                raise ValueError(f"{splits[name].manifest}: no utterances (an empty {name} split)")
        lines = {}
        if self.reads_target_lines:
            from hubert_jax.data.targets import read_target_lines

            lines = {name: read_target_lines(part.targets, part.manifest, len(rows[name]))
                     for name, part in splits.items()}
        longest = max(e.num_samples for entries in rows.values() for e in entries)
        max_samples = int(cfg.data.max_samples) or longest
        targets = self.read_targets(splits, rows, lines, max_samples)
        meta = {"task": self.name, "max_samples": max_samples, **targets.meta}
        if workdir is not None:
            _write_meta(workdir, meta)
        self.use_meta(json.loads(json.dumps(meta)))  # as a resumed run reads it back
        sources = {name: TargetAudio(part.manifest, targets.per_split[name], max_samples=max_samples,
                                     label_length=targets.label_length, normalize=cfg.data.normalize,
                                     crop=targets.crop, frame_rate=targets.frame_rate)
                   for name, part in splits.items()}
        configs = {name: finetune_data_config(cfg, part.manifest, max_samples) for name, part in splits.items()}
        return Data(train=sources["train"], train_config=configs["train"], valid=sources.get("valid"),
                    valid_config=configs.get("valid"), samples=max_samples)

    def open_workdir(self, workdir: str) -> None:
        self.use_meta(read_meta(workdir))

    # ------------------------------------------------------------------ model
    def speech_config(self):
        """The architecture (init_from's, or the preset, with the run's overrides) with the head's fields."""
        return model_config(self.cfg.model)

    def build(self):
        from hubert_jax import families

        if self.meta is None:
            raise ValueError(f"task {self.name!r}: the targets' meta is needed to build the head (run data() or "
                             f"open_workdir() first)")
        config = self.speech_config()
        kind = self.head_kind
        if kind not in families.family(config.model_type).heads:
            having = [f.model_type for f in families.FAMILIES.values() if kind in f.heads]
            raise ValueError(f"config.task={self.name!r}: transformers has no {kind} head for "
                             f"{config.model_type} models (it has them for {', '.join(having)})")
        return families.head_class(kind, config.model_type)(config, rngs=nnx.Rngs(self.cfg.seed),
                                                            opts=model_options(self.cfg.model))

    def setup(self, abstract, mesh, rules) -> None:
        self.config = abstract.config
        self.prefix = abstract.base_model_prefix

    def update_mask(self, params, step):
        """Per parameter, whether this step trains it: the feature encoder never (when frozen), the rest of
        the base model from step `freeze_encoder_steps` on, the head always."""
        ft = self.cfg.finetune
        encoder_on = step >= ft.freeze_encoder_steps

        def mask(path, _):
            names = [getattr(p, "key", p) for p in path]
            if names[0] != self.prefix:
                return jnp.asarray(True)
            if ft.freeze_feature_encoder and names[1] == "feature_extractor":
                return jnp.asarray(False)
            return encoder_on

        return jax.tree_util.tree_map_with_path(mask, params)

    def spec_augment(self, key, batch):
        """transformers' training-time masks: time spans (frames) and feature channels, per row."""
        config = self.config
        b, samples = batch["input_values"].shape
        frames = int(feat_extract_output_lengths(config, samples, add_adapter=False))
        lengths = feat_extract_output_lengths(config, batch["attention_mask"].astype(jnp.int32).sum(-1),
                                              add_adapter=False)
        k_time, k_feat = jax.random.split(key)
        time = feature = None
        if config.apply_spec_augment and config.mask_time_prob > 0:
            time = span_mask(k_time, (b, frames), mask_prob=config.mask_time_prob, mask_length=config.mask_time_length,
                             min_masks=config.mask_time_min_masks, lengths=lengths)
        if config.apply_spec_augment and config.mask_feature_prob > 0:
            feature = span_mask(k_feat, (b, config.hidden_size), mask_prob=config.mask_feature_prob,
                                mask_length=config.mask_feature_length, min_masks=config.mask_feature_min_masks)
        return time, feature

    def head_output(self, model, batch, key, deterministic: bool, *, with_labels: bool = True):
        """The head model on the batch: with its labels (the head computes its loss) and, in training,
        SpecAugment's masks; `with_labels=False`: the scores alone."""
        mask_key, dropout_key = jax.random.split(key)
        kw = {}
        if with_labels:
            time, feature = (None, None) if deterministic else self.spec_augment(mask_key, batch)
            kw = {"labels": batch["labels"], "mask_time_indices": time, "mask_feature_indices": feature}
        return model(batch["input_values"], batch["attention_mask"], deterministic=deterministic,
                     dropout_rng=None if deterministic else dropout_key, **kw)

    # ------------------------------------------------------------------ export
    def export(self, model, directory: str) -> None:
        """transformers + hubert-jax weights and the processor files, loadable by `AutoModelForCTC` /
        `AutoModelForAudioClassification` and `AutoProcessor` / `AutoFeatureExtractor`."""
        from hubert_jax.processing import FeatureExtractor

        super().export(model, directory)
        FeatureExtractor(do_normalize=bool(self.cfg.data.normalize),
                         return_attention_mask=self.config.feat_extract_norm == "layer").save_pretrained(directory)


class ClassesTask(FineTuneTask):
    """A head over `meta["classes"]` (utterance or frame classification), scored by accuracy: eval steps
    return `correct` and `count`."""

    def speech_config(self):
        classes = self.meta["classes"]
        return super().speech_config().replace(id2label=dict(enumerate(classes)), num_labels=len(classes))

    def summarize(self, metrics: list[dict]) -> dict:
        """The mean loss and, over all batches, correct / count."""
        return {**batch_means(metrics, "loss"),
                "accuracy": sum(int(m["correct"]) for m in metrics) / max(sum(int(m["count"]) for m in metrics), 1)}


def _write_meta(workdir: str, meta: dict) -> None:
    path = storage.join(workdir, META_FILE)
    if storage.exists(path):
        with storage.open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != json.loads(json.dumps(meta)):
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != json.loads(json.dumps(meta)).get(k))
            raise ValueError(f"{path}: this workdir was fine-tuned with other targets ({', '.join(changed)} "
                             f"differ: e.g. a new vocabulary); use a new --workdir")
        return
    if jax.process_index() == 0:
        if not storage.is_remote(workdir):
            os.makedirs(workdir, exist_ok=True)
        with storage.open(path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)


def read_meta(workdir: str) -> dict:
    """The targets' meta (vocabulary or classes) a fine-tuning run recorded in its workdir."""
    with storage.open(storage.join(workdir, META_FILE), encoding="utf-8") as f:
        return json.load(f)
