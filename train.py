"""Train a model (pretraining or fine-tuning, as the config's `task` says): hubert_jax/train.py.

    python train.py --config configs/demo.py --workdir work/demo [--config.a.b=value ...]
"""

from hubert_jax.train import console_main

if __name__ == "__main__":
    console_main()
