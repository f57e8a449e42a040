"""Per-chip memory of the compiled pretraining step, for full-size recipes on simulated TPU slices.

    python benchmarks/memory.py                          # the README table (large and xlarge, v4 and v5e)
    python benchmarks/memory.py --config configs/hubert_large.py --chips 32 --mesh fsdp=-1 \
        --dtype bfloat16 --remat dots --hbm-gib 32

No accelerator is needed: the step is lowered and compiled for N simulated CPU devices with the recipe's
shardings, and XLA's memory analysis of the compiled SPMD program gives the per-device sizes (arguments:
the sharded train state and batch; temporaries: activations kept for the backward pass and workspace).
The state's share is also computed exactly from `jax.eval_shape` and the shardings. The CPU compiler
fuses and schedules differently from the TPU one, so read the temporaries as an estimate of what the TPU
compiler will need, not a measurement of it; the state's share is exact.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hubert_jax.lengths import SAMPLE_RATE  # noqa: E402

GiB = 1024 ** 3

# (recipe, chips, chip, HBM GiB): a v4-64 slice is 32 chips (2 TensorCores each, 32 GiB HBM per chip);
# a v5e-64 slice is 64 chips of 16 GiB
TABLE = [
    ("configs/hubert_large.py", 32, "v4-64", 32),
    ("configs/hubert_large.py", 64, "v5e-64", 16),
    ("configs/hubert_xlarge.py", 32, "v4-64", 32),
    ("configs/hubert_xlarge.py", 64, "v5e-64", 16),
]
SETTINGS = [  # (mesh, compute dtype, encoder remat policy, remat of the conv feature encoder)
    ("data=-1", "bfloat16", "none", False),
    ("fsdp=-1", "bfloat16", "dots_no_batch", False),
    ("fsdp=-1", "bfloat16", "full", False),
    ("fsdp=-1", "bfloat16", "full", True),
]


def load_config(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, path) if not os.path.isabs(path)
                                                  else path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_mesh(text: str) -> dict:
    out = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in text.split(","):
        axis, _, size = part.partition("=")
        out[axis.strip()] = int(size)
    return out


def measure(config_path: str, chips: int, mesh_text: str, dtype: str, remat: str, remat_conv: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hubert_jax.data.pipeline import DataConfig
    from hubert_jax.sharding import mesh_from_config
    from hubert_jax.training.tasks import make_trainer
    from hubert_jax.training.trainer import param_count

    cfg = load_config(config_path)
    cfg.model.dtype = dtype
    cfg.model.remat_policy = remat
    cfg.model.remat_conv = remat_conv
    cfg.model.scan_layers = True  # one layer compiled once: the same memory, a much faster compile
    mesh = mesh_from_config(parse_mesh(mesh_text), jax.devices()[:chips])
    trainer = make_trainer(cfg, mesh)
    batch, crop = cfg.data.batch_size, cfg.data.crop_samples
    if batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"global batch {batch} does not split over {dict(mesh.shape)}")
    label_len = DataConfig(crop_samples=crop, label_rate=cfg.model.head.label_rate).label_length
    abstract_batch = {"input_values": jax.ShapeDtypeStruct((batch, crop), jnp.float32),
                      "attention_mask": jax.ShapeDtypeStruct((batch, crop), jnp.int32),
                      "labels": jax.ShapeDtypeStruct((batch, len(cfg.model.head.num_classes), label_len), jnp.int32)}
    start = time.perf_counter()
    compiled = trainer._train_jit.lower(trainer.abstract_state, abstract_batch, trainer.frozen).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    shardings = jax.tree.leaves(trainer.state_shardings)
    state_bytes = sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
                      for x, s in zip(jax.tree.leaves(trainer.abstract_state), shardings))
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return dict(params=param_count(trainer.abstract_state["params"]), per_chip_batch=batch // (
        mesh.shape["data"] * mesh.shape["fsdp"]), crop_s=crop / SAMPLE_RATE, state=state_bytes,
        arguments=m.argument_size_in_bytes, temp=m.temp_size_in_bytes, peak=peak, compile_s=seconds)


def row(config_path, chips, chip, hbm, mesh_text, dtype, remat, remat_conv) -> str:
    r = measure(config_path, chips, mesh_text, dtype, remat, remat_conv)
    fits = "yes" if r["peak"] <= 0.9 * hbm * GiB else "no"
    name = os.path.splitext(os.path.basename(config_path))[0]
    return (f"| {name} | {chip} ({chips} chips, {hbm:g} GiB) | {mesh_text} | {dtype} | {remat} | "
            f"{'yes' if remat_conv else 'no'} | {r['per_chip_batch']} x {r['crop_s']:.1f} s | {r['state'] / GiB:.2f} | {r['temp'] / GiB:.2f} | "
            f"{r['peak'] / GiB:.2f} | {fits} | {r['compile_s']:.0f} |")


HEADER = ("| recipe | slice | mesh | compute | encoder remat | conv remat | batch per chip | state GiB | "
          "temporaries GiB | peak GiB | fits (<= 90% HBM) | compile s (CPU) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _simulate_devices() -> None:
    """Up to 64 simulated CPU devices for the table. Only when run as a script, before jax is imported:
    importing this module (the tests do) must not change the environment of later processes."""
    count = int(os.environ.get("HUBERT_JAX_MEMORY_DEVICES", "64"))
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="one recipe instead of the table")
    p.add_argument("--chips", type=int, default=32)
    p.add_argument("--chip", default="v4")
    p.add_argument("--hbm-gib", type=float, default=32)
    p.add_argument("--mesh", default="fsdp=-1")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", default="none", help="encoder layers: none | full | dots | dots_no_batch")
    p.add_argument("--remat-conv", action="store_true", help="recompute the conv feature encoder too")
    args = p.parse_args(argv)
    import jax

    print(f"jax {jax.__version__}, {jax.device_count()} simulated {jax.devices()[0].platform} devices; "
          f"per-device sizes from the compiled step's memory analysis")
    print(HEADER)
    if args.config:
        print(row(args.config, args.chips, args.chip, args.hbm_gib, args.mesh, args.dtype, args.remat,
                  args.remat_conv), flush=True)
        return 0
    for config_path, chips, chip, hbm in TABLE:
        for mesh_text, dtype, remat, remat_conv in SETTINGS:
            print(row(config_path, chips, chip, hbm, mesh_text, dtype, remat, remat_conv), flush=True)
    return 0


if __name__ == "__main__":
    _simulate_devices()
    sys.exit(main())
