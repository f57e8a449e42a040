"""One accelerator check, one report: run it first whenever a GPU is at hand (at most ~8 minutes on one GPU).

    python benchmarks/gpu_check.py                 # on the GPU
    python benchmarks/gpu_check.py --smoke         # anywhere (CI, on CPU): tiny sizes (--models tiny), every section

Sections, each timed, each reported even when another fails:
1. fused attention against XLA: cuDNN (`attention_impl="cudnn"`) against `xla`, outputs and parameter
   gradients, HuBERT and WavLM (its gated position bias), a padded batch, bf16 (on CPU: `auto` against
   `xla`, cuDNN being GPU-only);
2. the inference table (`benchmarks/inference.py`: bf16, base and large, batch 1/8/32, against transformers
   sdpa and flash-attention-2 when installed) with MFU;
3. the training-step table (`benchmarks/training.py`) with MFU;
4. one bucketed pretraining step per bucket of configs/hubert_base_iter1.py at fairseq's per-GPU budget
   (1.4M samples), with its time, audio seconds per second and MFU.

Needs jax, flax, optax, numpy, safetensors, torch, transformers and ml_collections (which hubert-jax's
training configs are written in; pure Python). It checks them first and names whatever is missing. It needs
no grain, tensorflow-datasets or soundfile.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from hubert_jax.lengths import SAMPLE_RATE  # noqa: E402
NEEDED = ("jax", "flax", "optax", "numpy", "safetensors", "torch", "transformers", "ml_collections")


def missing_modules() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def attention_check(smoke: bool) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from hubert_jax.config import preset
    from hubert_jax.models import HubertModel, WavLMModel

    gpu = jax.devices()[0].platform == "gpu"
    fused = "cudnn" if gpu else "auto"
    dtype = "bfloat16" if gpu else "float32"
    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    seconds = 1.0 if smoke else 4.0
    n = int(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, n)), jnp.float32)
    mask = jnp.asarray((np.arange(n)[None] < np.array([[n], [n * 2 // 3]])).astype(np.int32))
    print("| model | fused | dtype | max abs output diff | max abs gradient diff / max abs gradient |")
    print("|---|---|---|---|---|")
    for name, cls, base in (("hubert", HubertModel, "hubert-base"), ("wavlm", WavLMModel, "wavlm-base")):
        config = preset(base).replace(**tiny) if smoke else preset(base)
        outs, grads = {}, {}
        for impl in (fused, "xla"):
            model = cls(config, rngs=nnx.Rngs(0), dtype=dtype, attention_impl=impl)

            def loss(m):
                return jnp.mean(jnp.square(m(x, attention_mask=mask).last_hidden_state.astype(jnp.float32)))

            outs[impl] = np.asarray(model(x, attention_mask=mask).last_hidden_state, np.float32)
            grads[impl] = [np.asarray(g, np.float32) for g in jax.tree.leaves(nnx.jit(nnx.grad(loss))(model))]
        valid = np.asarray(mask).astype(bool)[:, :: 320][:, : outs["xla"].shape[1]]
        out_diff = float(np.abs(outs[fused] - outs["xla"])[valid].max())
        grad_diff = max(float(np.abs(a - b).max()) for a, b in zip(grads[fused], grads["xla"]))
        grad_scale = max(float(np.abs(b).max()) for b in grads["xla"])
        print(f"| {name} | {fused} | {dtype} | {out_diff:.3g} | {grad_diff / grad_scale:.3g} |", flush=True)


def bucketed_steps(smoke: bool) -> None:
    import jax
    import numpy as np

    from inference import TINY, gflop

    from hubert_jax.data.buckets import batch_sizes
    from hubert_jax.sharding import mesh_from_config
    from hubert_jax.training.tasks import make_trainer

    from hubert_jax.training.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "hubert_base_iter1.py"))
    per_gpu = cfg.data.max_tokens // 32  # fairseq: 1.4M samples per GPU
    if smoke:
        cfg.model.overrides.update(TINY)  # the benchmarks' tiny model (benchmarks/inference.py)
        cfg.model.head.update(dict(final_dim=16))
        cfg.data.buckets, per_gpu = (SAMPLE_RATE, 2 * SAMPLE_RATE), 64000
    else:
        cfg.model.dtype = "bfloat16"
    cfg.mesh.update(dict(data=1, fsdp=1, tensor=1))
    trainer = make_trainer(cfg, mesh_from_config(cfg.mesh, devices=jax.devices()[:1]))
    state = trainer.initial_state(trainer.init())
    sizes = batch_sizes(cfg.data.buckets, per_gpu, 1)
    peak = 989.0 if any(k in jax.devices()[0].device_kind for k in ("H100", "H200")) else None
    rng = np.random.default_rng(0)
    print("| bucket (samples) | rows | first step (compile) s | step s | audio s/s | MFU |")
    print("|---|---|---|---|---|---|")
    for length, rows in zip(cfg.data.buckets, sizes):
        frames = int(length / SAMPLE_RATE * cfg.model.head.label_rate)
        batch = {"input_values": rng.standard_normal((rows, length), np.float32),
                 "attention_mask": np.ones((rows, length), np.int32),
                 "labels": rng.integers(0, cfg.model.head.num_classes[0], (rows, 1, frames), dtype=np.int32)}
        batch = jax.device_put(batch, trainer.batch_sharding)
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics["loss"])
        first = time.perf_counter() - start
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics["loss"])
        step = time.perf_counter() - start
        seconds = rows * length / SAMPLE_RATE
        mfu = f"{3 * gflop('base', rows, length / SAMPLE_RATE) / step / 1e3 / peak:.1%}" if peak and not smoke else "n/a"
        print(f"| {length} | {rows} | {first:.1f} | {step:.3f} | {seconds / step:.0f} | {mfu} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks that every section runs")
    p.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are skipped past it")
    args = p.parse_args(argv)
    missing = missing_modules()
    if missing:
        print(f"gpu_check needs {', '.join(missing)} besides what is installed: install them (pure-Python "
              f"ml_collections can be copied from a venv's site-packages and put on PYTHONPATH)")
        return 2
    import inference
    import training

    jax, platform, device, kind, _ = inference.start_devices(None)
    started = time.perf_counter()
    print(f"gpu_check: {kind} ({platform}); jax {jax.__version__}; {'smoke sizes' if args.smoke else 'full sizes'}")
    sections = [
        ("1. fused attention against XLA", lambda: attention_check(args.smoke)),
        ("2. inference", lambda: inference.main(
            ["--models", "tiny", "--seconds", "0.5", "--repeats", "1", "--torch-impls", "eager"] if args.smoke else
            ["--models", "base,large", "--batches", "1,8,32", "--dtype", "bfloat16", "--repeats", "5"])),
        ("3. training step", lambda: training.main(
            ["--models", "tiny", "--batch", "1", "--seconds", "0.5", "--repeats", "1"] if args.smoke else
            ["--models", "base,large", "--dtype", "bfloat16", "--repeats", "3"])),
        ("4. one bucketed pretraining step per bucket", lambda: bucketed_steps(args.smoke)),
    ]
    failed = []
    for title, run in sections:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget:
            print(f"\n## {title}: skipped, {elapsed:.0f} s spent of the {args.budget:.0f} s budget")
            continue
        print(f"\n## {title}", flush=True)
        start = time.perf_counter()
        try:
            run()
        except Exception:  # report and go on: one broken section must not hide the others
            failed.append(title)
            print("FAILED:\n" + traceback.format_exc(limit=6))
        print(f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\ngpu_check: {len(sections) - len(failed)} of {len(sections)} sections ran in "
          f"{time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
