"""fairseq HuBERT base, iteration 2: k-means 500 on layer 6 of the iteration-1 model (50 Hz), 400k steps.

    python -m hubert_jax.labels dump --model /ckpt/hubert_base_iter1/export --layer 6 --percent 0.1 \
        --manifest /data/librispeech/train.tsv --out /data/feats/l6_sample/train --rank R --world W
    python -m hubert_jax.labels kmeans --feats /data/feats/l6_sample/train --nshard W --clusters 500 \
        --out /data/labels/km500.npy
    python -m hubert_jax.labels label --model /ckpt/hubert_base_iter1/export --layer 6 --manifest /data/librispeech/train.tsv \
        --centroids /data/labels/km500.npy --out /data/labels/l6_km500/train.km --rank R --world W
    python train.py --config configs/hubert_base_iter2.py --workdir /ckpt/hubert_base_iter2 \
        --config.data.train.manifest=/data/librispeech/train.tsv \
        --config.data.train.labels='("/data/labels/l6_km500/train.km",)' \
        --config.data.valid.manifest=/data/librispeech/valid.tsv \
        --config.data.valid.labels='("/data/labels/l6_km500/valid.km",)'
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-base"
    c.model.head.update(dict(num_classes=(500,), final_dim=256, label_rate=50.0))
    c.data.buckets = geometric(32000, 250000, 1.25)  # as configs/hubert_base_iter1.py
    c.data.max_tokens = 32 * 1_400_000  # fairseq: 1.4M samples per GPU on 32 GPUs
    c.loss.feature_grad_mult = 0.1
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=10.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=400000, end_ratio=0.0))
    c.train.steps = 400000
    return c
