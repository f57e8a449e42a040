"""wav2vec 2.0 contrastive pretraining as fairseq's reference run (tests/fixtures/peer/curves/wav2vec2.json) trains it.

    python train.py --config configs/curves_wav2vec2.py --workdir work/curves/wav2vec2 --config.seed=0
    python benchmarks/curves.py wav2vec2      # the same run beside fairseq's recorded curves

The wav2vec 2.0 demo's run (hubert_jax/demos/wav2vec2.py; tests/test_curves.py keeps the two equal) on the
whole train split instead of its two-language sampler, which fairseq's audio_pretraining task does not have;
logged every 25 updates and validated every 100 as fairseq's run was. Each setting with its fairseq name:
- model: configs/demo.py's sizes (4 x 128, FFN 256, 4 heads, 7 convs of 64, positional conv 32 in 8 groups),
  group-norm extractor, post-LN, no dropout, no layerdrop; final_dim 64, latent_dim 64
- quantizer: 2 groups of 8 codewords (latent_groups, latent_vars), Gumbel temperature 2 -> 0.5 by x0.998 per
  update (latent_temp). With the recipes' 320, or 64, codewords a group fairseq itself stays at chance for
  all 600 updates on this corpus; with 8 it leaves chance after 250 to 350 (README, "Learning as fairseq
  learns")
- objective: 100 distractors from the utterance's masked frames (num_negatives), logit_temp 0.1, loss_weights
  [0.1, 10] (diversity, feature penalty), feature_grad_mult 0.1; masks 0.65 x 10, 2 spans at least
- data and optimisation: as configs/curves_hubert.py (8 crops of 2 s, Adam (0.9, 0.98) eps 1e-6 wd 0.01,
  lr 2e-3 with 100 warmup updates and linear decay to 0 at 600, clipping at 10)
"""

import os

from hubert_jax.training.config import pretraining_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    c = pretraining_defaults()
    c.task = "wav2vec2"
    c.model.preset = "wav2vec2-base"
    c.model.overrides.update(dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        conv_dim=(64, 64, 64, 64, 64, 64, 64), num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.65, mask_time_length=10, num_codevector_groups=2, num_codevectors_per_group=8,
        codevector_dim=64, proj_codevector_dim=64, num_negatives=100, contrastive_logits_temperature=0.1,
        diversity_loss_weight=0.1))
    c.model.head.update(dict(num_classes=(50,), final_dim=64, label_rate=100.0))  # unused by this task
    c.data.train.update(dict(manifest=os.path.join(ROOT, "data/demo/train.tsv"), labels=()))
    c.data.valid.update(dict(manifest=os.path.join(ROOT, "data/demo/valid.tsv"), labels=()))
    c.data.crop_samples = 32000
    c.data.min_samples = 16000
    c.data.batch_size = 8
    c.masking.update(dict(mask_prob=0.65, mask_length=10, min_masks=2))
    c.loss.update(dict(features_pen=10.0, feature_grad_mult=0.1, unmasked=0.0))
    c.wav2vec2.gumbel = (2.0, 0.5, 0.998)
    c.optim.clip_norm = 10.0
    c.optim.schedule.update(dict(peak=2e-3, warmup_steps=100, total_steps=600))
    c.train.update(dict(steps=600, log_every=25, eval_every=100, eval_batches=10, checkpoint_every=200,
                        keep_checkpoints=1, tensorboard=False))
    c.mesh.data = -1
    return c
