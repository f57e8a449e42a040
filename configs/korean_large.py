"""Korean HuBERT large, as the hubert-large-korean model card describes it (24 x 1024, 16 heads,
projection 768), on the same 500-cluster labels as the Korean base.

    python train.py --config configs/korean_large.py --workdir /gcs/BUCKET/ckpt/korean_large \
        --config.data.train.manifest=/data/aihub/train.tsv \
        --config.data.train.labels='("/data/labels/km500/train.km",)' \
        --config.data.valid.manifest=/data/aihub/valid.tsv \
        --config.data.valid.labels='("/data/labels/km500/valid.km",)'

Card: batch 128, 400k steps, warmup 32k, peak lr 1.5e-3, weight decay 0.01, Adam b2 0.99, "learning rate
decay 0.1" (linear to 0.1 x peak, see hubert_jax/training/optim.py). Other settings follow fairseq large.
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-large-korean"
    c.model.overrides.update(dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                  feat_proj_dropout=0.0, layerdrop=0.0))
    c.model.head.update(dict(num_classes=(500,), final_dim=768, label_rate=50.0))
    c.data.normalize = True
    c.data.min_samples = 8000
    c.data.buckets = geometric(8000, 250000, 1.25)  # why: configs/korean_base.py
    c.data.max_tokens = 128 * 64000
    c.loss.feature_grad_mult = 1.0
    c.optim.update(dict(b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, clip_norm=1.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=1.5e-3, warmup_steps=32000, total_steps=400000,
                                 end_ratio=0.1))
    c.train.steps = 400000
    return c
