"""fairseq HuBERT xlarge (LibriLight 60k h): k-means 500 on layer 9 of the iteration-2 base model, 400k steps.

    python train.py --config configs/hubert_xlarge.py --workdir /ckpt/hubert_xlarge \
        --config.data.train.manifest=/data/librilight/train.tsv \
        --config.data.train.labels='("/data/labels/base_l9_km500/train.km",)' \
        --config.data.valid.manifest=/data/librilight/valid.tsv \
        --config.data.valid.labels='("/data/labels/base_l9_km500/valid.km",)'

fairseq hubert_xlarge_lv60k.yaml: 256 GPUs x 360k samples (22.5 s) per GPU, crops of at most 250k samples:
data.max_tokens = 92.16M samples per global batch, over length buckets as in
configs/hubert_base_iter1.py. final_dim 1024, clip norm 1, normalised waveforms.
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.preset = "hubert-xlarge"
    c.model.overrides.update(dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                  feat_proj_dropout=0.0, layerdrop=0.0))
    c.model.head.update(dict(num_classes=(500,), final_dim=1024, label_rate=50.0))
    c.model.scan_layers = True
    c.model.remat_policy = "dots"
    c.data.normalize = True
    c.data.buckets = geometric(32000, 250000, 1.25)  # as configs/hubert_base_iter1.py
    c.data.max_tokens = 256 * 360_000  # fairseq: 360k samples per GPU on 256 GPUs
    c.loss.feature_grad_mult = 1.0
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=1.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=3e-3, warmup_steps=32000, total_steps=400000,
                                 end_ratio=0.0))
    c.train.steps = 400000
    return c
