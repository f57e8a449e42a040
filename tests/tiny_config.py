"""A seconds-fast pretraining config for the tests: configs/demo.py shrunk, the demo corpus' frame-level
phone ids standing in for k-means labels (100 Hz)."""

import os

from hubert_jax.training.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)


def shrink(c, *, steps=12):
    """Any recipe config made tiny: small model, short crops, small batch, few steps, demo data."""
    c.model.overrides.update(TINY_MODEL)
    c.model.head.final_dim = 16
    c.model.scan_layers = False
    c.model.remat_policy = "none"
    c.data.train.update(dict(manifest=os.path.join(ROOT, "data/demo/train.tsv"),
                             labels=(os.path.join(ROOT, "data/demo/train.phn"),)))
    c.data.valid.update(dict(manifest=os.path.join(ROOT, "data/demo/valid.tsv"),
                             labels=(os.path.join(ROOT, "data/demo/valid.phn"),)))
    c.data.crop_samples = 8000
    c.data.min_samples = 8000
    c.data.batch_size = 8
    if c.data.buckets:  # a recipe's buckets, at the demo corpus' scale (its utterances are 2.2-4.5 s)
        c.data.buckets, c.data.max_tokens = (16000, 32000), 8 * 32000
    c.data.num_threads = 1
    c.train.update(dict(steps=steps, log_every=1, eval_every=6, eval_batches=2, checkpoint_every=3,
                        keep_checkpoints=2, tensorboard=False))
    c.optim.schedule.update(dict(warmup_steps=3, total_steps=max(steps, 4)))
    return c


def get_config():
    c = shrink(load_config(os.path.join(ROOT, "configs", "demo.py")))
    c.model.overrides.update(dict(hidden_dropout=0.1, layerdrop=0.1))  # exercise the dropout keys
    c.model.head.num_classes = (92,)  # the demo corpus' phone inventory
    return c
