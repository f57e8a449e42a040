"""fairseq wav2vec 2.0 large (LibriVox / Libri-Light 60k h): contrastive pretraining, 1M updates.

    python train.py --config configs/wav2vec2_large_lv60.py --workdir /ckpt/wav2vec2_large_lv60 \
        --config.data.train.manifest=/data/librilight/train.tsv \
        --config.data.valid.manifest=/data/librilight/valid.tsv

fairseq examples/wav2vec/config/pretraining/wav2vec2_large_librivox.yaml: 128 GPUs x 1.2M samples per GPU,
crops of 32k to 320k samples, normalised waveforms; Adam (0.9, 0.98) eps 1e-6 wd 0.01, lr 5e-3 (as the
yaml gives it), 32k warmup, polynomial decay, 1M updates; loss weights diversity 0.1, feature penalty 0;
final_dim 768; feature_grad_mult 1.0; no dropout or layerdrop; pre-LN, layer-norm extractor, conv bias;
Gumbel (2, 0.1, 0.999995).
"""

from hubert_jax.data.buckets import geometric
from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.task = "wav2vec2"
    c.model.preset = "wav2vec2-large"
    c.model.overrides.update(dict(
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, layerdrop=0.0, mask_time_prob=0.65, mask_time_length=10,
        num_codevector_groups=2, num_codevectors_per_group=320, codevector_dim=768, proj_codevector_dim=768,
        num_negatives=100, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1))
    c.data.train.labels = c.data.valid.labels = ()
    c.data.normalize = True
    c.data.crop_samples, c.data.min_samples = 320000, 32000
    c.data.buckets = geometric(32000, 320000, 1.25)
    c.data.max_tokens = 128 * 1_200_000  # fairseq: 1.2M samples per GPU on 128 GPUs
    c.masking.update(dict(mask_prob=0.65, mask_length=10, min_masks=2))
    c.loss.update(dict(features_pen=0.0, feature_grad_mult=1.0))
    c.wav2vec2.gumbel = (2.0, 0.1, 0.999995)
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=0.0))
    c.optim.schedule.update(dict(kind="polynomial", peak=5e-3, warmup_steps=32000, total_steps=1_000_000,
                                 end_ratio=0.0))
    c.train.steps = 1_000_000
    return c
