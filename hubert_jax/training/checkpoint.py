"""Orbax checkpoints of a training run: the train state, the Grain iterator's position, the run's config,
and digests that prove the first two intact.

`{workdir}/checkpoints/{step}/` holds four items:
  - `state`: the train state flattened to `{path: array}` (string keys, so nothing depends on how a
    pytree spells its keys), saved asynchronously;
  - `data`: the Grain iterator state (one file per host);
  - `config`: the run's config as JSON, so a workdir refuses a config it cannot resume;
  - `integrity`: a digest of every array (computed on the devices, hubert_jax/training/integrity.py) and
    of each host's iterator state.
Orbax writes each step into a temporary folder and renames it when complete, so a crash during a save
leaves the earlier checkpoints as they were, and an unfinished one is never picked up.

Restoring verifies the digests. A step that cannot be read or does not verify is reported by path and
step, moved to `{workdir}/checkpoints.damaged/` (kept for inspection, never deleted) and the run falls
back to the newest step that verifies. A step written before digests existed restores with a warning.
`keep` counts the newest steps; the step a run resumed from (the last one known to verify) is never
deleted by it, and old steps go only once a newer save has completed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time

import jax
import numpy as np

from hubert_jax import storage
from hubert_jax.distributed import all_hosts_agree, sync
from hubert_jax.training import integrity

logger = logging.getLogger(__name__)


def flatten(tree) -> dict:
    """A pytree as {key path string: leaf}."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def unflatten(template, flat: dict):
    """The inverse of flatten on `template`'s structure."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


# config sections that decide the shapes and meaning of the saved state
_MODEL_KEYS = ("model.preset", "model.overrides", "model.head", "model.param_dtype", "model.scan_layers")


def _select(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


# config fields that decide which batches the saved data iterator goes on to read
_BATCH_PLAN_KEYS = ("data.batch_size", "data.max_tokens", "data.buckets", "data.crop_samples", "data.min_samples")


def config_differences(saved: dict, current: dict, keys: tuple[str, ...] = _MODEL_KEYS) -> list[str]:
    """What differs between two run configs in `keys` (by default the sections that change the saved state)."""
    out = []
    for key in keys:
        a, b = _select(saved, key), _select(current, key)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{key}.{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}")
        elif a != b:
            out.append(f"{key}: checkpoint has {a!r}, config has {b!r}")
    return out


class IncompatibleCheckpoint(ValueError):
    """A checkpoint this run's config cannot resume (a user's choice, never a reason to fall back)."""


class CheckpointDamaged(RuntimeError):
    """A checkpoint step that cannot be read, or whose contents differ from its digests."""


class DiskFull(RuntimeError):
    """A save that does not fit on the workdir's filesystem."""


def is_disk_full(error: BaseException) -> bool:
    """Whether an error, or one it was raised from, is ENOSPC (from Python or from tensorstore's C++)."""
    if isinstance(error, DiskFull):
        return True
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _host_digests(digest: str) -> list[str]:
    """Every host's iterator digest (first 64 bits), in process order."""
    if jax.process_count() == 1:
        return [digest[:16]]
    from jax.experimental import multihost_utils

    words = np.frombuffer(bytes.fromhex(digest[:16]), np.uint32)
    gathered = np.asarray(multihost_utils.process_allgather(words)).reshape(-1, 2)
    return [row.astype(np.uint32).tobytes().hex() for row in gathered]


class _QuietDiskFull(logging.Filter):
    """Drops the log records of a save that hit ENOSPC, Orbax's (one per writer thread, each with its
    traceback) and asyncio's (its futures' "exception was never retrieved", at exit): the run reports
    the full disk once, in one line (DiskFull)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and is_disk_full(error)) and "No space left on device" not in record.getMessage()


_QUIET = _QuietDiskFull()


def quiet_disk_full_logs() -> None:
    """Install the filter on Orbax's (absl) and asyncio's loggers; Checkpoints does, once (importing this
    module changes no logging)."""
    for name in ("absl", "asyncio"):
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)


def quiet_closed_loop_callbacks() -> None:
    """Drop the `RuntimeError: Event loop is closed` that tensorstore's writer threads raise, as
    unraisable exceptions, when they finish after Orbax gave up on a failed save (each would print a
    traceback ahead of the run's one-line error). Every other unraisable exception is printed as before."""
    import sys

    previous = sys.unraisablehook

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook


# Orbax splits every replicated array among its replicas to write it in parallel, with a compiled slice for each
# shape (112 slices, 3-5 s of a tiny model's first save on 8 CPU devices). Below this many bytes per replica the
# parallel write gains nothing: those arrays are written whole by their first replica. The files are the same.
MIN_SLICE_BYTES = 1 << 20


_registered = []


def whole_small_arrays() -> None:
    """Register Orbax's jax.Array handler with `MIN_SLICE_BYTES` as its replica-parallel threshold (once per
    process, without Orbax's console warning that a handler is replaced)."""
    if _registered:
        return
    import jax
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES),
            override=True)
    finally:
        absl.setLevel(level)
    _registered.append(True)


def _short(error: BaseException) -> str:
    """An orbax/tensorstore error without the kilobytes of tensorstore spec it carries."""
    text = str(error).split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {text[:600]}"


class Checkpoints:
    """A run's checkpoints in {workdir}/checkpoints (Orbax): the train state, the data iterator, config.json, the
    metrics and a digest of every array; saved asynchronously every `every` steps, `keep` kept, restored from
    the newest step that verifies."""
    def __init__(self, workdir: str, *, every: int, keep: int, config_json: str, async_save: bool = True,
                 before_write=None):
        """`before_write()` runs before each save (the workdir lock's check: it raises if the run lost it)."""
        import orbax.checkpoint as ocp

        quiet_disk_full_logs()
        whole_small_arrays()
        self.workdir = storage.absolute(workdir)
        self.directory = storage.join(self.workdir, "checkpoints")
        self.damaged_directory = storage.join(self.workdir, "checkpoints.damaged")
        self.remote = storage.is_remote(self.workdir)  # a bucket: no disk to fill, no rename (Orbax commits by file)
        storage.prepare_for_orbax(self.directory)
        self.config_json = config_json
        self.keep = keep
        self.protected: int | None = None  # the newest step known to verify: never deleted by `keep`
        self.before_write = before_write
        options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=None, create=True,
                                               enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        import grain.checkpoint

        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config", "integrity"),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(), "integrity": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether save(step) will write a checkpoint without being forced."""
        return self.manager.should_save(step)

    # ------------------------------------------------------------------ saving
    def space_needed(self, state=None) -> int:
        """Bytes a checkpoint of `state` needs: what the newest finished step takes on disk, with 10% to
        spare (Orbax compresses: 0.31 x the arrays' bytes for the base recipe's fresh state), or, before
        the first save, the arrays' bytes (none without a state); 1 MiB more for the metadata."""
        newest = self._size_on_disk(self.manager.latest_step())
        return int(1.1 * (newest or (array_bytes(state) if state is not None else 0)) + (1 << 20))

    def _unfinished(self) -> list[str]:
        """Orbax's temporary folders of saves that did not finish (on a local disk: a bucket has no space to run out
        of, and Orbax ignores, then removes, a step there that has no commit_success.txt)."""
        if self.remote or not os.path.isdir(self.directory):
            return []
        return [name for name in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in name]

    def failed_for_space(self, state=None) -> bool:
        """Whether a save was left unfinished while the disk has less free space than a checkpoint needs
        (a failed write's follow-on errors need not say ENOSPC)."""
        return bool(self._unfinished()) and shutil.disk_usage(self.directory).free < self.space_needed(state)

    def _check_space(self, step: int, flat: dict) -> None:
        if self.remote:
            return
        needed = self.space_needed(flat)
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise DiskFull(disk_full_message(self, step, needed, free))

    def _size_on_disk(self, step: int | None) -> int:
        if step is None:
            return 0
        total = 0
        for root, _, files in os.walk(os.path.join(self.directory, str(step))):
            total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
        return total

    def _prune(self) -> None:
        """Delete the steps beyond the newest `keep`, except the protected one (only finished steps)."""
        steps = sorted(self.manager.all_steps())
        for step in steps[:-self.keep] if self.keep > 0 else []:
            if step != self.protected:
                self.manager.delete(step)

    def save(self, step: int, state, iterator, *, force: bool = False) -> bool:
        """Save `step` if it is due (or `force`): the state, the iterator's position and the digests. Returns whether
        a save started."""
        import grain.checkpoint
        import orbax.checkpoint as ocp

        if not (force or self.manager.should_save(step)):
            return False
        flat = flatten(state)
        self.manager.wait_until_finished()  # the previous save (orbax would wait for it too)

        def may_write():  # on process 0; every host learns its answer, so that all stop together
            if self.before_write is not None:
                self.before_write()
            self._check_space(step, flat)

        error = None
        if jax.process_index() == 0:
            try:
                may_write()
            except Exception as e:
                error = e
        if not all_hosts_agree(error is None):
            raise error or RuntimeError(f"checkpoint step {step}: process 0 refused to save (its log says why)")
        self._prune()
        record = {"format": 1, "step": step, "arrays": integrity.array_digests(flat),
                  "data": _host_digests(integrity.iterator_digest(iterator.get_state()))}
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat), data=grain.checkpoint.CheckpointSave(iterator),
            config=ocp.args.JsonSave(json.loads(self.config_json)), integrity=ocp.args.JsonSave(record)),
            force=True)

    # ------------------------------------------------------------------ restoring
    def restore(self, step: int, abstract_state, shardings, iterator=None):
        """The state at `step` on the given shardings, with the iterator (if given) moved to where it was,
        verified against the step's digests. IncompatibleCheckpoint: the config differs in the model, or
        the arrays do not match this run's; CheckpointDamaged: the step cannot be read or does not verify."""
        import grain.checkpoint
        import orbax.checkpoint as ocp

        where = storage.join(self.directory, str(step))
        try:
            saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as e:
            raise CheckpointDamaged(f"{where}: its config cannot be read ({_short(e)})") from e
        differences = config_differences(saved_config, json.loads(self.config_json))
        if differences:
            raise IncompatibleCheckpoint(
                f"{where}: this checkpoint was written by an incompatible config, refusing to resume "
                f"(use a new --workdir, or --config.model.init_from to start from its weights):\n  "
                + "\n  ".join(differences))
        plan = config_differences(saved_config, json.loads(self.config_json), _BATCH_PLAN_KEYS)
        if plan and _select(json.loads(self.config_json), "train.allow_new_batch_plan") is not True:
            raise IncompatibleCheckpoint(
                f"{where}: the batch plan differs from the run this workdir holds, so the resumed run would not be "
                f"the run it continues:\n  " + "\n  ".join(plan) + "\nRestore those settings, or resume under the "
                "new plan with --config.train.allow_new_batch_plan=True (its batches then differ from an "
                "uninterrupted run's)")
        if plan:
            logger.warning("%s: resuming under a new batch plan (config.train.allow_new_batch_plan): %s", where,
                           "; ".join(plan))
        try:
            saved = self.manager.item_metadata(step)["state"]
            if saved is None:
                raise ValueError("no metadata")
        except Exception as e:
            raise CheckpointDamaged(f"{where}/state: the state metadata is missing or unreadable "
                                    f"({_short(e)})") from e
        wanted = flatten(abstract_state)
        problems = [f"{k}: missing" for k in wanted if k not in saved]
        problems += [f"{k}: saved {tuple(saved[k].shape)}, expected {tuple(v.shape)}" for k, v in wanted.items()
                     if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
        problems += [f"{k}: not in this run's state" for k in saved if k not in wanted]
        if problems:
            raise IncompatibleCheckpoint(f"{where}: the saved state does not match this run's ({len(problems)} "
                                         f"arrays):\n  " + "\n  ".join(problems[:20]))
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)
                  for (k, v), s in zip(wanted.items(), flatten(shardings).values())}
        items = dict(state=ocp.args.StandardRestore(target))
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        has_digests = storage.isdir(storage.join(where, "integrity"))
        if not has_digests:
            digested = self.steps_with_digests()
            if digested:  # its siblings were written with digests: so was it, and the folder was lost
                raise CheckpointDamaged(f"{where}: its integrity/ folder (the digests it was saved with) is "
                                        f"missing, though step(s) {', '.join(map(str, digested[:5]))} of this "
                                        f"run carry theirs, so it cannot be verified")
        if has_digests:
            items["integrity"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise CheckpointDamaged(f"{where}: cannot be read ({_short(e)})") from e
        if not has_digests:
            logger.warning("%s: written before checkpoints carried digests; restored without verifying it", where)
            return unflatten(abstract_state, restored["state"])
        record = restored["integrity"]
        bad = integrity.differing(record.get("arrays", {}), integrity.array_digests(restored["state"]))
        if bad:
            raise CheckpointDamaged(f"{where}: {len(bad)} arrays differ from the digests saved with them "
                                    f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})")
        if iterator is not None:
            digests = record.get("data", [])
            if len(digests) == jax.process_count():
                if digests[jax.process_index()] != integrity.iterator_digest(iterator.get_state())[:16]:
                    raise CheckpointDamaged(f"{where}/data: the data iterator's state differs from its digest "
                                            f"(host {jax.process_index()})")
        return unflatten(abstract_state, restored["state"])

    def steps_with_digests(self) -> list[int]:
        """The steps (damaged ones set aside included) saved with their digests: in a run that has any,
        a step without digests lost them, and only a run none of whose steps has digests (written before
        checkpoints carried them) is restored unverified."""
        found = []
        for directory in (self.directory, self.damaged_directory):
            found += [int(name.split("-")[0]) for name in storage.listdir(directory)
                      if name.split("-")[0].isdigit() and storage.isdir(storage.join(directory, name, "integrity"))]
        return sorted(set(found))

    def restore_newest(self, abstract_state, shardings, iterator=None, *,
                       move_damaged: bool = True) -> tuple[int | None, object]:
        """(step, state) of the newest step that verifies, or (None, None) in a workdir without one.
        Damaged newer steps are logged and (with move_damaged) moved to checkpoints.damaged/; when no step
        verifies, nothing is moved and CheckpointDamaged lists them all."""
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            error = None
            try:
                state = self.restore(step, abstract_state, shardings, iterator)
            except CheckpointDamaged as e:
                error = str(e)
            if not all_hosts_agree(error is None):
                damaged.append((step, error or "damaged on another host (see its log)"))
                logger.error("checkpoint step %d is damaged: %s", step, damaged[-1][1])
                continue
            for bad, _ in damaged if move_damaged else ():
                self.quarantine(bad)
            if damaged and move_damaged:
                logger.warning("resuming from step %d, the newest checkpoint that verifies; damaged steps %s were "
                               "moved to %s for inspection", step, ", ".join(str(b) for b, _ in damaged),
                               self.damaged_directory)
            self.protected = step
            return step, state
        if damaged:
            raise CheckpointDamaged(f"{self.directory}: no checkpoint verifies, so none is resumed and nothing was "
                                    f"moved:\n  " + "\n  ".join(f"step {s}: {why}" for s, why in damaged)
                                    + "\nMove them away (or use a new --workdir) to start over.")
        return None, None

    def quarantine(self, step: int) -> str:
        """Move a damaged step out of the checkpoints (orbax no longer sees it) into checkpoints.damaged/."""
        source = storage.join(self.directory, str(step))
        target = storage.join(self.damaged_directory, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0:  # in a bucket Orbax stops listing the step once its commit file is gone
            storage.move_folder(source, target, first="commit_success.txt")
        sync(f"quarantine {step}")
        storage.refresh_orbax_view(self.directory)
        self.manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        """Whether the hosts of a multi-host run agreed to stop at `step` for a preemption (JAX's
        preemption sync point; False when jax.distributed is not running)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Block until the pending asynchronous save is written."""
        self.manager.wait_until_finished()

    def finish(self) -> None:
        """Wait for the last save, then apply `keep` to it."""
        self.manager.wait_until_finished()
        self._prune()

    def close(self) -> None:
        """Finish pending saves and close the manager."""
        self.manager.close()

    def remove_unfinished(self) -> list[str]:
        """Remove orbax's temporary folders of unfinished saves (after a failed save; never a finished step)."""
        removed = self._unfinished() if jax.process_index() == 0 else []
        for name in removed:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return removed


def array_bytes(state) -> int:
    """The bytes of a state's arrays (a pytree, or a flat dict of them)."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in flatten(state).values())


def disk_full_message(checkpoints: Checkpoints, step: int, needed: int | None, free: int | None = None) -> str:
    """The one-line explanation of a save that ran out of space: what it needed, what is free, and which checkpoints
    are intact."""
    free = shutil.disk_usage(checkpoints.directory).free if free is None else free
    latest = [s for s in checkpoints.manager.all_steps() if s != step]
    return (f"no space left on device for checkpoint step {step} in {checkpoints.directory}: it needs about "
            f"{(needed or 0) / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free. "
            + (f"The checkpoints already there are intact (newest: step {max(latest)}); " if latest else
               "No checkpoint of this run was saved yet; ")
            + "free space or move the workdir, then run the same command to resume.")
