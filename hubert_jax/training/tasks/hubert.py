"""HuBERT masked prediction (`config.task = "hubert"`): fairseq's hubert criterion on frame labels (k-means
of MFCCs or of an earlier iteration's features), on the `HubertForPreTraining` heads. The encoder is the
config's (a HuBERT preset, or a WavLM one: the criterion does not care)."""

from __future__ import annotations

import jax
from flax import nnx

from hubert_jax.models.pretraining_hubert import HubertForPreTraining, LossWeights, pretraining_loss
from hubert_jax.training.resolve import head_config, model_config, with_init_from_heads
from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.base import Task, batch_means, crop_data
from hubert_jax.training.trainer import model_options


@register_task("hubert")
class HubertTask(Task):
    """HuBERT masked prediction of frame labels (fairseq's hubert criterion): HubertForPreTraining on crops with .km
    labels."""
    log_keys = ("loss", "accuracy_m", "accuracy_u")

    def __init__(self, cfg):
        # before anything reads the heads' settings: a model.init_from with heads fixes them (config.json
        # records what the run follows)
        super().__init__(with_init_from_heads(cfg))

    def data(self, workdir):
        return crop_data(self.cfg, labels=True)

    def build(self):
        return HubertForPreTraining(model_config(self.cfg.model), head_config(self.cfg.model),
                                    rngs=nnx.Rngs(self.cfg.seed), opts=model_options(self.cfg.model))

    def setup(self, abstract, mesh, rules) -> None:
        self.num_label_sets = len(abstract.head.num_classes)
        self.weights = LossWeights(masked=self.cfg.loss.masked, unmasked=self.cfg.loss.unmasked,
                                   features_pen=self.cfg.loss.features_pen)

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        mask_key, dropout_key = jax.random.split(key)
        m = self.cfg.masking
        labels = [batch["labels"][:, i] for i in range(self.num_label_sets)]
        out = model(batch["input_values"], labels, batch["attention_mask"], mask_rng=mask_key,
                    mask_prob=m.mask_prob, mask_length=m.mask_length, min_masks=m.min_masks,
                    feature_grad_mult=self.cfg.loss.feature_grad_mult, deterministic=deterministic,
                    dropout_rng=None if deterministic else dropout_key)
        return pretraining_loss(out, self.weights)

    def summarize(self, metrics: list[dict]) -> dict:
        """The mean loss and, over all batches' frames, the masked and unmasked accuracy (per label set too,
        when there are several)."""
        def accuracy(correct: str, frames: str) -> float:
            return sum(int(m[correct]) for m in metrics) / max(sum(int(m[frames]) for m in metrics), 1)

        out = batch_means(metrics, "loss")
        sets = [""] if self.num_label_sets == 1 else [f"_{i}" for i in range(self.num_label_sets)]
        out["accuracy_m"] = accuracy(f"correct_m{sets[0]}", "masked_frames")
        out["accuracy_u"] = accuracy(f"correct_u{sets[0]}", "unmasked_frames")
        if len(sets) > 1:
            for s in sets:
                out[f"accuracy_m{s}"] = accuracy(f"correct_m{s}", "masked_frames")
                out.update(batch_means(metrics, f"loss_m{s}"))
        return out

    def load_initial(self, model, directory: str) -> None:
        """The encoder and, when the directory has them (a converted fairseq HuBERT, our export), the heads."""
        from hubert_jax.pretrained import load_weights_into

        load_weights_into(model, directory)

    def export(self, model, directory: str) -> None:
        """The encoder as transformers' base model (model.safetensors) and ours (flax_model.safetensors), and
        the heads beside it with their settings, so a later run can continue with --config.model.init_from."""
        from hubert_jax.export import write_transformers_files
        from hubert_jax.pretrained import write_model_files

        write_transformers_files(model.base_model, directory)
        write_model_files(model, directory)  # after: its config.json adds the heads' settings
