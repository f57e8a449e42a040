"""Train a model: pretraining (HuBERT, WavLM, wav2vec 2.0 / XLSR, DistilHuBERT) or fine-tuning (CTC, one label
per utterance, frame labels), as the config's `task` says.

    python train.py --config configs/demo.py --workdir work/demo [--config.a.b=value ...]
    hubert-jax-train --config configs/demo.py --workdir work/demo       (the same, installed)

The config file is a Python file whose get_config() returns an ml_collections ConfigDict. Every field with
its default: `python -m hubert_jax.training.config` (a config file's values: `... FILE`). Runs resume from
the newest checkpoint in --workdir; a finished run writes its model to {workdir}/model.

The console shows the run's progress and warnings; everything else logged (the checkpoint library's lines
included) goes to {workdir}/run.log. A mistake in the command or the config ends with one line saying what is
wrong; add --debug for the traceback.

Multi-host: run the same command on every host. TPU pods, SLURM and Open MPI jobs are joined automatically;
otherwise add --coordinator_address HOST:PORT --num_processes N --process_id I (hubert_jax/distributed.py).
"""

import errno
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "the run's config file (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, run.log, TensorBoard logs and the model go here")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "join a multi-host run: auto = when the flags below or the cluster's environment say so")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs outside TPU/SLURM/MPI)")
flags.DEFINE_integer("num_processes", None, "number of processes (hosts) in the run")
flags.DEFINE_integer("process_id", None, "this process' index in [0, num_processes)")
flags.DEFINE_integer("init_timeout", 300, "seconds to wait for the coordinator and the other processes")
flags.mark_flags_as_required(["config", "workdir"])


class _ConsoleFilter(logging.Filter):
    """The console keeps warnings and the package's own lines; other libraries' INFO goes to the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("hubert_jax")


def quiet_console() -> None:
    """The console (absl's handler) left with warnings and hubert_jax's lines."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_ConsoleFilter())


class _WorkdirLog(logging.FileHandler):
    """run.log. On a full disk its lines are dropped, not each printed to the console as a "--- Logging error ---"
    traceback: the run names the full disk itself, in one line (checkpoint.DiskFull)."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return
        super().handleError(record)


class _BucketLog(logging.StreamHandler):
    """run.log in a gs:// workdir: uploaded at most every 30 s and when logging shuts down (storage.GrowingFile)."""

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def close_bucket_logs() -> None:
    """Upload and close run.log of a gs:// workdir now, while the storage client still runs (at the interpreter's
    exit, where logging would close it, the client's event loop may already be gone)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _BucketLog)]:
        root.removeHandler(handler)
        handler.close()


def log_to_workdir(workdir: str, process_index: int) -> str | None:
    """Every log record into {workdir}/run.log (run-{process}.log beyond process 0; the file is made at its
    first line)."""
    from hubert_jax import storage

    if "://" in workdir and not storage.is_remote(workdir):  # run() refuses it with its own message
        return None
    path = storage.join(workdir, "run.log" if process_index == 0 else f"run-{process_index}.log")
    if storage.is_remote(workdir):
        handler = _BucketLog(storage.GrowingFile(path))
    else:
        os.makedirs(workdir, exist_ok=True)
        handler = _WorkdirLog(path, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path


def main(argv):
    del argv
    from hubert_jax import distributed, xla_flags

    quiet_console()

    xla_flags.set_performance_flags()  # before any backend starts
    xla_flags.enable_compilation_cache()  # restarts reuse every compiled step shape

    f = flags.FLAGS
    distributed.initialize(coordinator_address=f.coordinator_address, num_processes=f.num_processes,
                           process_id=f.process_id, timeout_s=f.init_timeout, mode=f.distributed)
    import jax

    from hubert_jax.training.checkpoint import DiskFull, quiet_closed_loop_callbacks
    from hubert_jax.training.run import run
    from hubert_jax.training.workdir_lock import LockLost, WorkdirBusy

    quiet_closed_loop_callbacks()
    log_to_workdir(f.workdir, jax.process_index())
    try:
        run(f.config, f.workdir)
    except (DiskFull, WorkdirBusy, LockLost) as e:  # conditions of the machine, not bugs: one line, no traceback
        # run() has given the lock back and closed the checkpoints; exit before the interpreter's teardown,
        # where the abandoned save's coroutines would print warnings after this line
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.write(f"train.py: {e}\n")
        sys.stderr.flush()
        os._exit(1)
    finally:
        close_bucket_logs()


def console_main(prog: str = "train.py") -> None:
    """The command: absl parses the flags (its --help prints this module's docstring)."""
    from absl import app

    from hubert_jax.cli_errors import run_command

    sys.modules["__main__"].__doc__ = __doc__
    sys.exit(run_command(prog, lambda: app.run(main)))
