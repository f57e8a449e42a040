"""Where a run's numbers go: a console progress line, `{workdir}/metrics.jsonl` and TensorBoard.

Only the main process (process 0) writes; the others keep quiet.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from hubert_jax import storage
from hubert_jax.progress import format_eta

logger = logging.getLogger(__name__)


class MetricLog:
    """The run's metrics: one JSON line per train window or validation in metrics.jsonl, TensorBoard scalars, and the
    console line (process 0 only)."""
    def __init__(self, workdir: str, total_steps: int, *, tensorboard: bool = True, enabled: bool = True,
                 stream=None, keys: tuple[str, ...] = ("loss",)):
        """`keys`: the train metrics the console line shows, in order (every metric goes to the files)."""
        self.total, self.enabled, self.keys = total_steps, enabled, tuple(keys)
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.last = None  # (step, time) of the previous train line: the rate over the last window
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        if not storage.is_remote(workdir):
            os.makedirs(workdir, exist_ok=True)
        self.jsonl = storage.GrowingFile(storage.join(workdir, "metrics.jsonl"))
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                if storage.is_remote(workdir):
                    remote_event_files()
                self.tb = SummaryWriter(storage.join(workdir, "tensorboard"))
            except ImportError:
                logger.warning("tensorboardX is not installed: no TensorBoard logs (pip install tensorboardX)")

    def write(self, step: int, split: str, values: dict) -> None:
        """Record `values` of `split` (train or valid) at `step`."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)
            self.tb.flush()
        self.stream.write(self._line(step, split, values) + "\n")
        self.stream.flush()

    def _line(self, step: int, split: str, values: dict) -> str:
        if split != "train":
            shown = "  ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            return f"  [{split} @ {step}] {shown}"
        done = min(step / max(self.total, 1), 1.0)
        bar = "#" * int(done * 20) + "-" * (20 - int(done * 20))
        now = time.perf_counter()
        elapsed = now - self.start
        shown = "  ".join(f"{k} {_fmt(values[k])}" for k in self.keys if k in values)
        # steps per second over the last log window (the first window also holds the compilation)
        last_step, last_time = self.last or (None, self.start)
        self.last = (step, now)
        if last_step is None or step <= last_step:
            return f"[{bar}] {step}/{self.total} {shown}  ({elapsed:.0f} s)"
        rate = (step - last_step) / max(now - last_time, 1e-9)
        left = format_eta((self.total - step) / rate)
        return f"[{bar}] {step}/{self.total} {shown}  {rate:.3g} steps/s, {left} left ({elapsed:.0f} s)"

    def sync(self) -> None:
        """Write out metrics.jsonl as it stands (in a gs:// workdir it is otherwise uploaded at most every 30 s;
        the TensorBoard event file there is, and at close)."""
        if self.jsonl is not None:
            self.jsonl.flush(force=True)

    def message(self, text: str) -> None:
        """A line on the console."""
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Close metrics.jsonl and the TensorBoard writer."""
        if self.jsonl is not None:
            self.jsonl.close()  # on gs://: the last lines uploaded
        if self.tb is not None:
            self.tb.close()


class _EventFiles:
    """tensorboardX's record writers for gs:// event files, through hubert_jax.storage (tensorboardX's own needs
    google-cloud-storage and uploads at every flush): each object is rewritten at most every 30 s and at close."""

    def open(self, path: str) -> storage.GrowingFile:
        return storage.GrowingFile(path, binary=True)

    def directory_check(self, path: str) -> None:
        pass  # a bucket has no folders to make


def remote_event_files() -> None:
    """Route tensorboardX's gs:// event files through hubert_jax.storage (once per process)."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory("gs", _EventFiles())


def _fmt(v: float) -> str:
    return f"{v:.3e}" if (v != 0 and abs(v) < 1e-2) else f"{v:.4g}"
