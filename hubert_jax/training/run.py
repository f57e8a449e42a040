"""A training run, set up: the workdir's lock, the task and its data, the mesh, the state (resumed, initialised
from a model or fresh), the logs and the hooks; then the step loop (hubert_jax/training/loop.py) and, around
it, the preemption signals and a full disk."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading

import jax

from hubert_jax import storage
from hubert_jax.data.pipeline import DataConfig, bucket_batch_sizes, check_batch_split, make_dataset, make_iterator
from hubert_jax.lengths import SAMPLE_RATE
from hubert_jax.sharding import data_shards, mesh_from_config
from hubert_jax.training.checkpoint import Checkpoints, DiskFull, disk_full_message, is_disk_full
from hubert_jax.training.hooks import CheckpointHook, EvalHook, ExportHook, MetricsHook, StepInfo
from hubert_jax.training.loop import train
from hubert_jax.training.metrics_log import MetricLog
from hubert_jax.training.optim import run_length_warnings
from hubert_jax.training.tasks import make_task
from hubert_jax.training.trainer import Trainer, param_count
from hubert_jax.training.workdir_lock import lock_workdir

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """What run() returns: where the run stopped and why, its last figures and its final state."""
    step: int
    preempted: bool
    train: dict  # the last logged train window's figures
    valid: dict  # the last validation figures
    skipped_steps: int
    trainer: Trainer
    state: dict


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


def valid_batches(source, data_cfg: DataConfig, batch_size: int, seed: int, mesh):
    """The valid split's global batches (this host's part of each), in order; ValueError when it makes none,
    so that a run learns it at start rather than at its first evaluation."""
    plan = (f"data.buckets {tuple(data_cfg.buckets)} with data.max_tokens {data_cfg.max_tokens}"
            if data_cfg.buckets else f"data.batch_size {batch_size}")
    where = f"config.data.valid.manifest ({data_cfg.manifest}): its {len(source)} utterances make no full batch ({plan})"
    try:
        ds = make_dataset(source, data_cfg, batch_size=batch_size, seed=seed, shuffle=False, repeat=False,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          transform=source.transform, data_shards=data_shards(mesh))
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
    metrics = [jax.device_get(trainer.eval_step(state, trainer.global_batch(ds[i]), trainer.eval_key(i)))
               for i in range(count)]
    return trainer.summarize(metrics)


def write_config(workdir: str, config_json: str, step: int) -> str:
    """`config.json` (the config the workdir's run now follows) and, kept for good, `configs/` with one file
    per start (`{n}-step{step}.json`): a resumed run's earlier configs are never lost."""
    history = storage.join(workdir, "configs")
    if not storage.is_remote(history):
        os.makedirs(history, exist_ok=True)
    starts = [name for name in storage.listdir(history) if name.split("-")[0].isdigit()]
    name = storage.join(history, f"{len(starts) + 1:04d}-step{step}.json")
    for path in (name, storage.join(workdir, "config.json")):
        storage.write_bytes(path, (config_json + "\n").encode("utf-8"))
    return name


class Preemption:
    """Whether the run must stop and save. One process: our SIGTERM handler, and Ctrl-C saves and exits as
    SIGTERM does (a second Ctrl-C aborts at once). Several: JAX's preemption service catches the signal and
    every host learns the same step to stop at (checkpoints.reached_preemption), so all of them save it."""

    def __init__(self, checkpoints):
        self.checkpoints, self.flag, self.why = checkpoints, False, "SIGTERM"
        self.multi_host = jax.process_count() > 1
        self.previous = None
        if not self.multi_host and threading.current_thread() is threading.main_thread():
            self.previous = (signal.signal(signal.SIGTERM, self._on_sigterm),
                             signal.signal(signal.SIGINT, self._on_sigint))

    def _on_sigterm(self, signum, frame):
        self.flag = True

    def _on_sigint(self, signum, frame):
        self.flag, self.why = True, "Ctrl-C"
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("Ctrl-C: saving the current step, then exiting (Ctrl-C again aborts without saving)", file=sys.stderr,
              flush=True)

    def requested(self, step: int) -> bool:
        """Whether the run should save and stop at `step` (a signal here, or on another host of a multi-host run)."""
        if self.multi_host and self.checkpoints.reached_preemption(step):
            self.flag = True
        return self.flag

    def close(self) -> None:
        """Put back the signal handlers that were there before the run."""
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous[0])
            signal.signal(signal.SIGINT, self.previous[1])


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


def run(cfg, workdir: str, *, stop_after: int | None = None) -> RunResult:
    """Train to cfg.train.steps (or `stop_after` more steps), resuming from the newest checkpoint of the
    workdir that verifies. The workdir is locked for the run (hubert_jax/training/workdir_lock.py)."""
    if "://" in workdir and not storage.is_remote(workdir):
        raise ValueError(f"--workdir {workdir}: give a filesystem path or a gs://BUCKET/... prefix")
    if not storage.is_remote(workdir):
        os.makedirs(workdir, exist_ok=True)
    lock = lock_workdir(workdir, heartbeat_s=cfg.train.get("lock_heartbeat_s", 30.0),
                        stale_after_s=cfg.train.get("lock_stale_after_s", 300.0))
    try:
        return _run(cfg, workdir, lock, stop_after)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg, workdir: str, lock, stop_after: int | None) -> RunResult:
    main_process = jax.process_index() == 0
    task = make_task(cfg)
    cfg = task.cfg  # as the task resolves it (e.g. the heads of model.init_from); config.json records it
    config_json = cfg.to_json(sort_keys=True)
    mesh = mesh_from_config(cfg.mesh)
    if not cfg.data.get("buckets"):  # before anything is read
        check_batch_split(cfg.data.batch_size, jax.process_count(), data_shards(mesh), mesh.shape)
    total = cfg.train.steps

    # ------------------------------------------------------------------ input pipeline
    batch_size = cfg.data.batch_size  # global: each host reads its part (make_dataset)
    data = task.data(workdir)
    train_cfg, valid_source, valid_cfg = data.train_config, data.valid, data.valid_config
    if valid_source is not None:  # checked now, not at the first evaluation hours in
        valid_batches(valid_source, valid_cfg, batch_size, cfg.seed, mesh)
    iterator = make_iterator(data.train, train_cfg, batch_size=batch_size, seed=cfg.seed,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             num_threads=cfg.data.num_threads, transform=data.train.transform,
                             data_shards=data_shards(mesh))

    # ------------------------------------------------------------------ state: resume, init_from or fresh
    trainer = Trainer(task, mesh)
    problem = task.export_problem(trainer.abstract_model) if task.export_when_done else None
    if problem:  # now, not after the last step
        raise ValueError(problem)
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
    for warning in run_length_warnings(cfg):
        logger.warning(warning)

    # ------------------------------------------------------------------ hooks, then the loop
    preemption = Preemption(checkpoints)
    saving = CheckpointHook(checkpoints, iterator, preemption, log)
    metric_hook = MetricsHook(log, every=cfg.train.log_every, max_nan_in_a_row=cfg.train.max_nan_in_a_row,
                              where=saving.where, process_count=jax.process_count())
    hooks = [metric_hook, saving]
    evaluation = None
    if valid_source is not None:
        evaluation = EvalHook(
            lambda s: evaluate(trainer, s, valid_source, valid_cfg, batch_size, cfg.train.eval_batches), log,
            every=cfg.train.eval_every)
        hooks.append(evaluation)
    if task.export_when_done:
        hooks.append(ExportHook(trainer.export, storage.join(workdir, "model"), total, preemption, log))
    end = total if stop_after is None else min(total, step + stop_after)
    at = StepInfo(step=step, end=end, state=state, metrics={}, batch={}, stopping=step >= end)
    try:
        train(trainer, at, iterator, hooks, stop_requested=preemption.requested, message=log.message)
    except Exception as e:
        state, step = at.state, at.step
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
        preemption.close()
    state, step = at.state, at.step
    return RunResult(step=step, preempted=preemption.flag, train=metric_hook.last,
                     valid=evaluation.last if evaluation is not None else {},
                     skipped_steps=int(jax.device_get(state["nan_total"])), trainer=trainer, state=state)
