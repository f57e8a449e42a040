"""The installed commands (pyproject.toml's [project.scripts]); each is the module command of the same name.

    hubert-jax-train     python train.py                 (hubert_jax/train.py)
    hubert-jax-convert   python convert_pt_to_flax.py    (hubert_jax/convert/cli.py)
    hubert-jax-labels    python -m hubert_jax.labels     (hubert_jax/labels/cli.py)
    hubert-jax-export    python -m hubert_jax.export     (hubert_jax/export/__main__.py)
    hubert-jax-demo      python -m hubert_jax.demo       (hubert_jax/demos/; needs a clone's data/demo)
"""

from __future__ import annotations

import sys

from hubert_jax.cli_errors import run_command


def train() -> None:
    """hubert-jax-train: python train.py."""
    from hubert_jax.train import console_main

    console_main("hubert-jax-train")


def convert() -> None:
    """hubert-jax-convert: python convert_pt_to_flax.py."""
    from hubert_jax.convert.cli import main

    sys.exit(run_command("hubert-jax-convert", main))


def labels() -> None:
    """hubert-jax-labels: python -m hubert_jax.labels."""
    from hubert_jax.labels.cli import main

    sys.exit(run_command("hubert-jax-labels", main))


def export() -> None:
    """hubert-jax-export: python -m hubert_jax.export."""
    from hubert_jax.export.__main__ import main

    sys.exit(run_command("hubert-jax-export", main))


def demo() -> None:
    """hubert-jax-demo: python -m hubert_jax.demo."""
    from hubert_jax.demos.hubert import main

    sys.exit(run_command("hubert-jax-demo", lambda: main() and 0))
