"""XLS-R 300M (arXiv 2111.09296): wav2vec 2.0 large on 128 languages, languages sampled with probability
proportional to (hours_l / hours)^0.5.

    python train.py --config configs/xls_r_300m.py --workdir /ckpt/xls_r_300m \
        --config.data.languages.manifests='("/data/voxpopuli/en.tsv","/data/babel/sw.tsv","/data/cv/ko.tsv")' \
        --config.data.valid.manifest=/data/valid.tsv

The architecture is transformers' wav2vec2-xls-r-300m. The rest is configs/wav2vec2_large_lv60.py (fairseq's
large recipe); XLS-R's own step count, learning rate and batch were not readable where this recipe was
written: check the paper before a full run.
"""

import os

from hubert_jax.training.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), "wav2vec2_large_lv60.py"))
    c.model.preset = "wav2vec2-xls-r-300m"
    c.data.languages.alpha = 0.5
    return c
