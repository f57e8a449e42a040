"""fairseq HuBERT large (LibriLight 60k h): k-means 500 on layer 9 of the iteration-2 base model, 400k steps.

    python train.py --config configs/hubert_large.py --workdir /ckpt/hubert_large \
        --config.data.train.manifest=/data/librilight/train.tsv \
        --config.data.train.labels='("/data/labels/base_l9_km500/train.km",)' \
        --config.data.valid.manifest=/data/librilight/valid.tsv \
        --config.data.valid.labels='("/data/labels/base_l9_km500/valid.km",)'

fairseq hubert_large_lv60k.yaml: 128 GPUs x 900k samples (56.25 s) per GPU, crops of at most 250k samples:
data.max_tokens = 115.2M samples per global batch, over length buckets as in
configs/hubert_base_iter1.py. Pre-LN layers, layer-norm extractor, normalised
waveforms, no dropout or layerdrop, clip norm 1, final_dim 768.
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-large"
    c.model.overrides.update(dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                  feat_proj_dropout=0.0, layerdrop=0.0))
    c.model.head.update(dict(num_classes=(500,), final_dim=768, label_rate=50.0))
    c.data.normalize = True
    c.data.buckets = geometric(32000, 250000, 1.25)  # as configs/hubert_base_iter1.py
    c.data.max_tokens = 128 * 900_000  # fairseq: 900k samples per GPU on 128 GPUs
    c.loss.feature_grad_mult = 1.0
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=1.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=1.5e-3, warmup_steps=32000, total_steps=400000,
                                 end_ratio=0.0))
    c.train.steps = 400000
    return c
