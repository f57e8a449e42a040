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

import os

from hubert_jax.training.config import load_config


def get_config():
    # its heads, batch, buckets, normalisation and optimisation
    c = load_config(os.path.join(os.path.dirname(__file__), "hubert_large.py"))
    c.task = "wavlm"
    c.model.preset = "wavlm-large"
    c.mix.update(dict(prob=0.2, max_share=0.5, energy_db=(-5.0, 5.0)))
    return c
