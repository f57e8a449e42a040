"""PyTorch (transformers) <-> hubert-jax weights. See `python convert_pt_to_flax.py --help`."""

import sys

from hubert_jax.convert.cli import main

if __name__ == "__main__":
    from hubert_jax.cli_errors import run_command

    sys.exit(run_command("convert_pt_to_flax.py", main))
