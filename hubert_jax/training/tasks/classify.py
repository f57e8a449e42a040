"""Utterance classification (`config.task = "classify"`) on `*ForSequenceClassification`: one label per
utterance (a text line per manifest row; the classes are the training split's), validation accuracy.
Utterances longer than the padded size are cropped."""

from __future__ import annotations

import jax.numpy as jnp

from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.finetune import ClassesTask, Targets


@register_task("classify")
class ClassifyTask(ClassesTask):
    """One label per utterance (speaker, language, intent): *ForSequenceClassification with cross-entropy."""
    head_kind = "ForSequenceClassification"
    target_files = "labels (one per line)"

    def read_targets(self, splits, rows, lines, max_samples) -> Targets:
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
        return Targets(targets, {"classes": classes, "label_length": None}, label_length=None, crop=True)

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        out = self.head_output(model, batch, key, deterministic)
        metrics = {"loss": out.loss}
        if deterministic:
            metrics["correct"] = jnp.sum(jnp.argmax(out.logits, axis=-1) == batch["labels"])
            metrics["count"] = jnp.asarray(batch["labels"].shape[0])
        return out.loss, metrics
