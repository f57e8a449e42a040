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

Batches: the AIHub corpora (free conversation, multi-speaker TTS, broadcast dialogue) are mostly utterances of
a few seconds, so fixed 15.6 s crops would make about 70% of every step padding (benchmarks/batching.py, on a
stand-in with mean 4 s). Length buckets 1.25x apart from 0.5 s to 15.6 s crop each utterance down to the longest
bucket it fills: no padding, about 11% of the audio cropped away. min_samples is 0.5 s (fairseq's 2 s would drop
the many short turns). data.max_tokens reads the card's batch of 128 as 128 utterances of the corpus' mean
length (~4 s): 8.2M samples per step; the longest bucket then holds 32 rows, so on more than 32 data shards
raise max_tokens (the run says so at start).
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-base-korean"
    c.model.head.update(dict(num_classes=(500,), final_dim=256, label_rate=50.0))
    c.data.min_samples = 8000
    c.data.buckets = geometric(8000, 250000, 1.25)
    c.data.max_tokens = 128 * 64000
    c.loss.feature_grad_mult = 0.1
    c.optim.update(dict(b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, clip_norm=10.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=400000,
                                 end_ratio=0.1))
    c.train.steps = 400000
    return c
