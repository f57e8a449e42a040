"""Quick start: build a released architecture with random weights and run it on synthetic audio.

    python -m hubert_jax.quickstart --preset hubert-base --seconds 10 --batch 1
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hubert_jax.config import PRESETS, preset
from hubert_jax import families
from hubert_jax.lengths import SAMPLE_RATE


def synthetic_audio(batch: int, seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Chirps plus a little noise: deterministic stand-in audio."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.RandomState(seed)
    rows = [0.3 * np.sin(2 * np.pi * (200 + 100 * i + 300 * t) * t) + 0.01 * rng.randn(t.size) for i in range(batch)]
    audio = np.stack(rows).astype(np.float32)
    return (audio - audio.mean(-1, keepdims=True)) / (audio.std(-1, keepdims=True) + 1e-7)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hubert-base", choices=sorted(PRESETS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--scan", action="store_true", help="scan over encoder layers")
    args = parser.parse_args(argv)

    config = preset(args.preset)
    model = families.base_model_class(config.model_type)(config, rngs=nnx.Rngs(0), dtype=jnp.dtype(args.dtype),
                                                         scan_layers=args.scan)
    n_params = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    audio = jnp.asarray(synthetic_audio(args.batch, args.seconds))

    forward = nnx.jit(lambda m, x: m(x, output_hidden_states=True))
    start = time.perf_counter()
    out = jax.block_until_ready(forward(model, audio))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(forward(model, audio))
    run_s = time.perf_counter() - start

    print(f"{args.preset} (random weights): {n_params / 1e6:.1f}M parameters, device {jax.devices()[0]}")
    print(f"input {tuple(audio.shape)} -> last_hidden_state {tuple(out.last_hidden_state.shape)} "
          f"{out.last_hidden_state.dtype}, {len(out.hidden_states)} hidden states, "
          f"extract_features {tuple(out.extract_features.shape)}")
    print(f"first call (compile + run) {compile_s:.2f} s; steady state {run_s:.3f} s = "
          f"{args.batch * args.seconds / run_s:.1f} audio seconds per second")
    return {"params": n_params, "seconds_per_call": run_s, "shape": tuple(out.last_hidden_state.shape)}


if __name__ == "__main__":
    main()
