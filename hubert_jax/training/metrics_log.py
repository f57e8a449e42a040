"""Where a run's numbers go: a console progress line, `{workdir}/metrics.jsonl` and TensorBoard.

Only the main process (process 0) writes; the others keep quiet.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

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
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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

    def message(self, text: str) -> None:
        """A line on the console."""
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Close metrics.jsonl and the TensorBoard writer."""
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v: float) -> str:
    return f"{v:.3e}" if (v != 0 and abs(v) < 1e-2) else f"{v:.4g}"
