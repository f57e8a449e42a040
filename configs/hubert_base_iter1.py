"""fairseq HuBERT base, iteration 1: MFCC k-means labels (100 clusters, 100 Hz), 250k steps.

    python train.py --config configs/hubert_base_iter1.py --workdir /ckpt/hubert_base_iter1 \
        --config.data.train.manifest=/data/librispeech/train.tsv \
        --config.data.train.labels='("/data/labels/mfcc_km100/train.km",)' \
        --config.data.valid.manifest=/data/librispeech/valid.tsv \
        --config.data.valid.labels='("/data/labels/mfcc_km100/valid.km",)'

fairseq examples/hubert/config/pretrain/hubert_base_librispeech.yaml: 32 GPUs x 1.4M samples (87.5 s) per
GPU, crops of at most 250k samples: data.max_tokens = 44.8M samples per global batch.
Batches are fairseq's token budget over length buckets (hubert_jax/data/buckets.py): buckets 1.25x apart from
2 s (fairseq's min_sample_size) to 15.6 s (its max_sample_size), each utterance cropped down to the longest bucket
it fills, so no batch carries padding (benchmarks/batching.py: 0% padding, about 10% of LibriSpeech's audio
cropped away, against 21% padding with fixed 15.6 s crops).
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-base"
    c.model.head.update(dict(num_classes=(100,), final_dim=256, label_rate=100.0))
    c.data.buckets = geometric(32000, 250000, 1.25)
    c.data.max_tokens = 32 * 1_400_000  # fairseq: 1.4M samples per GPU on 32 GPUs
    c.loss.feature_grad_mult = 0.1
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=10.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=250000, end_ratio=0.0))
    c.train.steps = 250000
    return c
