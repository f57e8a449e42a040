"""WavLM's denoising masked speech modeling (`config.task = "wavlm"`, arXiv 2110.13900): HuBERT's masked
prediction of the primary utterance's frame labels, on a WavLM encoder (gated relative position bias),
from input that has a segment of another utterance of the batch (or of a noise file) mixed in
(`config.mix`, hubert_jax/data/mixing.py). Validation reads the clean valid split. The export is a WavLM
directory (transformers' `WavLMModel` loads it) with the heads beside it."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from hubert_jax.data.mixing import MixConfig
from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.base import check_family, crop_data
from hubert_jax.training.tasks.hubert import HubertTask


def mix_config(cfg) -> MixConfig:
    """config.mix as a MixConfig."""
    fields = dict(cfg.mix)
    for name in ("energy_db", "noise_db"):
        fields[name] = tuple(float(v) for v in fields[name])
    return MixConfig(**fields)


@register_task("wavlm")
class WavLMTask(HubertTask):
    """WavLM's denoising masked prediction: HuBERT's task on utterance-mixed inputs, predicting the primary
    utterance's labels."""
    # utterance mixing (hubert_jax/data/mixing.py): the share of utterances mixed, the longest segment as a share
    # of the primary, the primary / secondary energy ratio range (dB), and optional noise files (a manifest) with
    # the share of mixed utterances that get noise and its ratio range
    sections = {"mix": dict(prob=0.2, max_share=0.5, energy_db=(-5.0, 5.0), noise_manifest="", noise_prob=0.0,
                            noise_db=(-5.0, 20.0))}

    def __init__(self, cfg):
        super().__init__(cfg)
        check_family(self.cfg, "wavlm", "configs/wavlm_base_plus.py")
        self.mix = mix_config(self.cfg)

    def data(self, workdir):
        data = crop_data(self.cfg, labels=True)
        data.train_config = dataclasses.replace(data.train_config, mix=self.mix)
        return data

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        loss, metrics = super().forward(model, batch, key, step, deterministic, frozen)
        if "mixed" in batch:  # the share of this batch's utterances that were mixed
            metrics["mixed"] = jnp.mean(batch["mixed"].astype(jnp.float32))
        return loss, metrics
