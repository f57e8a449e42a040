"""The training tasks. A task is one plug-in: a `Task` subclass (hubert_jax/training/tasks/base.py) that
registers itself under its `config.task` name with `@register_task("name")`, declares its own config sections
with their defaults (`sections`) and the metrics its console line shows (`log_keys`). The built-in ones are
the modules of this package, found and imported on first use; a task defined elsewhere registers the same way,
by being imported before the run starts.
"""

from __future__ import annotations

import importlib
import pkgutil

TASKS: dict[str, type] = {}  # config.task -> Task subclass, as registered


def register_task(name: str):
    """Class decorator: `config.task = name` trains this task."""
    def add(cls):
        if TASKS.get(name, cls) is not cls:
            raise ValueError(f"task {name!r} is registered twice: {TASKS[name].__module__}.{TASKS[name].__name__} "
                             f"and {cls.__module__}.{cls.__name__}")
        cls.name = name
        TASKS[name] = cls
        return cls
    return add


def registered() -> dict[str, type]:
    """Every task: the package's own (imported here) and any registered elsewhere."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return TASKS


def task_class(name: str):
    """The registered task class of config.task `name` (ValueError naming the known ones)."""
    tasks = registered()
    if name not in tasks:
        raise ValueError(f"config.task: unknown task {name!r} (known: {', '.join(tasks)})")
    return tasks[name]


def task_sections() -> dict[str, tuple[dict, tuple[str, ...]]]:
    """section -> (its defaults, the tasks that read it), over every registered task."""
    out: dict[str, tuple[dict, tuple[str, ...]]] = {}
    for name, cls in registered().items():
        for section, defaults in cls.config_sections().items():
            known, readers = out.get(section, (defaults, ()))
            if known != defaults:
                raise ValueError(f"config.{section}: tasks {readers[0]!r} and {name!r} declare it with different "
                                 f"defaults")
            out[section] = (known, readers + (name,))
    return out


def check_sections(cfg) -> None:
    """Refuse a config that changes a task section its task does not read, naming the fields."""
    for section, (default, readers) in task_sections().items():
        if cfg.task in readers or section not in cfg:
            continue
        given = cfg[section].to_dict()
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
