"""DistilHuBERT: a 2-layer student distilled from a HuBERT base teacher (s3prl's distiller).

    python train.py --config configs/distilhubert.py --workdir /ckpt/distilhubert \
        --config.distill.teacher=/models/hubert-base-ls960 \
        --config.data.train.manifest=/data/librispeech/train.tsv --config.data.valid.manifest=/data/librispeech/valid.tsv

The teacher is any HuBERT directory hubert-jax loads (a hubert-jax export, a transformers checkpoint, or
a fairseq checkpoint converted with convert_pt_to_flax.py). The student (transformers' distilhubert
layout) starts from the teacher's conv stack, projection, positional conv and first 2 layers; prediction
heads regress teacher layers 4, 8 and 12 with L1 + cosine (-log sigmoid) losses. Runner settings from
s3prl: 200k steps, batch 24, peak lr 2e-4 with 7 % linear warmup then linear decay, gradient clipping 10.
No labels are needed. `trainer.export(state, directory)` (the run's `RunResult.trainer`, or
`hubert_jax.training.run.restore_latest`) writes the student as a transformers HubertModel directory.
s3prl batches utterances of similar length; here length buckets with the budget of its 24 full crops
(hubert_jax/data/buckets.py).
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.task = "distill"
    c.model.preset = "distilhubert"
    c.model.overrides.update(dict(layerdrop=0.0, feat_proj_dropout=0.0))
    c.distill.update(dict(teacher="", pred_layers=(4, 8, 12), cosine_weight=1.0, feat_pen_weight=0.0,
                          init_from_teacher=True))
    c.data.train.labels = ()
    c.data.valid.labels = ()
    c.data.buckets = geometric(32000, 250000, 1.25)  # as configs/hubert_base_iter1.py
    c.data.max_tokens = 24 * 250000  # s3prl: 24 utterances of up to 250k samples
    c.loss.feature_grad_mult = 0.1
    c.optim.update(dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=10.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=2e-4, warmup_steps=14000, total_steps=200000, end_ratio=0.0))
    c.train.steps = 200000
    return c
