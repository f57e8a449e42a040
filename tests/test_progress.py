"""Progress lines with the time left: tqdm's bar on a terminal, a plain line every 5% elsewhere, nothing
from a process that is not asked to show it; train.py's line gives steps per second and the time left."""

import io

from hubert_jax.progress import Progress, format_eta
from hubert_jax.training.metrics_log import MetricLog


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_five_percent_when_not_a_terminal():
    out = io.StringIO()
    with Progress(200, "dump", unit="utt", stream=out, min_seconds=0) as bar:
        for _ in range(200):
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in out.getvalue()
    assert lines[0].startswith("dump:   5%") and lines[-1].startswith("dump: 100%")
    assert "200/200" in lines[-1] and "<" in lines[-1]  # tqdm's [elapsed<left] meter


def test_fast_stages_print_only_their_last_line():
    out = io.StringIO()
    with Progress(200, "mfcc", stream=out) as bar:  # at most one line per 2 s
        for _ in range(200):
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) <= 2 and lines[-1].startswith("mfcc: 100%")


def test_a_terminal_gets_tqdms_bar():
    out = Terminal()
    with Progress(50, "mfcc", stream=out) as bar:
        bar.update(50)
    assert "mfcc: 100%" in out.getvalue() and "50/50" in out.getvalue()


def test_an_early_end_says_where_it_stopped_and_other_processes_stay_quiet():
    out = io.StringIO()
    with Progress(1000, "k-means", stream=out) as bar:
        bar.update(10)
    assert out.getvalue().splitlines()[-1].startswith("k-means:   1%")
    quiet = io.StringIO()
    with Progress(10, "label", stream=quiet, enabled=False) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_train_line_has_steps_per_second_and_time_left(tmp_path):
    out = io.StringIO()
    log = MetricLog(str(tmp_path), 1000, tensorboard=False, stream=out)
    log.write(100, "train", {"loss": 2.0})
    log.write(200, "train", {"loss": 1.5})
    first, second = out.getvalue().splitlines()
    assert "steps/s" not in first  # the first window holds the compilation
    assert "steps/s" in second and " left (" in second
    assert format_eta(3725.2) == "1:02:05"
