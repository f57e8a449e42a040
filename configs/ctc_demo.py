"""CTC fine-tuning of the demo's HuBERT on the shipped corpus (character vocabulary from data/demo/train.wrd).

    python train.py --config configs/ctc_demo.py --workdir work/demo/ctc \
        --config.model.init_from=work/demo/model          # the main demo's export
    python train.py --config configs/ctc_demo.py --workdir work/demo/ctc_scratch   # same, from scratch

Same architecture as configs/demo.py, so both runs have the same model and step budget. SpecAugment and
the frozen feature encoder as in fairseq's base_10h fine-tuning, shortened to the demo's scale. The run
exports work/demo/ctc/model: a transformers HubertForCTC directory with its vocab.json.
"""

import os

from hubert_jax.training.config import load_config, pretraining_defaults


def get_config():
    c = pretraining_defaults()
    c.task = "ctc"
    demo = load_config(os.path.join(os.path.dirname(__file__), "demo.py"))  # its architecture
    c.model.preset = demo.model.preset
    c.model.overrides = demo.model.overrides
    c.model.overrides.update(dict(mask_time_prob=0.05, mask_time_length=5, mask_feature_prob=0.0,
                                  final_dropout=0.0, layerdrop=0.0))
    c.data.train.update(dict(manifest="data/demo/train.tsv", labels=(), targets="data/demo/train.wrd"))
    c.data.valid.update(dict(manifest="data/demo/valid.tsv", labels=(), targets="data/demo/valid.wrd"))
    c.data.batch_size = 8
    c.finetune.update(dict(freeze_feature_encoder=True, freeze_encoder_steps=50))
    c.optim.update(dict(b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, clip_norm=10.0))
    c.optim.schedule.update(dict(kind="tri_stage", peak=1e-3, total_steps=500, warmup_ratio=0.1, hold_ratio=0.4,
                                 end_ratio=0.05, init_ratio=0.01))
    c.train.update(dict(steps=500, log_every=50, eval_every=250, eval_batches=4, checkpoint_every=250,
                        keep_checkpoints=1, tensorboard=False))
    c.mesh.data = -1
    return c
