"""Pretrain a HuBERT model.

    python train.py --config configs/demo.py --workdir work/demo [--config.a.b=value ...]

The config file is a Python file whose get_config() returns an ml_collections ConfigDict (see
hubert_jax/training/config.py for every field). Runs resume from the newest checkpoint in --workdir.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "the run's config file (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard logs go here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from hubert_jax.training.loop import run

    run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
