"""What the demos share: the repository's corpus and configs, the demos' base config, stage headings, the work
folder (on a disk or in a bucket)."""

from __future__ import annotations

import os
import shutil
import tempfile

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


def in_work_folder(workdir: str, job):
    """`job(folder)`'s summary, the demo run in its work folder: `workdir` itself on a disk; for a gs:// workdir, a
    local copy of what the bucket already holds, uploaded back when the job ends or stops (a rerun resumes from
    it, as from a local folder), with the paths in the summary named in the bucket."""
    from hubert_jax import storage

    if not storage.is_remote(workdir):
        return job(os.path.abspath(workdir))
    local = tempfile.mkdtemp(prefix="hubert-jax-demo-")
    try:
        if storage.listdir(workdir):
            storage.download_folder(workdir, local)
        try:
            summary = job(local)
        finally:
            storage.upload_folder(local, workdir)
            print(f"uploaded the work folder to {workdir}")
        return _renamed(summary, local, workdir.rstrip("/"))
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _renamed(value, local: str, remote: str):
    """`value` with every string path under `local` named under `remote` instead."""
    if isinstance(value, dict):
        return {k: _renamed(v, local, remote) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_renamed(v, local, remote) for v in value)
    if isinstance(value, str) and (value == local or value.startswith(local + os.sep)):
        return remote + value[len(local):].replace(os.sep, "/")
    return value
