"""`python -m hubert_jax.demo_ctc`: CTC fine-tuning after the main demo (hubert_jax/demos/ctc.py)."""

from hubert_jax.demos.ctc import main

if __name__ == "__main__":
    main()
