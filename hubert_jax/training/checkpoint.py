"""Orbax checkpoints of a training run: the train state, the Grain iterator's position and the run's config.

`{workdir}/checkpoints/{step}/` holds three items:
  - `state`: the train state flattened to `{path: array}` (string keys, so nothing depends on how a
    pytree spells its keys), saved asynchronously;
  - `data`: the Grain iterator state;
  - `config`: the run's config as JSON, so a workdir refuses a config it cannot resume.
Orbax writes each step into a temporary folder and renames it when complete, so a crash during a save
leaves the earlier checkpoints as they were, and an unfinished one is never picked up.
"""

from __future__ import annotations

import json
import logging
import os

import jax

logger = logging.getLogger(__name__)


def flatten(tree) -> dict:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def unflatten(template, flat: dict):
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


# config sections that decide the shapes and meaning of the saved state
_MODEL_KEYS = ("model.preset", "model.overrides", "model.head", "model.param_dtype", "model.scan_layers")


def _select(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def config_differences(saved: dict, current: dict) -> list[str]:
    """What differs between two run configs in the sections that change the saved state."""
    out = []
    for key in _MODEL_KEYS:
        a, b = _select(saved, key), _select(current, key)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{key}.{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}")
        elif a != b:
            out.append(f"{key}: checkpoint has {a!r}, config has {b!r}")
    return out


class Checkpoints:
    def __init__(self, workdir: str, *, every: int, keep: int, config_json: str, async_save: bool = True):
        import orbax.checkpoint as ocp

        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.config_json = config_json
        options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        import grain.checkpoint

        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config"),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether save(step) will write a checkpoint without being forced."""
        return self.manager.should_save(step)

    def save(self, step: int, state, iterator, *, force: bool = False) -> bool:
        import grain.checkpoint
        import orbax.checkpoint as ocp

        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flatten(state)), data=grain.checkpoint.CheckpointSave(iterator),
            config=ocp.args.JsonSave(json.loads(self.config_json))), force=force)

    def restore(self, step: int, abstract_state, shardings, iterator=None):
        """The state at `step` on the given shardings, with the iterator (if given) moved to where it was.
        Refuses a checkpoint whose config differs in the model, or whose arrays do not match this run's."""
        import grain.checkpoint
        import orbax.checkpoint as ocp

        where = os.path.join(self.directory, str(step))
        saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        differences = config_differences(saved_config, json.loads(self.config_json))
        if differences:
            raise ValueError(f"{where}: this checkpoint was written by an incompatible config, refusing to resume "
                             f"(use a new --workdir, or --config.model.init_from to start from its weights):\n  "
                             + "\n  ".join(differences))
        saved = self.manager.item_metadata(step)["state"]
        wanted = flatten(abstract_state)
        problems = [f"{k}: missing" for k in wanted if k not in saved]
        problems += [f"{k}: saved {tuple(saved[k].shape)}, expected {tuple(v.shape)}" for k, v in wanted.items()
                     if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
        problems += [f"{k}: not in this run's state" for k in saved if k not in wanted]
        if problems:
            raise ValueError(f"{where}: the saved state does not match this run's ({len(problems)} arrays):\n  "
                             + "\n  ".join(problems[:20]))
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)
                  for (k, v), s in zip(wanted.items(), flatten(shardings).values())}
        items = dict(state=ocp.args.StandardRestore(target))
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return unflatten(abstract_state, restored["state"])

    def reached_preemption(self, step: int) -> bool:
        """Whether the hosts of a multi-host run agreed to stop at `step` for a preemption (JAX's
        preemption sync point; False when jax.distributed is not running)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
