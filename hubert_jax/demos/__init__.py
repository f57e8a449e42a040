"""The demos on the corpus shipped in data/demo: `python -m hubert_jax.demo` (hubert.py: HuBERT and WavLM;
wav2vec2.py: wav2vec 2.0 / XLSR) and `python -m hubert_jax.demo_ctc` (ctc.py: CTC fine-tuning after it)."""
