"""WavLM Base+ (arXiv 2110.13900): denoising masked prediction on a 12 x 768 WavLM encoder (gated relative
position bias, 320 buckets, max distance 800), utterance mixing as in hubert_jax/data/mixing.py.

    python -m hubert_jax.labels dump --model /ckpt/hubert_base_iter1/export --layer 6 --percent 0.1 \
        --manifest /data/train.tsv --out /data/feats/l6_sample/train --rank R --world W
    python -m hubert_jax.labels kmeans --feats /data/feats/l6_sample/train --nshard W --clusters 500 \
        --out /data/labels/km500.npy
    python -m hubert_jax.labels label --model /ckpt/hubert_base_iter1/export --layer 6 --manifest /data/train.tsv \
        --centroids /data/labels/km500.npy --out /data/labels/l6_km500/train.km --rank R --world W
    python train.py --config configs/wavlm_base_plus.py --workdir /ckpt/wavlm_base_plus \
        --config.data.train.manifest=/data/train.tsv \
        --config.data.train.labels='("/data/labels/l6_km500/train.km",)' \
        --config.data.valid.manifest=/data/valid.tsv \
        --config.data.valid.labels='("/data/labels/l6_km500/valid.km",)'

Labels: WavLM is trained on HuBERT's pseudo-labels; this recipe uses those of HuBERT Base's second iteration
(k-means 500 of layer 6 of the iteration-1 model, 50 Hz, configs/hubert_base_iter2.py). Mixing: 20% of the
utterances, a segment shorter than half the primary, energy ratio U(-5, 5) dB (c.mix; noise files are
optional, config.mix.noise_manifest). Optimisation: HuBERT Base's (Adam 0.9/0.98, peak 5e-4, 32k warmup,
polynomial decay, 400k steps, 32 x 1.4M samples per batch). The paper's own pretraining section was not
readable where this recipe was written: check its label layer, step count and batch before a full run.
"""

import os

from hubert_jax.training.config import load_config


def get_config():
    # its heads (500 clusters at 50 Hz), batch, buckets and optimisation
    c = load_config(os.path.join(os.path.dirname(__file__), "hubert_base_iter2.py"))
    c.task = "wavlm"
    c.model.preset = "wavlm-base-plus"
    c.mix.update(dict(prob=0.2, max_share=0.5, energy_db=(-5.0, 5.0)))
    return c
