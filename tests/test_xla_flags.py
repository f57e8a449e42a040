"""The XLA flags our entry points add: the user's own flags win, and every flag parses in this jaxlib."""

import os
import subprocess
import sys

from hubert_jax import xla_flags


def test_user_flags_win_and_ours_are_added_once():
    got = xla_flags.performance_flags("--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/x")
    assert got == "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/x"
    got = xla_flags.performance_flags("--xla_force_host_platform_device_count=8")
    assert got == "--xla_force_host_platform_device_count=8 --xla_gpu_enable_latency_hiding_scheduler=true"
    assert xla_flags.performance_flags(got) == got
    env = {}
    assert xla_flags.set_performance_flags(env) == env["XLA_FLAGS"] == xla_flags.performance_flags("")


def test_flags_parse_in_the_installed_jaxlib():
    # XLA aborts at start-up on an unknown flag, on any backend: a renamed flag fails here, not on a GPU
    env = dict(os.environ, XLA_FLAGS=xla_flags.performance_flags(""), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "3.0", out.stderr[-2000:]
    bad = dict(env, XLA_FLAGS="--xla_gpu_no_such_flag=true")
    out = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.ones(3).sum()"],
                         env=bad, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "Unknown flag" in out.stderr  # the check above can fail


def test_the_compilation_cache_is_on_and_written(tmp_path):
    code = ("from hubert_jax import xla_flags; d = xla_flags.enable_compilation_cache(); import jax, jax.numpy as jnp;"
            " jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready(); print(d)")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    directory = out.stdout.strip()
    assert directory == str(tmp_path / "hubert-jax" / "jax") and os.listdir(directory)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")  # the user's choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.stdout.strip() == str(tmp_path / "mine")
