"""The installed commands (pyproject.toml's [project.scripts]) exist and run; train's --help says what it trains
and how to see the config's fields."""

import importlib
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

COMMANDS = ("hubert-jax-train", "hubert-jax-convert", "hubert-jax-labels", "hubert-jax-export", "hubert-jax-demo")


def test_every_command_is_installed_and_names_a_function():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("hubert-jax-")}
    assert set(scripts) == set(COMMANDS)
    for value in scripts.values():
        module, function = value.split(":")
        assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "hubert-jax-train"])  # train: absl's --help, below
def test_each_command_prints_its_help(name):
    # timeouts guard against a hang, not a speed: beside a many-threaded XLA test on 2 cores, a --help that needs
    # 2.5 s of CPU took 61 s (measured), and one of 120 s ran out
    path = shutil.which(name) or shutil.which(name, path=f"{sys.prefix}/bin")
    assert path, f"{name} is not on the PATH: pip install -e . installs it"
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {name} "), done.stdout[:500]  # the usage line names the command run


def test_train_help_says_pretraining_or_fine_tuning_and_how_to_list_the_fields():
    path = shutil.which("hubert-jax-train") or f"{sys.prefix}/bin/hubert-jax-train"
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # absl's --help exits 1
    text = done.stdout
    assert "pretraining" in text and "fine-tuning" in text
    assert "python -m hubert_jax.training.config" in text
    fields = subprocess.run([sys.executable, "-m", "hubert_jax.training.config"], capture_output=True, text=True,
                            timeout=600)
    assert fields.returncode == 0 and "max_nan_in_a_row: 10" in fields.stdout and "mix:" in fields.stdout
