"""fairseq wav2vec 2.0 base (LibriSpeech 960 h): contrastive pretraining, 400k updates.

    python train.py --config configs/wav2vec2_base.py --workdir /ckpt/wav2vec2_base \
        --config.data.train.manifest=/data/librispeech/train.tsv \
        --config.data.valid.manifest=/data/librispeech/valid.tsv

fairseq examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml: 64 GPUs x 1.4M samples per GPU,
crops of 32k to 250k samples, Adam (0.9, 0.98) eps 1e-6 wd 0.01, lr 5e-4, 32k warmup, polynomial decay,
400k updates; loss weights diversity 0.1, feature penalty 10; final_dim 256; feature_grad_mult 0.1;
layerdrop 0.05; input and feature dropout 0.1; masks 0.65 x 10; 2 x 320 codewords; Gumbel (2, 0.5,
0.999995); 100 distractors from the same utterance; logit temperature 0.1. No labels.
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.task = "wav2vec2"
    c.model.preset = "wav2vec2-base"
    c.model.overrides.update(dict(
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1,
        feat_quantizer_dropout=0.1, layerdrop=0.05, mask_time_prob=0.65, mask_time_length=10,
        num_codevector_groups=2, num_codevectors_per_group=320, codevector_dim=256, proj_codevector_dim=256,
        num_negatives=100, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1))
    c.data.train.labels = c.data.valid.labels = ()
    c.data.buckets = geometric(32000, 250000, 1.25)
    c.data.max_tokens = 64 * 1_400_000  # fairseq: 1.4M samples per GPU on 64 GPUs
    c.masking.update(dict(mask_prob=0.65, mask_length=10, min_masks=2))
    c.loss.update(dict(features_pen=10.0, feature_grad_mult=0.1))
    c.wav2vec2.gumbel = (2.0, 0.5, 0.999995)
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=0.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=5e-4, warmup_steps=32000, total_steps=400000, end_ratio=0.0))
    c.train.steps = 400000
    return c
