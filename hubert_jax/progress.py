"""Progress of a long command with its time left: tqdm's bar on a terminal; elsewhere (a log file, a
scheduler's captured output) tqdm's same line printed every 5% (at most one line per 2 s, and always the
last) instead of redrawn. Only
the process that is asked to show it (process 0 of a multi-host run) writes anything."""

from __future__ import annotations

import sys
import time


class Progress:
    """A progress line for a long loop: tqdm on a terminal, else a plain line every `every` of the total (at most one
    per `min_seconds`), with the rate and the time left."""
    def __init__(self, total: int, desc: str, *, unit: str = "it", enabled: bool = True, stream=None,
                 every: float = 0.05, min_seconds: float = 2.0):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.enabled, self.every = enabled and self.total > 0, every
        self.count, self.next_report, self.start = 0, every, time.perf_counter()
        self.min_seconds, self.last_line = min_seconds, float("-inf")
        self.bar = None
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count `n` more items done."""
        if not self.enabled:
            return
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        finished = self.count >= self.total
        if finished or self.count / self.total >= self.next_report:
            if finished or time.perf_counter() - self.last_line >= self.min_seconds:
                self._line()
            while self.next_report <= self.count / self.total:
                self.next_report += self.every

    def _line(self) -> None:
        from tqdm import tqdm

        line = tqdm.format_meter(min(self.count, self.total), self.total, time.perf_counter() - self.start,
                                 prefix=self.desc, unit=self.unit, ascii=True)
        self.stream.write(line + "\n")
        self.stream.flush()
        self.last_line = time.perf_counter()

    def close(self) -> None:
        """End the bar (saying where it stopped if it ended before the total)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.count < self.total:  # ended early (k-means converged): say where
            self._line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main_process() -> bool:
    """Whether this process shows progress: process 0 (jax is imported only when already loaded)."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def format_eta(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
