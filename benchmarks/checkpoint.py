"""What checkpoint digests cost: the digest of a recipe's whole train state against the save it rides on.

    python benchmarks/checkpoint.py                                  # base recipe (configs/hubert_base_iter1.py)
    python benchmarks/checkpoint.py --config configs/korean_large.py
    python benchmarks/checkpoint.py --smoke                          # seconds: the tests' tiny model

The state is the recipe's real train state (parameters and Adam moments, random weights), on this
machine's devices. Rows: the digest of every array (hubert_jax/training/integrity.py, one jitted pass
where the arrays live; compilation excluded, median of --repeats), a synchronous Orbax save of the same
state through hubert_jax.training.checkpoint.Checkpoints (digest included), a restore with verification,
and the digest's share of the save. Also the checkpoint's size on disk against the arrays' bytes (what
the free-space check before each save expects).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_config(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "hubert_base_iter1.py"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)

    import grain
    import jax

    from hubert_jax.sharding import mesh_from_config
    from hubert_jax.training.checkpoint import Checkpoints, array_bytes, flatten
    from hubert_jax.training.integrity import array_digests
    from hubert_jax.training.tasks import make_trainer
    from hubert_jax.training.trainer import param_count

    if args.smoke:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import tiny_config

        cfg, name, args.repeats = tiny_config.get_config(), "tiny (tests)", 1
    else:
        cfg, name = load_config(args.config), os.path.basename(args.config)
    trainer = make_trainer(cfg, mesh_from_config(cfg.mesh))
    state = trainer.initial_state(trainer.init())
    flat = flatten(state)
    state_bytes = array_bytes(flat)
    array_digests(flat)  # compile
    digest_s = median_time(lambda: array_digests(flat), args.repeats)

    iterator = iter(grain.MapDataset.range(16).to_iter_dataset())
    workdir = tempfile.mkdtemp(prefix="ckpt-bench-")
    try:
        checkpoints = Checkpoints(workdir, every=1, keep=1, config_json=cfg.to_json(sort_keys=True), async_save=False)
        saves = []
        for step in range(1, args.repeats + 1):
            start = time.perf_counter()
            checkpoints.save(step, state, iterator, force=True)
            checkpoints.wait()
            saves.append(time.perf_counter() - start)
        save_s = sorted(saves)[len(saves) // 2]
        step = checkpoints.latest_step()
        on_disk = checkpoints._size_on_disk(step)
        start = time.perf_counter()
        checkpoints.restore(step, trainer.abstract_state, trainer.state_shardings, iterator)
        restore_s = time.perf_counter() - start
        checkpoints.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}; {name}: "
          f"{param_count(state['params']):,} parameters, {len(flat)} arrays, {state_bytes / 2**20:,.0f} MiB of state")
    print("| what | seconds |")
    print("| --- | --- |")
    print(f"| digest of every array | {digest_s:.3f} |")
    print(f"| save (sync, digest included) | {save_s:.3f} |")
    print(f"| restore + verify | {restore_s:.3f} |")
    print(f"| digest / save | {digest_s / save_s:.3f} |")
    print(f"size on disk: {on_disk / 2**20:,.1f} MiB = {on_disk / state_bytes:.2f} x the arrays' bytes")


if __name__ == "__main__":
    main()
