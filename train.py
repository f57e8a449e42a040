"""Pretrain a HuBERT model.

    python train.py --config configs/demo.py --workdir work/demo [--config.a.b=value ...]

The config file is a Python file whose get_config() returns an ml_collections ConfigDict (see
hubert_jax/training/config.py for every field). Runs resume from the newest checkpoint in --workdir.

A mistake in the command or the config ends with one line saying what is wrong; add --debug for the
traceback.

Multi-host: run the same command on every host. TPU pods, SLURM and Open MPI jobs are joined automatically;
otherwise add --coordinator_address HOST:PORT --num_processes N --process_id I (hubert_jax/distributed.py).
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "the run's config file (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard logs go here")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "join a multi-host run: auto = when the flags below or the cluster's environment say so")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs outside TPU/SLURM/MPI)")
flags.DEFINE_integer("num_processes", None, "number of processes (hosts) in the run")
flags.DEFINE_integer("process_id", None, "this process' index in [0, num_processes)")
flags.DEFINE_integer("init_timeout", 300, "seconds to wait for the coordinator and the other processes")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from hubert_jax import distributed, xla_flags

    xla_flags.set_performance_flags()  # before any backend starts
    xla_flags.enable_compilation_cache()  # restarts reuse every compiled step shape

    f = flags.FLAGS
    distributed.initialize(coordinator_address=f.coordinator_address, num_processes=f.num_processes,
                           process_id=f.process_id, timeout_s=f.init_timeout, mode=f.distributed)
    from hubert_jax.training.checkpoint import DiskFull, quiet_closed_loop_callbacks
    from hubert_jax.training.run import run
    from hubert_jax.training.workdir_lock import LockLost, WorkdirBusy

    quiet_closed_loop_callbacks()

    try:
        run(flags.FLAGS.config, flags.FLAGS.workdir)
    except (DiskFull, WorkdirBusy, LockLost) as e:  # conditions of the machine, not bugs: one line, no traceback
        # run() has given the lock back and closed the checkpoints; exit before the interpreter's teardown,
        # where the abandoned save's coroutines would print warnings after this line
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.write(f"train.py: {e}\n")
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    from hubert_jax.cli_errors import run_command

    sys.exit(run_command("train.py", lambda: app.run(main)))
