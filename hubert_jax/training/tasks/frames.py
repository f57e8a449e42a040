"""Frame classification (`config.task = "frames"`) on `*ForAudioFrameClassification`: integer labels at
`finetune.frame_rate` per second (a .km-style file, one line per manifest row; -100 where a frame has
none), cross-entropy over the labelled frames, validation frame accuracy."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

from hubert_jax.lengths import SAMPLE_RATE
from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.finetune import ClassesTask, Targets


@register_task("frames")
class FramesTask(ClassesTask):
    """One label per frame: *ForAudioFrameClassification, cross-entropy on the real frames."""
    head_kind = "ForAudioFrameClassification"
    target_files = "labels (one per line)"
    reads_target_lines = False

    def read_targets(self, splits, rows, lines, max_samples) -> Targets:
        from hubert_jax.data.manifest import read_int_labels
        from hubert_jax.data.targets import CTC_IGNORE

        rate = float(self.cfg.finetune.frame_rate)
        targets = {}
        for name, part in splits.items():
            expected = [int(round(e.num_samples * rate / SAMPLE_RATE)) for e in rows[name]]
            targets[name] = read_int_labels(part.targets, expected, tolerance=max(1, int(0.1 * rate)),
                                            padding=CTC_IGNORE)
        top = max(int(t.max()) for ts in targets.values() for t in ts)
        classes = int(self.cfg.finetune.num_classes) or 1 + top
        if top >= classes:
            raise ValueError(f"frame labels go up to {top}, but config.finetune.num_classes is {classes}")
        label_length = int(round(max_samples * rate / SAMPLE_RATE))
        return Targets(targets, {"classes": [str(i) for i in range(classes)], "label_length": label_length},
                       label_length=label_length, crop=True, frame_rate=rate)

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        out = self.head_output(model, batch, key, deterministic, with_labels=False)
        # cross-entropy over the frames that have a label (transformers' head wants one-hot scores)
        out = _frame_loss(out, batch["labels"], self.cfg.finetune.frame_rate)
        metrics = {"loss": out.loss}
        if deterministic:
            metrics["correct"], metrics["count"] = out.correct, out.count
        return out.loss, metrics


def _frame_loss(out, labels, label_rate: float):
    """Mean cross-entropy and correct/count over the model frames whose label (at `label_rate` per second,
    model frames at 50 per second) is set; the frame at time t takes the label at time t."""
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
