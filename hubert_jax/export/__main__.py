"""Export a training run's model directory from its workdir (any step, the newest by default).

    python -m hubert_jax.export WORKDIR OUT [--step N] [--overwrite]

OUT is what the run itself writes to `{workdir}/model` when it reaches its last step: the task's model
(a pretraining run: the encoder, which FlaxAutoModel and transformers load, with its pretraining heads beside
it; a fine-tuning run: the model with its head), loadable with hubert_jax.FlaxAutoModel*.from_pretrained.
"""

from __future__ import annotations

import argparse
import sys

from hubert_jax.cli_errors import prog_name


def export_run(workdir: str, out: str, *, step: int | None = None, overwrite: bool = False) -> str:
    """Write step `step` (default: the newest that verifies) of the run in `workdir` to `out`."""
    from hubert_jax import storage
    from hubert_jax.training.config import workdir_config
    from hubert_jax.training.run import restore_latest

    if storage.listdir(out) and not overwrite:  # a folder, or a gs:// prefix, that holds something
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite)")
    trainer, state = restore_latest(workdir_config(workdir), workdir, step)
    return trainer.export(state, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("python -m hubert_jax.export"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", help="a training run's --workdir (config.json and checkpoints/)")
    parser.add_argument("out", help="the model directory to write")
    parser.add_argument("--step", type=int, help="the checkpoint's step (default: the newest that verifies)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    directory = export_run(args.workdir, args.out, step=args.step, overwrite=args.overwrite)
    print(f"wrote {directory}")
    return 0


if __name__ == "__main__":
    from hubert_jax.cli_errors import run_command

    sys.exit(run_command("python -m hubert_jax.export", main))
