"""What happens around the train steps (hubert_jax/training/loop.py calls these after every step, in order):
the metrics (fetched late, windowed, logged; non-finite steps counted), the checkpoint (with preemption and
a full disk), the evaluation and the export. Each hook says when it is due (`every`) and whether it needs the
step's metrics on the host (`needs_metrics`), so that the loop fetches them only then.

A hook is
- `needs_metrics(info)`: whether the metrics of the steps so far must reach the host now;
- `after_step(info)`: its work after a step; setting `info.stop` ends the loop after this hook;
- `finish(info)`: its work once the loop is over (not after an error);
- `close()`: give back what it holds, always.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from hubert_jax.lengths import SAMPLE_RATE

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Too many steps in a row with a NaN/Inf loss or gradient."""


@dataclasses.dataclass
class StepInfo:
    """What the loop knows after a step."""

    step: int  # steps done
    end: int  # the step this run stops at
    state: dict
    metrics: dict  # this step's metrics, on the device
    batch: dict  # this host's part of the step's batch, on the host
    stopping: bool  # the last step of this run: `end`, or a stop requested (preemption)
    sync: bool = False  # a hook needs the metrics of the steps so far on the host now
    stop: bool = False  # set by a hook: end the loop after it


class Hook:
    """Something the loop calls after each step and once at the end: metrics, checkpoints, evaluation, export. A hook
    says when it needs the step's metrics on the host (needs_metrics), so the loop fetches them only then."""
    every = 0  # the step period of its work (0: only when the run stops)

    def due(self, info: StepInfo) -> bool:
        """Whether this step is one of the hook's (every `every` steps, and the last)."""
        return bool(self.every) and info.step % self.every == 0 or info.step == info.end

    def needs_metrics(self, info: StepInfo) -> bool:
        """Whether the hook reads this step's metrics on the host (the loop then fetches the pending ones)."""
        return False

    def after_step(self, info: StepInfo) -> None:
        """The hook's work after a train step."""
        pass

    def finish(self, info: StepInfo) -> None:
        """The hook's work when the loop ends (last step or preemption)."""
        pass

    def close(self) -> None:
        """Release what the hook holds (files, threads), whether or not the loop ended well."""
        pass


# ----------------------------------------------------------------------------- metrics
BOOKKEEPING = ("finite", "nan_run")  # the train step's own, reported as skipped steps instead


def fetch(pending: list, window: dict, max_nan_in_a_row: int, where) -> None:
    """Bring the pending steps' metrics to the host, in order: window them, report skipped updates.
    `where()` says where the last checkpoint is, for the message of a run of non-finite steps."""
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
                    f"(config.train.max_nan_in_a_row={max_nan_in_a_row}); stopping. {where()}: lower the "
                    f"learning rate or check the data, then resume.")
    pending.clear()


class MetricsHook(Hook):
    """Keeps each step's metrics on the device until a log window closes or another hook needs them (fetching
    every step would make the host wait for each step before dispatching the next), then logs the window's
    means with the audio seconds per second and the skipped steps."""

    def __init__(self, log, *, every: int, max_nan_in_a_row: int, where, process_count: int = 1):
        self.log, self.every, self.max_nan_in_a_row, self.where = log, every, max_nan_in_a_row, where
        self.process_count = process_count
        self.pending: list = []  # (step, device metrics) not yet fetched
        self.window: dict = {}
        self.audio_seconds = 0.0
        self.tick = time.perf_counter()
        self.last: dict = {}  # the last logged window's figures

    def needs_metrics(self, info: StepInfo) -> bool:
        return self.due(info) or len(self.pending) + 1 >= self.every

    def after_step(self, info: StepInfo) -> None:
        self.audio_seconds += float(info.batch["attention_mask"].sum()) / SAMPLE_RATE * self.process_count
        self.pending.append((info.step, info.metrics))
        if info.sync:  # this hook's own window (needs_metrics) or another hook's need
            # a run of non-finite steps raises here, before the step is logged or saved
            fetch(self.pending, self.window, self.max_nan_in_a_row, self.where)
        if self.due(info):
            elapsed = time.perf_counter() - self.tick
            self.last = {k: float(np.mean(v)) for k, v in self.window.items() if k not in BOOKKEEPING}
            self.last["audio_s_per_s"] = self.audio_seconds / max(elapsed, 1e-9)
            self.last["skipped_steps"] = float(jax.device_get(info.state["nan_total"]))
            self.log.write(info.step, "train", self.last)
            self.window, self.audio_seconds, self.tick = {}, 0.0, time.perf_counter()


# ----------------------------------------------------------------------------- checkpoints
class CheckpointHook(Hook):
    """Saves every `checkpoints.every` steps and at the run's last step; on a preemption (`preemption.flag`,
    read once per step) saves the step and stops the loop."""

    def __init__(self, checkpoints, iterator, preemption, log):
        self.checkpoints, self.iterator, self.preemption, self.log = checkpoints, iterator, preemption, log

    def needs_metrics(self, info: StepInfo) -> bool:
        return info.stopping or self.checkpoints.due(info.step)

    def after_step(self, info: StepInfo) -> None:
        preempting = self.preemption.flag  # read once: a signal may land at any point of the step
        # saved before the evaluation: an evaluation that fails never costs the step just trained
        if self.checkpoints.save(info.step, info.state, self.iterator, force=info.stopping or preempting):
            self.log.sync()  # the metrics up to a checkpoint are kept with it (in a bucket they are uploaded now)
        if preempting:
            self.log.message(f"preempted ({self.preemption.why}): saved step {info.step} to "
                             f"{self.checkpoints.directory}; exiting")
            info.stop = True

    def finish(self, info: StepInfo) -> None:
        self.checkpoints.finish()

    def where(self) -> str:
        """Where the newest checkpoint is, for messages about a stopped run."""
        return f"The last checkpoint in {self.checkpoints.directory} is from step {self.checkpoints.latest_step()}"


# ----------------------------------------------------------------------------- evaluation
class EvalHook(Hook):
    """The task's validation figures every `every` steps and at the run's last step (also when a resumed run
    has nothing left to train)."""

    def __init__(self, evaluate, log, *, every: int):
        self.evaluate, self.log, self.every = evaluate, log, every
        self.last: dict = {}

    def needs_metrics(self, info: StepInfo) -> bool:
        return self.due(info)

    def after_step(self, info: StepInfo) -> None:
        if self.due(info):
            self.last = self.evaluate(info.state)
            self.log.write(info.step, "valid", self.last)

    def finish(self, info: StepInfo) -> None:
        if not self.last:  # nothing left to train: report where it stands
            self.last = self.evaluate(info.state)


# ----------------------------------------------------------------------------- export
class ExportHook(Hook):
    """Writes the trained model directory when the run reaches its last step (not after a preemption)."""

    def __init__(self, export, directory: str, total: int, preemption, log):
        self.export, self.directory, self.total, self.preemption, self.log = export, directory, total, preemption, log

    def finish(self, info: StepInfo) -> None:
        if info.step >= self.total and not self.preemption.flag:
            directory = self.export(info.state, self.directory)
            self.log.message(f"exported the trained model to {directory}")
