"""WavLM Large (arXiv 2110.13900): denoising masked prediction on a 24 x 1024 pre-LN WavLM encoder
(layer-norm extractor, normalised waveforms, gated relative position bias), utterance mixing as in
hubert_jax/data/mixing.py.

    python train.py --config configs/wavlm_large.py --workdir /ckpt/wavlm_large \
        --config.data.train.manifest=/data/train.tsv \
        --config.data.train.labels='("/data/labels/base_l9_km500/train.km",)' \
        --config.data.valid.manifest=/data/valid.tsv \
        --config.data.valid.labels='("/data/labels/base_l9_km500/valid.km",)'

Labels: HuBERT Large's (k-means 500 of layer 9 of HuBERT Base's second iteration, 50 Hz; made as
configs/hubert_base_iter2.py shows, with --layer 9 on that model). Mixing as configs/wavlm_base_plus.py.
Optimisation: HuBERT Large's (peak 1.5e-3, 32k warmup, 400k steps, 128 x 900k samples per batch, clip 1).
The paper's own pretraining section was not readable where this recipe was written: check its label
source, step count and batch before a full run.
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.task = "wavlm"
    c.model.preset = "wavlm-large"
    c.model.overrides.update(dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                  feat_proj_dropout=0.0, layerdrop=0.0))
    c.model.head.update(dict(num_classes=(500,), final_dim=768, label_rate=50.0))
    c.data.normalize = True
    c.data.buckets = geometric(32000, 250000, 1.25)
    c.data.max_tokens = 128 * 900_000
    c.mix.update(dict(prob=0.2, max_share=0.5, energy_db=(-5.0, 5.0)))
    c.loss.feature_grad_mult = 1.0
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=1.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=1.5e-3, warmup_steps=32000, total_steps=400000,
                                 end_ratio=0.0))
    c.train.steps = 400000
    return c
