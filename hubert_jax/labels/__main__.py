import sys

from hubert_jax.cli_errors import run_command
from hubert_jax.labels.cli import main

sys.exit(run_command("python -m hubert_jax.labels", main))
