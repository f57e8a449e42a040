"""Fine-tuning: CTC speech recognition (`task="ctc"`) and utterance classification (`task="classify"`).

The model is a transformers-layout `*ForCTC` / `*ForSequenceClassification` whose base model starts from
`model.init_from` (any directory hubert-jax loads: our pretraining export, a transformers or converted
fairseq checkpoint), or from scratch. What fairseq's and transformers' fine-tuning recipes do:
- the conv feature encoder stays frozen (`finetune.freeze_feature_encoder`, transformers'
  `freeze_feature_encoder()`), and for the first `finetune.freeze_encoder_steps` steps only the head
  trains (fairseq's `freeze_finetune_updates`). Frozen parameters get neither gradient nor update
  (no weight decay either);
- SpecAugment on the projected features: time spans replaced by the mask vector (`mask_time_prob`,
  `mask_time_length`) and feature channels zeroed (`mask_feature_prob`, `mask_feature_length`),
  drawn from the step's key as transformers does in training, plus `layerdrop` (model overrides);
- validation: CTC greedy decoding, character and word error rates (jiwer) against the normalised
  transcripts; classification accuracy.
At the end the run exports `{workdir}/model`: a transformers directory (`model.safetensors`,
`config.json`), our `flax_model.safetensors`, and the processor files (`vocab.json` and tokenizer
config for CTC, `preprocessor_config.json`).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hubert_jax.data.manifest import SAMPLE_RATE, read_manifest
from hubert_jax.data.targets import TargetAudio, TextConfig, build_vocab, encode_texts, read_target_lines
from hubert_jax.lengths import feat_extract_output_lengths
from hubert_jax.masking import span_mask
from hubert_jax.training.config import model_config
from hubert_jax.training.pretrain import Trainer, host_model, model_options

logger = logging.getLogger(__name__)

FINETUNE_TASKS = ("ctc", "classify", "frames")
META_FILE = "finetune.json"  # the vocabulary / classes and padded sizes of a run, in its workdir


# ----------------------------------------------------------------------------- data
def finetune_sources(cfg, workdir: str | None = None):
    """(train source, valid source or None, meta) of a fine-tuning run; meta (vocabulary or classes, padded
    sizes) is written to `{workdir}/finetune.json` and must match what an earlier run of the workdir wrote."""
    splits = {"train": cfg.data.train}
    if cfg.data.valid.manifest:
        splits["valid"] = cfg.data.valid
    for name, part in splits.items():
        if not part.get("targets"):
            raise ValueError(f"config.data.{name}.targets: give the {name} split's "
                             + ("transcripts (.wrd)" if cfg.task == "ctc" else "labels (one per line)"))
    rows = {name: read_manifest(part.manifest) for name, part in splits.items()}
    for name, entries in rows.items():
        if not entries:
            raise ValueError(f"{splits[name].manifest}: no utterances (an empty {name} split)")
    lines = ({} if cfg.task == "frames" else
             {name: read_target_lines(part.targets, part.manifest, len(rows[name])) for name, part in splits.items()})
    longest = max(e.num_samples for entries in rows.values() for e in entries)
    max_samples = int(cfg.data.max_samples) or longest
    meta = {"task": cfg.task, "max_samples": max_samples}
    if cfg.task == "ctc":
        from hubert_jax.processing import CTCTokenizer

        text = TextConfig(**{k: v for k, v in dict(cfg.text).items() if k != "vocab"})
        texts = {name: [text.normalize(t) for t in lines[name]] for name in splits}
        vocab = (_read_vocab(cfg.text.vocab) if cfg.text.get("vocab") else build_vocab(texts["train"]))
        tokenizer = CTCTokenizer(vocab=vocab)
        targets = {name: encode_texts(texts[name], tokenizer, path=splits[name].targets, unknown=text.unknown)
                   for name in splits}
        empty = [f"{splits[n].targets}:{i + 1}" for n in splits for i, t in enumerate(targets[n]) if len(t) == 0]
        if empty:
            raise ValueError(f"empty transcripts (CTC needs at least one character): {', '.join(empty[:5])}")
        label_length = max(len(t) for ts in targets.values() for t in ts)
        meta.update(vocab=vocab, label_length=label_length)
        crop = False
    elif cfg.task == "frames":
        from hubert_jax.data.manifest import read_int_labels
        from hubert_jax.data.targets import CTC_IGNORE

        rate = float(cfg.finetune.frame_rate)
        targets = {}
        for name, part in splits.items():
            expected = [int(round(e.num_samples * rate / SAMPLE_RATE)) for e in rows[name]]
            targets[name] = read_int_labels(part.targets, expected, tolerance=max(1, int(0.1 * rate)),
                                            padding=CTC_IGNORE)
        classes = int(cfg.finetune.num_classes) or 1 + max(int(t.max()) for ts in targets.values() for t in ts)
        top = max(int(t.max()) for ts in targets.values() for t in ts)
        if top >= classes:
            raise ValueError(f"frame labels go up to {top}, but config.finetune.num_classes is {classes}")
        meta.update(classes=[str(i) for i in range(classes)], label_length=int(round(max_samples * rate / SAMPLE_RATE)))
        label_length, crop = meta["label_length"], True
    else:
        classes = sorted({t.strip() for t in lines["train"]})
        index = {c: i for i, c in enumerate(classes)}
        targets = {}
        for name in splits:
            unknown = [(i + 1, t) for i, t in enumerate(lines[name]) if t.strip() not in index]
            if unknown:
                number, label = unknown[0]
                raise ValueError(f"{splits[name].targets}:{number}: label {label!r} is not one of the training "
                                 f"split's {len(classes)} classes ({len(unknown)} such lines)")
            targets[name] = [index[t.strip()] for t in lines[name]]
        meta.update(classes=classes, label_length=None)
        label_length, crop = None, True
    if workdir is not None:
        _write_meta(workdir, meta)
    frame_rate = float(cfg.finetune.frame_rate) if cfg.task == "frames" else None
    sources = {name: TargetAudio(part.manifest, targets[name], max_samples=max_samples, label_length=label_length,
                                 normalize=cfg.data.normalize, crop=crop, frame_rate=frame_rate)
               for name, part in splits.items()}
    return sources["train"], sources.get("valid"), meta


def _read_vocab(path: str) -> dict:
    from hubert_jax.config import read_json_object

    vocab = read_json_object(path)
    if not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{path}: expected a vocab.json of {{token: id}} with integer ids")
    return vocab


def _write_meta(workdir: str, meta: dict) -> None:
    path = os.path.join(workdir, META_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != json.loads(json.dumps(meta)):
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != json.loads(json.dumps(meta)).get(k))
            raise ValueError(f"{path}: this workdir was fine-tuned with other targets ({', '.join(changed)} "
                             f"differ: e.g. a new vocabulary); use a new --workdir")
        return
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)


def read_meta(workdir: str) -> dict:
    with open(os.path.join(workdir, META_FILE), encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- the trainer
class FineTuner(Trainer):
    """CTC or sequence classification on a transformers-layout head model."""

    def __init__(self, cfg, mesh, meta: dict, **kw):
        self.meta = meta
        if cfg.task == "ctc":
            from hubert_jax.processing import CTCTokenizer

            self.tokenizer = CTCTokenizer(vocab=meta["vocab"])
        super().__init__(cfg, mesh, **kw)

    def speech_config(self):
        cfg = self.cfg
        config = model_config(cfg.model)  # init_from's architecture (or the preset), with the run's overrides
        if cfg.task == "ctc":
            return config.replace(vocab_size=len(self.meta["vocab"]), pad_token_id=self.tokenizer.pad_token_id,
                                  ctc_loss_reduction=cfg.finetune.ctc_loss_reduction, ctc_zero_infinity=True)
        classes = self.meta["classes"]
        return config.replace(id2label=dict(enumerate(classes)), num_labels=len(classes))


    def build(self):
        from hubert_jax.models import TASK_CLASSES

        config = self.speech_config()
        kind = {"ctc": "ForCTC", "classify": "ForSequenceClassification",
                "frames": "ForAudioFrameClassification"}[self.cfg.task]
        if config.model_type not in TASK_CLASSES[kind]:
            raise ValueError(f"config.task={self.cfg.task!r}: transformers has no {kind} head for "
                             f"{config.model_type} models (it has them for {', '.join(TASK_CLASSES[kind])})")
        return TASK_CLASSES[kind][config.model_type](config, rngs=nnx.Rngs(self.cfg.seed),
                                                     opts=model_options(self.cfg.model))

    def setup(self, abstract) -> None:
        self.config = abstract.config
        self.prefix = abstract.base_model_prefix

    # ------------------------------------------------------------------ freezing
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

    # ------------------------------------------------------------------ steps
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

    def forward(self, model, batch, key, deterministic: bool, frozen):
        mask_key, dropout_key = jax.random.split(key)
        time, feature = (None, None) if deterministic else self.spec_augment(mask_key, batch)
        frames = self.cfg.task == "frames"
        kw = {} if frames else {"labels": batch["labels"], "mask_time_indices": time, "mask_feature_indices": feature}
        out = model(batch["input_values"], batch["attention_mask"], deterministic=deterministic,
                    dropout_rng=None if deterministic else dropout_key, **kw)
        if frames:  # cross-entropy over the frames that have a label (transformers' head wants one-hot scores)
            out = _frame_loss(out, batch["labels"], self.cfg.finetune.frame_rate)
        metrics = {"loss": out.loss}
        if not deterministic:
            return out.loss, metrics
        if self.cfg.task == "ctc":
            metrics["predictions"] = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
            metrics["frames"] = feat_extract_output_lengths(self.config, batch["attention_mask"].sum(-1),
                                                            add_adapter=None)
            metrics["labels"] = batch["labels"]
        elif frames:
            metrics["correct"], metrics["count"] = out.correct, out.count
        else:
            metrics["correct"] = jnp.sum(jnp.argmax(out.logits, axis=-1) == batch["labels"])
            metrics["count"] = jnp.asarray(batch["labels"].shape[0])
        return out.loss, metrics

    def summarize(self, metrics: list[dict]) -> dict:
        out = {"loss": float(np.mean([m["loss"] for m in metrics]))}
        if self.cfg.task == "ctc":
            refs, hyps = [], []
            for m in metrics:
                for pred, frames, labels in zip(m["predictions"], m["frames"], m["labels"]):
                    refs.append(self.tokenizer.decode(labels[labels >= 0], group_tokens=False))
                    hyps.append(self.tokenizer.decode(pred[: int(frames)]))
            out.update(error_rates(refs, hyps))
        else:
            out["accuracy"] = sum(int(m["correct"]) for m in metrics) / max(sum(int(m["count"]) for m in metrics), 1)
        return out

    # ------------------------------------------------------------------ weights in and out
    def load_initial(self, state, directory: str):
        """The base model's weights from `directory` (the head stays freshly initialised)."""
        from hubert_jax.pretrained import load_weights_into

        model = host_model(self, state)
        load_weights_into(model.base_model, directory)
        return self.with_params(state, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    def export(self, state, directory: str) -> str:
        """transformers + hubert-jax weights and the processor files, loadable by `AutoModelForCTC` /
        `AutoModelForAudioClassification` and `AutoProcessor` / `AutoFeatureExtractor`."""
        from hubert_jax.pretrained import write_directory, write_model_files, write_transformers_files
        from hubert_jax.processing import FeatureExtractor

        model = host_model(self, state)

        def fill(tmp):
            write_transformers_files(model, tmp)
            write_model_files(model, tmp)
            FeatureExtractor(do_normalize=bool(self.cfg.data.normalize),
                             return_attention_mask=self.config.feat_extract_norm == "layer").save_pretrained(tmp)
            if self.cfg.task == "ctc":
                self.tokenizer.save_pretrained(tmp)

        if jax.process_index() == 0:
            write_directory(directory, fill)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"export {directory}")
        return os.path.abspath(directory)


def _frame_loss(out, labels, label_rate: float):
    """Mean cross-entropy and correct/count over the model frames whose label (at `label_rate` per second,
    model frames at 50 per second) is set; the frame at time t takes the label at time t."""
    import types

    frames = out.logits.shape[1]
    index = np.minimum((np.arange(frames) * label_rate / 50.0).astype(np.int64), labels.shape[1] - 1)
    targets = labels[:, index]
    valid = targets >= 0
    logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    count = valid.sum()
    loss = jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1)
    correct = jnp.sum((jnp.argmax(out.logits, axis=-1) == targets) & valid)
    return types.SimpleNamespace(loss=loss, logits=out.logits, correct=correct, count=count)


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus character and word error rates (jiwer), over the references that are not empty."""
    import jiwer

    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        raise ValueError("no non-empty reference transcript to score")
    refs, hyps = zip(*pairs)
    return {"cer": float(jiwer.cer(list(refs), list(hyps))), "wer": float(jiwer.wer(list(refs), list(hyps)))}
