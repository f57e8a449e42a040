"""What the demos share: the repository's corpus and configs, the demos' base config, stage headings."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
DATA = os.path.join(ROOT, "data", "demo")
CONFIGS = os.path.join(ROOT, "configs")


def say(text: str) -> None:
    """A stage's heading."""
    print(f"\n=== {text}", flush=True)


def repo_config(name: str):
    """configs/{name}.py of the repository."""
    from hubert_jax.training.config import load_config

    return load_config(os.path.join(CONFIGS, f"{name}.py"))


def demo_config(family: str = "hubert", *, mix: bool = True):
    """configs/demo.py; for WavLM the same sizes on a WavLM encoder, trained as `task="wavlm"` (with the
    recipe's utterance mixing, or none)."""
    c = repo_config("demo")
    if family == "wavlm":
        c.task = "wavlm"
        c.model.preset = "wavlm-base-plus"
        if not mix:
            c.mix.prob = 0.0
    return c
