"""XLA flags our entry points set before JAX starts its backends.

XLA reads `XLA_FLAGS` once, when the first backend starts, so `set_performance_flags()` must run before
any device is touched (train.py calls it first thing). A flag the user already put in `XLA_FLAGS`
wins: we only add flags that are not named there. XLA parses every backend's flags on any backend,
so the GPU flags are harmless on CPU/TPU, and an unknown flag aborts at start-up (the tests check
that these parse with the installed jaxlib).
"""

from __future__ import annotations

import os

GPU_FLAGS = {
    # overlap collectives (FSDP all-gathers, gradient reduce-scatters) with compute; NVIDIA's JAX
    # containers set it by default. Command buffers (CUDA graphs) are left at XLA's default, which
    # already records fusions, cuBLAS, cuDNN and custom calls.
    "xla_gpu_enable_latency_hiding_scheduler": "true",
}


def _named(flags: str) -> set[str]:
    return {f.lstrip("-").split("=", 1)[0] for f in flags.split() if f.startswith("--")}


def performance_flags(existing: str) -> str:
    """`existing` XLA_FLAGS with our flags added where the user has not set them."""
    present = _named(existing)
    added = [f"--{k}={v}" for k, v in GPU_FLAGS.items() if k not in present]
    return " ".join([existing.strip(), *added]).strip()


def set_performance_flags(environ=os.environ) -> str:
    """Add the performance flags to XLA_FLAGS (before JAX starts its backend); returns the new value."""
    environ["XLA_FLAGS"] = performance_flags(environ.get("XLA_FLAGS", ""))
    return environ["XLA_FLAGS"]


def enable_compilation_cache(environ=os.environ) -> str:
    """JAX's persistent compilation cache, so a restarted run (and every bucket shape it had compiled)
    starts without recompiling: `$JAX_COMPILATION_CACHE_DIR` when the user set it, else
    `$XDG_CACHE_HOME/hubert-jax/jax` (default `~/.cache/hubert-jax/jax`). Returns the directory."""
    import jax

    directory = jax.config.jax_compilation_cache_dir or environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory:
        base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(base, "hubert-jax", "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory
