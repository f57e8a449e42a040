import os
import subprocess
import sys

import pytest

from tests.environment import KEEP_FREED_MEMORY, subprocess_env, xla_flags

# 8 simulated devices for the multi-device tests, compiled fast (tests/environment.py); must be set before jax
# is imported
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gcsfs reads this when imported: its hierarchical-namespace probe talks gRPC to the real service, which the tests'
# storage emulator (tests/storage_emulator.py) is not
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# compiled programs are cached on disk, so the many short training runs (in process and in the train.py
# subprocesses, which inherit this) compile each program once
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# The longest tests start first (measured: `pytest -n 2 --durations=0`, CI's 2 cores), so that the two workers
# end together instead of one running a ten-minute test alone at the end. Order only: every test runs.
# pyproject.toml's `--dist loadgroup --no-loadscope-reorder` makes pytest-xdist hand out tests (or a marked
# xdist_group, as one unit) a few at a time, in this order.
SLOW_FIRST = (
    "tests/test_curves.py::test_wav2vec2_learns_as_fairseq",
    "tests/test_curves.py::test_hubert_learns_as_fairseq",
    "tests/test_demo.py::",
    "tests/test_buckets.py::test_kill_9_then_restart_is_bit_identical_with_buckets",
    "tests/test_benchmarks.py::",
    "tests/test_buckets.py::test_two_processes_train_like_one_with_buckets",
    "tests/test_scale.py::test_two_processes_train_like_one_process_with_the_same_global_batch",
    "tests/test_scale.py::test_sharded_step_equals_the_single_device_step",  # a group of 3, with its fixture
    "tests/test_wavlm.py::test_wavlm_trains_through_the_loop_and_logs_the_mixed_share",
    "tests/test_wav2vec2.py::test_a_wav2vec2_run_logs_its_figures_and_resumes_exactly",
    "tests/test_recipe_configs.py::test_two_real_steps_with_a_shrunk_model",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: collection order within each rank


# A test marked `xla_defaults(reason)` runs in a child pytest under XLA's default CPU compiler (tests/environment.py):
# the ones that run hundreds of steps, where execution and not compilation takes the time, and the ones whose
# expected bits were written under the default compiler. The reason is shown when the child fails.
CHILD = "HUBERT_JAX_TEST_CHILD"


def pytest_configure(config):
    config.addinivalue_line("markers", "xla_defaults(reason): run in a child pytest under XLA's default CPU "
                                       "compiler (tests/conftest.py)")


def pytest_pyfunc_call(pyfuncitem):
    marker = pyfuncitem.get_closest_marker("xla_defaults")
    if marker is None or os.environ.get(CHILD):
        return None
    env = dict(subprocess_env(8, optimise=True), **{CHILD: "1", "GLIBC_TUNABLES": KEEP_FREED_MEMORY})
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    done = subprocess.run(command, cwd=str(pyfuncitem.config.rootpath), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"in a child pytest under XLA's default compiler ({marker.args[0]}):\n"
                    f"{done.stdout[-8000:]}\n{done.stderr[-2000:]}", pytrace=False)
    return True


@pytest.fixture(scope="session")
def gcs_bucket():
    """gs:// of a bucket on a Cloud Storage emulator that this test process started (tests/storage_emulator.py)."""
    from hubert_jax import storage
    from tests.storage_emulator import running_emulator

    with running_emulator("hubert-jax-tests") as (_, bucket):
        storage._filesystem.cache_clear()  # a client made before the emulator's variables were set
        yield bucket
    storage._filesystem.cache_clear()
