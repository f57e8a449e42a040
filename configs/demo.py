"""The demo: a tiny HuBERT on the shipped corpus (data/demo), iteration 1 on MFCC k-means labels.

    python train.py --config configs/demo.py --workdir work/demo/iter1 \
        --config.data.train.labels='("work/demo/labels/train.km",)' \
        --config.data.valid.labels='("work/demo/labels/valid.km",)'

`python -m hubert_jax.demo` runs the whole recipe (labels, iteration 1, features, k-means, iteration 2,
export) with this config; it writes the label files named above.
"""

from hubert_jax.training.config import pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.model.overrides.update(dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        conv_dim=(64, 64, 64, 64, 64, 64, 64), num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0))
    c.model.head.update(dict(num_classes=(50,), final_dim=64, label_rate=100.0))
    c.data.train.update(dict(manifest="data/demo/train.tsv", labels=("work/demo/labels/train.km",)))
    c.data.valid.update(dict(manifest="data/demo/valid.tsv", labels=("work/demo/labels/valid.km",)))
    c.data.crop_samples = 32000  # 2 s
    c.data.min_samples = 16000
    c.data.batch_size = 8
    c.optim.clip_norm = 10.0
    c.optim.schedule.update(dict(peak=2e-3, warmup_steps=100, total_steps=600))
    c.loss.feature_grad_mult = 0.1
    # fairseq's pred_nomask_weight. The recipes predict masked frames only; on 10 minutes of audio and a
    # few hundred CPU steps, masked-only training barely leaves chance (4.5% masked accuracy after 300 steps
    # against 21.5% with this term, 50 clusters), so the demo also scores the unmasked frames
    c.loss.unmasked = 0.5
    c.train.update(dict(steps=600, log_every=50, eval_every=200, eval_batches=10, checkpoint_every=200,
                        keep_checkpoints=2))
    c.mesh.data = -1
    return c
