"""The XLA settings of the test processes (tests/conftest.py's own and the subprocesses the tests start).

Most tests compile a program and run it a few times, so on CI's 2 cores XLA's CPU compiler is where their time
goes. Without LLVM's optimisation passes it compiled two shrunk recipes' steps in 0.62x the time. The programs
then round differently in the last bits (seen: 4e-9 in a training state, 1.3e-8 in a gradient). So do programs
compiled on different CPUs, so no test compares its bits with a file another machine wrote. A test whose
tolerance follows XLA's defaults, and the few that run hundreds of steps, where execution dominates, are
marked `xla_defaults` (tests/conftest.py) and run in a child pytest with `optimise=True`.
Nothing here imports jax: conftest.py sets XLA_FLAGS from it before jax starts."""

import os

FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def xla_flags(devices: int = 8, *, optimise: bool = False) -> str:
    """XLA_FLAGS for `devices` simulated host devices, compiled fast unless `optimise`."""
    return " ".join([f"--xla_force_host_platform_device_count={devices}", *(() if optimise else FAST_COMPILE)])


def subprocess_env(devices: int = 8, *, optimise: bool = False) -> dict:
    """This process' environment for a child with its own device count (one process of a jax.distributed
    run when a coordinator is passed on its command line, never through the environment)."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices, optimise=optimise), PYTHONUNBUFFERED="1")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return env


# glibc's malloc returns large freed blocks to the kernel (mmap'd blocks are unmapped, the heap's top trimmed),
# so a step that allocates its activations again faults every page in again. Kept in the process instead, 100
# updates of configs/curves_wav2vec2.py took 86.5 CPU seconds against 102.3 (page faults 0.5M against 7.2M,
# system time 5.7 s against 21.9 s, max RSS 2.1 GB against 1.6 GB); curves_hubert's 68.6 against 78.9. A
# compile-bound test is unchanged (three shrunk recipes: 77.9 against 77.4). Given to the xla_defaults children
# (tests/conftest.py), which run hundreds of steps and then exit; not to the long-lived test workers.
KEEP_FREED_MEMORY = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:"
                     "glibc.malloc.top_pad=268435456")
