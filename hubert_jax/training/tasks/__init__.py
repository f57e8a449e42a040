"""The training tasks, one module each, found by `config.task`. Adding one: its module (a `Task` subclass,
hubert_jax/training/tasks/base.py), a line here, and its config section."""

from __future__ import annotations

import importlib

# config.task -> "module:class" under hubert_jax.training.tasks (imported when used)
TASKS = {
    "hubert": "hubert:HubertTask",  # HuBERT masked prediction
    "wavlm": "wavlm:WavLMTask",  # WavLM: masked prediction of utterance-mixed speech
    "wav2vec2": "wav2vec2:Wav2Vec2Task",  # wav2vec 2.0 / XLSR contrastive pretraining
    "distill": "distill:DistillTask",  # DistilHuBERT
    "ctc": "ctc:CTCTask",  # fine-tuning: speech recognition
    "classify": "classify:ClassifyTask",  # fine-tuning: one label per utterance
    "frames": "frames:FramesTask",  # fine-tuning: frame labels
}


def task_class(name: str):
    if name not in TASKS:
        raise ValueError(f"config.task: unknown task {name!r} (known: {', '.join(TASKS)})")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(f"hubert_jax.training.tasks.{module}"), cls)


# config sections that only some tasks read: set under another task, they would be ignored without a word
SECTIONS = {"mix": ("wavlm",), "wav2vec2": ("wav2vec2",), "distill": ("distill",)}


def check_sections(cfg) -> None:
    """Refuse a config that changes a section its task does not read, naming the fields."""
    from hubert_jax.training.config import pretraining_defaults

    defaults = pretraining_defaults()
    for section, readers in SECTIONS.items():
        if cfg.task in readers or section not in cfg or section not in defaults:
            continue
        given, default = cfg[section].to_dict(), defaults[section].to_dict()
        changed = [k for k in sorted(set(given) | set(default)) if _plain(given.get(k)) != _plain(default.get(k))]
        if changed:
            raise ValueError(f"config.{section} ({', '.join(f'{section}.{k}' for k in changed)}) is set, but "
                             f"config.task={cfg.task!r} does not read it (only {', '.join(readers)} does): remove "
                             f"it, or pick that task")


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def make_task(cfg, **kw):
    """The task of `config.task`; `kw` go to its constructor (e.g. a fine-tuning task's meta)."""
    cls = task_class(cfg.task)
    check_sections(cfg)
    return cls(cfg, **kw)


def make_trainer(cfg, mesh, **kw):
    """A Trainer of `config.task`'s task on `mesh`."""
    from hubert_jax.training.trainer import Trainer

    return Trainer(make_task(cfg, **kw), mesh)
