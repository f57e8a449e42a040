"""CTC fine-tuning of HuBERT base on 10 hours (LibriLight limited), after fairseq's
examples/hubert/config/finetune/base_10h.yaml.

    python train.py --config configs/ctc_base_10h.py --workdir /ckpt/hubert_base_10h \
        --config.model.init_from=/models/hubert_base_iter2 \
        --config.data.train.manifest=/data/ll10h/train.tsv --config.data.train.targets=/data/ll10h/train.wrd \
        --config.data.valid.manifest=/data/librispeech/dev_other.tsv \
        --config.data.valid.targets=/data/librispeech/dev_other.wrd

fairseq's settings: 25k updates, Adam (0.9, 0.98, eps 1e-8), peak lr 2e-5, tri-stage with 8k warmup,
no hold and a 72k-step exponential decay to 0.05 x the peak (so the run stops a third of the way into the
decay: the schedule's total is 80k, the run's 25k), the feature encoder frozen (feature_grad_mult 0),
only the CTC head for the first 10k updates, SpecAugment time spans 0.75 / 10 and channel spans
0.5 / 64, layerdrop 0.1, activation dropout 0.1, other dropouts 0, CTC with zero_infinity.
Differences: fairseq batches by 3.2M samples per GPU on 8 GPUs (about 1,600 s of audio) and averages
the CTC loss per sentence; here a global batch of 128 whole utterances padded to the longest, and
transformers' "sum" reduction, which under Adam trains like the per-sentence average (Adam divides out
a constant scale).
"""

from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.task = "ctc"
    c.model.preset = "hubert-base"
    c.model.overrides.update(dict(
        mask_time_prob=0.75, mask_time_length=10, mask_time_min_masks=2, mask_feature_prob=0.5,
        mask_feature_length=64, layerdrop=0.1, activation_dropout=0.1, hidden_dropout=0.0, attention_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0))
    c.data.train.labels = ()
    c.data.valid.labels = ()
    c.data.batch_size = 128
    c.finetune.update(dict(freeze_feature_encoder=True, freeze_encoder_steps=10000, ctc_loss_reduction="sum"))
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, clip_norm=0.0))
    c.optim.schedule.update(dict(kind="tri_stage", peak=2e-5, total_steps=80000, warmup_ratio=0.1, hold_ratio=0.0,
                                 end_ratio=0.05, init_ratio=0.01))
    c.train.update(dict(steps=25000, log_every=200, eval_every=1000, eval_batches=20, checkpoint_every=1000))
    return c
