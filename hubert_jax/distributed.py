"""Joining a multi-host run: `jax.distributed.initialize`, from the cluster's environment or explicit flags.

One program runs per host. On Cloud TPU pods, SLURM and Open MPI jobs JAX finds the coordinator, the process
count and this process' index in the environment; elsewhere (several local processes, a hand-made GPU
cluster) pass them explicitly (`--coordinator_address host:port --num_processes N --process_id i`), or set
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Must run before anything touches a device.

JAX's own client aborts the process (a C++ fatal error) when the coordinator does not answer in time, so
a process that is not the coordinator first checks that the coordinator's port accepts connections and,
if it does not within the timeout, raises `CoordinatorUnreachable` naming the address and the flags.
"""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger(__name__)

# environment variables that mark a multi-process job JAX can set itself up from
_CLUSTER_MARKERS = {
    "TPU pod": lambda env: "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env,
    "SLURM": lambda env: int(env.get("SLURM_NTASKS", env.get("SLURM_STEP_NUM_TASKS", "1")) or 1) > 1,
    "Open MPI": lambda env: int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1,
}


class CoordinatorUnreachable(RuntimeError):
    """The coordinator of a multi-host run did not accept a connection within the timeout."""


def detected_cluster(env=None) -> str | None:
    """The kind of multi-process job the environment describes, or None."""
    env = os.environ if env is None else env
    return next((name for name, present in _CLUSTER_MARKERS.items() if present(env)), None)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once `host:port` accepts a TCP connection; raise CoordinatorUnreachable after `timeout_s`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator address {address!r}: expected host:port")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, max(timeout_s, 0.1))):
                return
        except OSError as e:
            last_error = e
        if time.monotonic() >= deadline:
            raise CoordinatorUnreachable(
                f"the coordinator {address} did not answer within {timeout_s:g} s ({last_error}). Start process 0 "
                f"(the coordinator) first, check --coordinator_address (host:port of process 0, reachable from "
                f"this host) and firewalls, or raise --init_timeout")
        time.sleep(0.25)


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300, mode: str = "auto") -> bool:
    """Join the run's other processes. mode "auto": when explicit flags, JAX_COORDINATOR_ADDRESS or a
    cluster environment say there are several processes; "on": always (a cluster JAX detects but this module
    does not list); "off": never. Returns whether jax.distributed was initialised."""
    import jax

    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed={mode!r}: expected auto, on or off")
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = coordinator_address is not None
    cluster = detected_cluster(env)
    if mode == "off" or (mode == "auto" and not explicit and cluster is None):
        return False
    if explicit:
        missing = [name for name, value in (("--num_processes", num_processes), ("--process_id", process_id))
                   if value is None]
        if missing:
            raise ValueError(f"--coordinator_address {coordinator_address} needs {' and '.join(missing)} too")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id {process_id} must be in [0, --num_processes {num_processes})")
        if process_id != 0:
            wait_for_coordinator(coordinator_address, timeout_s)
        logger.info("joining %s as process %d of %d (timeout %d s)", coordinator_address, process_id,
                    num_processes, timeout_s)
    else:
        logger.info("joining the %s job JAX detects from the environment", cluster or "multi-process")
    # cross-process collectives for CPU devices (only the CPU client reads it; nothing may touch a backend yet)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s)
    logger.info("process %d of %d; %d local devices of %d", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
    return True


def all_hosts_agree(ok: bool) -> bool:
    """True when every process says ok, so that all of them take the same branch (ok itself on one)."""
    import jax

    if jax.process_count() == 1:
        return bool(ok)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def sync(name: str) -> None:
    """A barrier of every process (nothing on one)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
