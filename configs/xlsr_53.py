"""XLSR-53 (arXiv 2006.13979): wav2vec 2.0 large pretrained on 53 languages, each language's manifest drawn
with probability proportional to (hours_l / hours)^0.5.

    python train.py --config configs/xlsr_53.py --workdir /ckpt/xlsr_53 \
        --config.data.languages.manifests='("/data/mls/en.tsv","/data/mls/fr.tsv","/data/cv/ky.tsv")' \
        --config.data.valid.manifest=/data/valid.tsv

The architecture is transformers' wav2vec2-large-xlsr-53 (pre-LN large, layer-norm extractor). The rest is
configs/wav2vec2_large_lv60.py (fairseq's large recipe); XLSR's own step count, learning rate and batch were
not readable where this recipe was written: check the paper before a full run.
"""

import os

from hubert_jax.training.config import load_config


def get_config():
    c = load_config(os.path.join(os.path.dirname(__file__), "wav2vec2_large_lv60.py"))
    c.model.preset = "wav2vec2-xlsr-53"
    c.data.languages.alpha = 0.5
    return c
