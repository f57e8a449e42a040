"""Korean HuBERT base, as the hubert-base-korean model card describes it: ~4,000 h of AIHub Korean speech,
500-cluster k-means labels from the MFCC base model's features (50 Hz), 8 attention heads.

    python train.py --config configs/korean_base.py --workdir /gcs/BUCKET/ckpt/korean_base \
        --config.data.train.manifest=/data/aihub/train.tsv \
        --config.data.train.labels='("/data/labels/km500/train.km",)' \
        --config.data.valid.manifest=/data/aihub/valid.tsv \
        --config.data.valid.labels='("/data/labels/km500/valid.km",)'

Card: batch 128, 400k steps, warmup 32k, peak lr 5e-4, weight decay 0.01, Adam b1 0.9 b2 0.99,
"learning rate decay 0.1", read here as linear decay to 0.1 x peak at the last step (see
hubert_jax/training/optim.py). The card gives no crop length, dropout or clip norm: fairseq base's are used.
"""

from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-base-korean"
    c.model.head.update(dict(num_classes=(500,), final_dim=256, label_rate=50.0))
    c.data.batch_size = 128
    c.loss.feature_grad_mult = 0.1
    c.optim.update(dict(b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, clip_norm=10.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=400000,
                                 end_ratio=0.1))
    c.train.steps = 400000
    return c
