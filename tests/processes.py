"""train.py in subprocesses, as the kill, several-process and disk tests start it (tests/test_train.py,
test_scale.py, test_buckets.py, test_workdir_safety.py): the command on tests/tiny_config.py, a run started
with its output in a file and waited on step by step, a free port for jax.distributed's coordinator, and the
comparison of the parameters two runs end with."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from hubert_jax.training.checkpoint import flatten
from tests.tiny_config import ROOT

TRAIN = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "tests", "tiny_config.py")]


def train_command(workdir, *extra) -> list[str]:
    """4 steps, one checkpoint at the end, no evaluation."""
    return TRAIN + ["--workdir", str(workdir), "--config.train.steps=4", "--config.train.checkpoint_every=4",
                    "--config.train.eval_every=100", *extra]


def start(workdir, *extra) -> subprocess.Popen:
    log = open(os.path.join(workdir, "train.log"), "w")  # a file: a full pipe would block the run
    return subprocess.Popen(TRAIN + ["--workdir", str(workdir), *extra], stdout=log, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)


def output(workdir) -> str:
    return open(os.path.join(workdir, "train.log")).read()


def progress(workdir) -> int:
    """The last step metrics.jsonl has a whole line for (0 before the first)."""
    try:
        lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x)["step"] for x in lines if x.strip().endswith("}")), default=0)


def wait_for_step(proc, workdir, step, timeout=300):
    deadline = time.time() + timeout
    while progress(workdir) < step:
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited early ({proc.returncode}):\n{output(workdir)[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"train.py made no progress:\n{output(workdir)[-3000:]}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_params_close(a, b, *, rtol: float = 1e-4):
    """float32 agreement of two trees of arrays (parameters, or a whole train state) after a few Adam steps,
    leaf by leaf, naming the leaf that differs. Adam turns the key biases' float-noise gradients (~1e-11, zero
    in theory) into updates of ~1e-8, hence the absolute tolerance."""
    flat_a, flat_b = flatten(jax.device_get(a)), flatten(jax.device_get(b))
    assert flat_a.keys() == flat_b.keys(), sorted(flat_a.keys() ^ flat_b.keys())
    for path, x in flat_a.items():
        np.testing.assert_allclose(x, flat_b[path], rtol=rtol, atol=1e-6, err_msg=path)
