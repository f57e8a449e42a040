"""The pretraining run: mesh, input pipeline, state (fresh, resumed or initialised from a model), the loop
with logging, validation, checkpoints, preemption and non-finite-step handling."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time

import jax
import numpy as np

from hubert_jax.data.pipeline import DataConfig, bucket_batch_sizes, make_dataset, make_iterator
from hubert_jax.lengths import SAMPLE_RATE
from hubert_jax.sharding import mesh_from_config
from hubert_jax.training.checkpoint import Checkpoints, DiskFull, disk_full_message, is_disk_full
from hubert_jax.training.metrics_log import MetricLog
from hubert_jax.training.tasks import make_task
from hubert_jax.training.trainer import Trainer, param_count
from hubert_jax.training.workdir_lock import lock_workdir

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Too many steps in a row with a NaN/Inf loss or gradient."""


@dataclasses.dataclass
class RunResult:
    step: int
    preempted: bool
    train: dict
    valid: dict
    skipped_steps: int
    trainer: Trainer
    state: dict


def data_shards(mesh) -> int:
    return mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)


def _check_batch_splits(cfg, mesh) -> None:
    """Before anything is read: the global batch must split over the hosts and over the data axes
    (bucketed batches are sized to split, hubert_jax/data/buckets.py)."""
    if cfg.data.get("buckets"):
        return
    if cfg.data.batch_size % jax.process_count():
        raise ValueError(f"config.data.batch_size ({cfg.data.batch_size}) must be divisible by the "
                         f"{jax.process_count()} hosts")
    shards = data_shards(mesh)
    if cfg.data.batch_size % shards:
        raise ValueError(f"config.data.batch_size ({cfg.data.batch_size}) must be divisible by the mesh's data x fsdp "
                         f"axes ({shards} = {dict(mesh.shape)})")


def restore_latest(cfg, workdir: str, step: int | None = None):
    """(trainer, state) of a workdir's newest (or given) checkpoint, e.g. to export or inspect a run."""
    task = make_task(cfg)
    task.open_workdir(workdir)
    cfg = task.cfg
    trainer = Trainer(task, mesh_from_config(cfg.mesh))
    checkpoints = Checkpoints(workdir, every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints,
                              config_json=cfg.to_json(sort_keys=True))
    try:
        if step is not None:
            return trainer, checkpoints.restore(step, trainer.abstract_state, trainer.state_shardings)
        step, state = checkpoints.restore_newest(trainer.abstract_state, trainer.state_shardings, move_damaged=False)
        if step is None:
            raise FileNotFoundError(f"{checkpoints.directory}: no checkpoint")
        return trainer, state
    finally:
        checkpoints.close()


def _global_batch(trainer: Trainer, batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(trainer.batch_sharding, np.asarray(v)) for k, v in batch.items()}


def valid_batches(source, data_cfg: DataConfig, batch_size: int, seed: int, mesh):
    """The valid split's global batches (this host's part of each), in order; ValueError when it makes none,
    so that a run learns it at start rather than at its first evaluation."""
    plan = (f"data.buckets {tuple(data_cfg.buckets)} with data.max_tokens {data_cfg.max_tokens}"
            if data_cfg.buckets else f"data.batch_size {batch_size}")
    where = f"config.data.valid.manifest ({data_cfg.manifest}): its {len(source)} utterances make no full batch ({plan})"
    try:
        ds = make_dataset(source, data_cfg, batch_size=batch_size, seed=seed, shuffle=False, repeat=False,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          transform=getattr(source, "pad", None), data_shards=data_shards(mesh))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if len(ds) == 0:
        raise ValueError(f"{where}: validation needs at least one; give the valid split more utterances")
    return ds


def evaluate(trainer: Trainer, state, source, data_cfg: DataConfig, batch_size: int, max_batches: int) -> dict:
    """The task's validation figures on the first `max_batches` global batches of the valid split (same
    crops and masks every time)."""
    ds = valid_batches(source, data_cfg, batch_size, trainer.cfg.seed, trainer.mesh)
    count = min(len(ds), max_batches)
    metrics = [jax.device_get(trainer.eval_step(state, _global_batch(trainer, ds[i]), trainer.eval_key(i)))
               for i in range(count)]
    return trainer.summarize(metrics)


def _abandon_saves(checkpoints) -> list[str]:
    """Wait for (or, on a full disk, give up on) a save in flight. A save that failed leaves only its
    temporary folder, removed here (a finished step is never touched); their names are returned."""
    try:
        checkpoints.wait()
    except Exception as e:
        if not is_disk_full(e) and not checkpoints.failed_for_space():
            raise
    removed = checkpoints.remove_unfinished()
    if removed:
        logger.info("removed the unfinished save(s) %s", ", ".join(removed))
    return removed


_BOOKKEEPING = ("finite", "nan_run")  # the train step's own, reported as skipped steps instead


def _fetch(pending: list, window: dict, max_nan_in_a_row: int, checkpoints) -> None:
    """Bring the pending steps' metrics to the host, in order: window them, report skipped updates."""
    for step, metrics in jax.device_get(pending):
        for k, v in metrics.items():
            if np.ndim(v) == 0:  # every scalar the task returns is logged
                window.setdefault(k, []).append(float(v))
        if not metrics["finite"]:
            nan_run = int(metrics["nan_run"])
            logger.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step, nan_run)
            if nan_run >= max_nan_in_a_row:
                raise NonFiniteLoss(
                    f"step {step}: {nan_run} steps in a row had a NaN/Inf loss or gradient "
                    f"(config.train.max_nan_in_a_row={max_nan_in_a_row}); stopping. The last "
                    f"checkpoint in {checkpoints.directory} is from step {checkpoints.latest_step()}: lower "
                    f"the learning rate or check the data, then resume.")
    pending.clear()


def write_config(workdir: str, config_json: str, step: int) -> str:
    """`config.json` (the config the workdir's run now follows) and, kept for good, `configs/` with one file
    per start (`{n}-step{step}.json`): a resumed run's earlier configs are never lost."""
    history = os.path.join(workdir, "configs")
    os.makedirs(history, exist_ok=True)
    starts = [name for name in os.listdir(history) if name.split("-")[0].isdigit()]
    name = os.path.join(history, f"{len(starts) + 1:04d}-step{step}.json")
    for path in (name, os.path.join(workdir, "config.json")):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(config_json + "\n")
        os.replace(path + ".tmp", path)
    return name


def run(cfg, workdir: str, *, stop_after: int | None = None) -> RunResult:
    """Train to cfg.train.steps (or `stop_after` more steps), resuming from the newest checkpoint of the
    workdir that verifies. The workdir is locked for the run (hubert_jax/training/workdir_lock.py)."""
    if "://" in workdir:
        raise ValueError(f"--workdir {workdir}: give a filesystem path. Checkpoints, config.json and the logs are "
                         f"written through the filesystem; mount a bucket with Cloud Storage FUSE (gcsfuse) on every "
                         f"host and pass the mount, e.g. /gcs/BUCKET/ckpt/run")
    os.makedirs(workdir, exist_ok=True)
    lock = lock_workdir(workdir, heartbeat_s=cfg.train.get("lock_heartbeat_s", 30.0),
                        stale_after_s=cfg.train.get("lock_stale_after_s", 300.0))
    try:
        return _run(cfg, workdir, lock, stop_after)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg, workdir: str, lock, stop_after: int | None) -> RunResult:
    # ------------------------------------------------------------------ setup
    main_process = jax.process_index() == 0
    task = make_task(cfg)
    cfg = task.cfg  # as the task resolves it (e.g. the heads of model.init_from); config.json records it
    config_json = cfg.to_json(sort_keys=True)
    mesh = mesh_from_config(cfg.mesh)
    _check_batch_splits(cfg, mesh)
    total = cfg.train.steps

    # ------------------------------------------------------------------ input pipeline
    batch_size = cfg.data.batch_size  # global: each host reads its part (make_dataset)
    data = task.data(workdir)
    train_cfg, valid_source, valid_cfg = data.train_config, data.valid, data.valid_config
    if valid_source is not None:  # checked now, not at the first evaluation hours in
        valid_batches(valid_source, valid_cfg, batch_size, cfg.seed, mesh)
    iterator = make_iterator(data.train, train_cfg, batch_size=batch_size, seed=cfg.seed,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             num_threads=cfg.data.num_threads, transform=getattr(data.train, "pad", None),
                             data_shards=data_shards(mesh))

    # ------------------------------------------------------------------ state: resume, init_from or fresh
    trainer = Trainer(task, mesh)
    checkpoints = Checkpoints(workdir, every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints,
                              config_json=config_json, before_write=lock.check if lock is not None else None)
    latest, state = checkpoints.restore_newest(trainer.abstract_state, trainer.state_shardings, iterator)
    if latest is not None:
        how_started = f"resumed from {checkpoints.directory}/{latest}"
    else:
        state = trainer.initial_state(trainer.init())
        how_started = None
        if cfg.model.init_from:
            state = trainer.load_initial(state, cfg.model.init_from)
            how_started = f"initialised from {cfg.model.init_from}"
    step = int(jax.device_get(state["step"]))
    if main_process:  # only now: the run is known to be compatible with its workdir
        write_config(workdir, config_json, step)
    # the logs too: a run that fails to start leaves no empty metrics.jsonl or tensorboard/ behind
    log = MetricLog(workdir, total, tensorboard=cfg.train.tensorboard, enabled=main_process,
                    keys=(*task.log_keys, *Trainer.log_keys, "audio_s_per_s"))
    if how_started:
        log.message(how_started)
    if train_cfg.buckets:
        sizes = bucket_batch_sizes(train_cfg, data_shards=data_shards(mesh), process_count=jax.process_count())
        shapes = ", ".join(f"{size} x {length / SAMPLE_RATE:.2f} s" for size, length in zip(sizes, train_cfg.buckets))
        batches = f"bucketed global batches ({shapes}; {train_cfg.max_tokens:,} samples each at most)"
    else:
        batches = f"global batch {cfg.data.batch_size} x {data.samples / SAMPLE_RATE:.2f} s"
    log.message(f"{param_count(state['params']):,} parameters; mesh {dict(mesh.shape)}; {batches}; "
                f"steps {step} -> {total}")

    # ------------------------------------------------------------------ preemption
    # one process: our SIGTERM handler. Several: JAX's preemption service catches the signal and every
    # host learns the same step to stop at (checkpoints.reached_preemption), so all of them save it.
    # Ctrl-C (one process) saves and exits as SIGTERM does; a second Ctrl-C aborts at once.
    preempted = {"flag": False, "why": "SIGTERM"}
    multi_host = jax.process_count() > 1

    def on_sigterm(signum, frame):
        preempted["flag"] = True

    def on_sigint(signum, frame):
        preempted.update(flag=True, why="Ctrl-C")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("Ctrl-C: saving the current step, then exiting (Ctrl-C again aborts without saving)", file=sys.stderr,
              flush=True)

    catch = not multi_host and threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if catch else None
    previous_int = signal.signal(signal.SIGINT, on_sigint) if catch else None

    # ------------------------------------------------------------------ loop
    # Metrics stay on the device until a log, eval or checkpoint step (or log_every steps) needs them:
    # fetching them every step would make the host wait for each step before dispatching the next.
    end = total if stop_after is None else min(total, step + stop_after)
    pending: list = []  # (step, device metrics) not yet fetched
    window: dict = {}
    last_train: dict = {}
    last_valid: dict = {}
    audio_seconds = 0.0
    compiled: set = set()
    tick = time.perf_counter()
    try:
        while step < end:
            batch = next(iterator)
            audio_seconds += float(batch["attention_mask"].sum()) / SAMPLE_RATE * jax.process_count()
            shape = batch["input_values"].shape
            new_shape = shape not in compiled
            started = time.perf_counter()
            state, metrics = trainer.train_step(state, _global_batch(trainer, batch))
            if new_shape:  # the first step of each batch shape compiles it (or reads the compilation cache)
                jax.block_until_ready(metrics)
                compiled.add(shape)
                log.message(f"batch shape {shape[0] * jax.process_count()} x {shape[1]}: first step "
                            f"{time.perf_counter() - started:.1f} s (compilation)")
            step += 1
            pending.append((step, metrics))
            logging_step = step % cfg.train.log_every == 0 or step == end
            eval_step = valid_source is not None and (step % cfg.train.eval_every == 0 or step == end)
            if multi_host and checkpoints.reached_preemption(step):
                preempted["flag"] = True
            stopping = preempted["flag"] or step == end
            if (logging_step or eval_step or stopping or checkpoints.due(step)
                    or len(pending) >= cfg.train.log_every):
                # a run of non-finite steps raises here, before the step is logged or saved
                _fetch(pending, window, cfg.train.max_nan_in_a_row, checkpoints)
            if logging_step:
                elapsed = time.perf_counter() - tick
                last_train = {k: float(np.mean(v)) for k, v in window.items() if k not in _BOOKKEEPING}
                last_train["audio_s_per_s"] = audio_seconds / max(elapsed, 1e-9)
                last_train["skipped_steps"] = float(jax.device_get(state["nan_total"]))
                log.write(step, "train", last_train)
                window, audio_seconds, tick = {}, 0.0, time.perf_counter()
            preempting = preempted["flag"]  # read once: a signal may land at any point of the step
            # saved before the evaluation: an evaluation that fails never costs the step just trained
            checkpoints.save(step, state, iterator, force=stopping or preempting)
            if preempting:
                log.message(f"preempted ({preempted['why']}): saved step {step} to {checkpoints.directory}; exiting")
                break
            if eval_step:
                last_valid = evaluate(trainer, state, valid_source, valid_cfg, batch_size, cfg.train.eval_batches)
                log.write(step, "valid", last_valid)
        if valid_source is not None and not last_valid:  # nothing left to train: report where it stands
            last_valid = evaluate(trainer, state, valid_source, valid_cfg, batch_size, cfg.train.eval_batches)
        checkpoints.finish()
        if task.export_when_done and step >= total and not preempted["flag"]:
            directory = trainer.export(state, os.path.join(workdir, "model"))
            log.message(f"exported the trained model to {directory}")
    except Exception as e:
        # a save that failed on a full disk: ENOSPC itself, or a follow-on error of the half-written files
        if isinstance(e, DiskFull) or not (is_disk_full(e) or checkpoints.failed_for_space(state)):
            raise
        # an async save failed: it is the one whose temporary folder is left
        failed = [int(name.split(".")[0]) for name in _abandon_saves(checkpoints) if name.split(".")[0].isdigit()]
        raise DiskFull(disk_full_message(checkpoints, max(failed, default=step), checkpoints.space_needed(state))) from None
    finally:
        _abandon_saves(checkpoints)
        checkpoints.close()
        log.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
            signal.signal(signal.SIGINT, previous_int)
    return RunResult(step=step, preempted=preempted["flag"], train=last_train, valid=last_valid,
                     skipped_steps=int(jax.device_get(state["nan_total"])), trainer=trainer, state=state)
