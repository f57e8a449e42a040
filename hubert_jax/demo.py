"""`python -m hubert_jax.demo`: the end-to-end pretraining demo (hubert_jax/demos/hubert.py; `--family wav2vec2`:
hubert_jax/demos/wav2vec2.py)."""

from hubert_jax.demos.hubert import main

if __name__ == "__main__":
    main()
