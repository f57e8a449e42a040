"""HuBERT masked prediction as fairseq's reference run (tests/fixtures/peer/curves/hubert.json) trains it.

    python train.py --config configs/curves_hubert.py --workdir work/curves/hubert --config.seed=0
    python benchmarks/curves.py hubert        # the same run beside fairseq's recorded curves

configs/demo.py's iteration 1 (tests/test_curves.py keeps the two equal), on the MFCC k-means labels fairseq
was given (tests/fixtures/peer/curves/labels: 50 clusters at 100 Hz, made by the demo's first stage), logged
every 25 updates and validated every 100 as fairseq's run was. Each setting with its fairseq name:
- model: 4 layers of 128 (encoder_layers, encoder_embed_dim), FFN 256, 4 heads, 7 convs of 64 channels
  (conv_feature_layers, base strides), positional conv 32 in 8 groups (conv_pos, conv_pos_groups), group-norm
  extractor (extractor_mode default), post-LN, no dropout of any kind, no layerdrop; final_dim 64,
  logit_temp 0.1, tied final_proj
- masks: mask_prob 0.8, mask_length 10, 2 spans at least; pred_masked_weight 1, pred_nomask_weight 0.5,
  feature penalty 10 (loss_weights), feature_grad_mult 0.1
- data: 8 crops of 2 s a batch (batch_size 8, max_sample_size 32000; every utterance is longer), utterances
  under 1 s dropped (min_sample_size), no normalisation
- optimisation: Adam (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 2e-3, 100 warmup updates then linear
  decay to 0 at 600 (polynomial_decay), gradient norm clipped at 10
"""

import os

from hubert_jax.training.config import pretraining_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = os.path.join(ROOT, "tests", "fixtures", "peer", "curves", "labels")


def get_config():
    c = pretraining_defaults()
    c.model.overrides.update(dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        conv_dim=(64, 64, 64, 64, 64, 64, 64), num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0))
    c.model.head.update(dict(num_classes=(50,), final_dim=64, label_rate=100.0))
    c.data.train.update(dict(manifest=os.path.join(ROOT, "data/demo/train.tsv"),
                             labels=(os.path.join(LABELS, "train.km"),)))
    c.data.valid.update(dict(manifest=os.path.join(ROOT, "data/demo/valid.tsv"),
                             labels=(os.path.join(LABELS, "valid.km"),)))
    c.data.crop_samples = 32000
    c.data.min_samples = 16000
    c.data.batch_size = 8
    c.optim.clip_norm = 10.0
    c.optim.schedule.update(dict(peak=2e-3, warmup_steps=100, total_steps=600))
    c.loss.feature_grad_mult = 0.1
    c.loss.unmasked = 0.5
    c.train.update(dict(steps=600, log_every=25, eval_every=100, eval_batches=10, checkpoint_every=200,
                        keep_checkpoints=1, tensorboard=False))
    c.mesh.data = -1
    return c
