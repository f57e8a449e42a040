"""The XLA settings of the test processes (tests/conftest.py's own and the subprocesses the tests start).

Most tests compile a program and run it a few times, so on CI's 2 cores XLA's CPU compiler is where their time
goes. Without LLVM's optimisation passes it compiles in about 0.6x the time and the programs compute the
same values (only their speed differs). The few tests that run hundreds of steps (tests/test_curves.py) run
in a subprocess with `optimise=True`, XLA's defaults, where execution dominates.
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
