"""What made a label-pipeline output: `{prefix}.made.json` beside it, written before the output itself.

Each stage records its inputs (the manifest's path and SHA-256, the model's weights digest and layer, the
features' and centroids' own records, the settings that change the numbers). A stage that resumes (`dump`
keeps the chunks and the shard already on disk) reuses an output only when its record equals what this
run would write; otherwise it refuses, naming each field that differs, so that features of another model
or layer are never taken for this run's. Stages that always recompute (`mfcc`, `kmeans`, `label`) write the
record so that the stages after them can carry it on.
"""

from __future__ import annotations

import hashlib
import json
import os

from hubert_jax import storage

SUFFIX = ".made.json"


class StaleOutput(ValueError):
    """An output on disk that another input or setting made."""


def path_of(prefix: str) -> str:
    """The provenance file of an output prefix."""
    return prefix + SUFFIX


def read(prefix: str) -> dict | None:
    """The recorded provenance of an output prefix, or None."""
    try:
        with open(path_of(prefix), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise StaleOutput(f"{path_of(prefix)}: unreadable record of what made {prefix} ({e})") from e


def write(prefix: str, made: dict) -> None:
    """Record how an output was made (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    tmp = f"{path_of(prefix)}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(made, f, indent=1, sort_keys=True)
    os.replace(tmp, path_of(prefix))


def differences(recorded: dict, wanted: dict) -> list[str]:
    """What differs between a recorded provenance and the wanted one, one line per key."""
    return [f"{k}: on disk {recorded.get(k)!r}, now {wanted.get(k)!r}" for k in sorted(set(recorded) | set(wanted))
            if recorded.get(k) != wanted.get(k)]


def claim(prefix: str, made: dict, existing: list[str]) -> None:
    """Before a resumable stage writes under `prefix`: record `made`, or check it against the record of the
    outputs already there (`existing`, the paths found). StaleOutput when they were made otherwise, or by
    a version that recorded nothing."""
    recorded = read(prefix)
    if existing and recorded is None:
        raise StaleOutput(f"{prefix}: {len(existing)} output file(s) are already there ({existing[0]}, ...) with no "
                          f"record of what made them ({path_of(prefix)}), so they cannot be reused safely: use "
                          f"another --out, or delete them to recompute")
    if recorded is not None and existing:
        diff = differences(recorded, made)
        if diff:
            raise StaleOutput(f"{prefix}: the outputs already there were made by other inputs or settings, so they "
                              f"are not reused:\n  " + "\n  ".join(diff)
                              + f"\nUse another --out, or delete {prefix}.* to recompute")
        return
    write(prefix, made)


def file_sha256(path: str) -> str:
    """A file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(model) -> str:
    """A digest of a model's weights (every parameter's digest, hubert_jax/training/integrity.py, by path)."""
    from flax import nnx

    from hubert_jax.training.integrity import array_digests

    flat = {"/".join(map(str, path)): value for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    text = json.dumps(array_digests({k: v.get_value() if hasattr(v, "get_value") else v for k, v in flat.items()}),
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
