"""Scale-out: sharded steps equal the single-device step, parameters really are sharded, several processes
train like one, checkpoints move between meshes, and bad meshes / batches / coordinators get clear errors.

Everything runs on the 8 simulated CPU devices of tests/conftest.py; the multi-process tests start local
processes that join through jax.distributed on localhost."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hubert_jax.data.pipeline import LabeledAudio, make_dataset
from hubert_jax.distributed import CoordinatorUnreachable, wait_for_coordinator
from hubert_jax.models.layers import conv1d
from hubert_jax.sharding import mesh_from_config
from hubert_jax.training.checkpoint import flatten
from hubert_jax.training.run import restore_latest, run
from hubert_jax.training.tasks import make_trainer
from hubert_jax.training.tasks.base import crop_config
from tests.environment import subprocess_env
from tests.processes import assert_params_close, free_port, train_command
from tests.tiny_config import ROOT, get_config


def _max_rel_diff(a, b) -> float:
    """The largest |a - b| of any leaf, relative to that leaf's largest |b|, at least 1e-6 (the gradients of
    the key biases are exactly 0 in theory, float noise of ~1e-11 in practice)."""
    return max(jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), 1e-6)), a, b)))


# ----------------------------------------------------------------------------- the XLA workaround
@pytest.mark.parametrize("cpu_vjp", [False, True])
def test_grouped_conv_kernel_gradient_is_right_when_the_batch_is_partly_sharded(monkeypatch, cpu_vjp):
    """XLA's grouped conv (feature_group_count) gets the kernel gradient wrong under SPMD when the batch is
    sharded over only some mesh axes; conv1d's per-group form (GPU/TPU) and its CPU backward must not."""
    from hubert_jax.models import layers

    monkeypatch.setattr(layers, "CPU_CONV_VJP", cpu_vjp)
    x = jax.random.normal(jax.random.key(0), (8, 25, 32))
    w = jax.random.normal(jax.random.key(1), (8, 8, 32))  # 4 groups of 8 channels

    def loss(x, w):
        return jnp.sum(jnp.sin(conv1d(x, w, padding=((4, 4),), groups=4)))

    reference = jax.jit(jax.grad(loss, argnums=1))(x, w)
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    shardings = (NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P(None, None, "fsdp")))
    sharded = jax.jit(jax.grad(loss, argnums=1), in_shardings=shardings)(
        jax.device_put(x, shardings[0]), jax.device_put(w, shardings[1]))
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(reference), atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------- sharded step == one device
MESHES = {"data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2), "data8": dict(data=8, fsdp=1, tensor=1),
          "fsdp8": dict(data=1, fsdp=8, tensor=1)}


def _two_steps(mesh):
    """loss, gradients and the parameters after two train steps (the second with a non-zero learning
    rate), from the same initial state and batches on any mesh."""
    cfg = get_config()
    trainer = make_trainer(cfg, mesh)
    data = crop_config(cfg, "train", labels=True)
    ds = make_dataset(LabeledAudio(data), data, batch_size=cfg.data.batch_size, seed=cfg.seed)
    state = trainer.init()
    first = trainer.global_batch(ds[0])
    loss, grads = _loss_and_grads(trainer, state, first)
    loss, grads = float(loss), jax.device_get(grads)
    state, _ = trainer.train_step(state, first)
    state, metrics = trainer.train_step(state, trainer.global_batch(ds[1]))
    assert float(metrics["lr"]) > 0
    return trainer, state, loss, grads


def _loss_and_grads(trainer, state, batch):
    """(loss, gradients) of the train step's forward pass (same keys), gradients on the parameters' shardings:
    what the sharded-equals-single-device checks compare."""
    from jax.sharding import NamedSharding, PartitionSpec

    def fn(state, batch, frozen):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        (loss, _), grads = jax.value_and_grad(trainer._forward, has_aux=True)(
            state["params"], state["rest"], batch, key, state["step"], False, frozen)
        return loss, grads

    replicated = NamedSharding(trainer.mesh, PartitionSpec())
    step = jax.jit(fn, in_shardings=(trainer.state_shardings, trainer.batch_sharding, trainer.frozen_shardings),
                   out_shardings=(replicated, trainer.state_shardings["params"]))
    return step(state, batch, trainer.frozen)


@pytest.fixture(scope="module")
def single_device():
    _, state, loss, grads = _two_steps(mesh_from_config(dict(data=1), jax.devices()[:1]))
    return loss, grads, jax.device_get(state["params"])


@pytest.mark.xdist_group("single_device")  # one worker runs them: the module fixture is computed once
@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_step_equals_the_single_device_step(single_device, name):
    trainer, state, loss, grads = _two_steps(mesh_from_config(MESHES[name]))
    ref_loss, ref_grads, ref_params = single_device
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert _max_rel_diff(grads, ref_grads) < 1e-4
    assert_params_close(state["params"], ref_params)

    # the parameters are laid out as the rules ask: per-device shard shapes of the tiny model (hidden 32,
    # feed-forward 64); q_proj is (embed, heads), intermediate_dense (embed, mlp)
    layer = state["params"]["hubert"]["encoder"]["layers"][0]
    q, ff = layer["attention"]["q_proj"]["kernel"], layer["feed_forward"]["intermediate_dense"]["kernel"]
    expected = {"data2_fsdp2_tensor2": ((16, 16), (16, 32)), "data8": ((32, 32), (32, 64)),
                "fsdp8": ((4, 32), (4, 64))}[name]
    assert {s.data.shape for s in q.addressable_shards} == {expected[0]}
    assert {s.data.shape for s in ff.addressable_shards} == {expected[1]}
    # and across the whole model: bytes held per device against the full parameter bytes
    leaves = jax.tree.leaves(state["params"])
    total = sum(x.size for x in leaves)
    per_device = sum(x.addressable_shards[0].data.size for x in leaves)
    if name == "data8":
        assert per_device == total
    else:  # fsdp8 shards everything with an embed dimension 8 ways; 2x2x2 shards most of it 2 or 4 ways
        assert per_device < {"fsdp8": 0.3, "data2_fsdp2_tensor2": 0.6}[name] * total
    # optimizer moments follow their parameters
    mu = trainer.state_shardings["opt_state"]
    assert any(s.spec == q.sharding.spec for s in jax.tree.leaves(mu, is_leaf=lambda x: isinstance(x, NamedSharding)))


# ----------------------------------------------------------------------------- several processes
def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path, gcs_bucket):
    """2 processes x 2 devices (jax.distributed on localhost, gloo collectives) against 1 process x 4
    devices, global batch 8, both starting from the same exported model (--config.model.init_from, which
    each host places shard by shard): the same batches, so the same parameters. The two hosts' model and
    workdir are in a bucket (gs://, the Cloud Storage emulator: tests/storage_emulator.py), as on a pod without
    a shared disk; the one process' on the local disk."""
    from hubert_jax import storage

    cfg = get_config()
    cfg.seed = 7  # weights no fresh run of the test config starts from
    trainer = make_trainer(cfg, mesh_from_config(dict(data=-1)))
    start = trainer.export(trainer.init(), f"{gcs_bucket}/{tmp_path.name}/start")
    init_from = f"--config.model.init_from={start}"
    two = f"{gcs_bucket}/{tmp_path.name}/two"
    port = free_port()
    procs = [subprocess.Popen(train_command(two, init_from, "--coordinator_address", f"127.0.0.1:{port}",
                                         "--num_processes", "2", "--process_id", str(i)),
                              env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    one = subprocess.run(train_command(tmp_path / "one", init_from), env=subprocess_env(4), capture_output=True,
                         text=True, timeout=600)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert one.returncode == 0, one.stderr[-3000:]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    cfg = get_config()
    cfg.train.update(dict(steps=4, checkpoint_every=4, eval_every=100))
    _, two_state = restore_latest(cfg, two)
    _, single = restore_latest(cfg, str(tmp_path / "one"))
    assert int(two_state["step"]) == int(single["step"]) == 4
    assert_params_close(two_state["params"], single["params"])
    metrics = storage.read_bytes(f"{two}/metrics.jsonl").decode()
    assert "initialised from" in metrics + outs[0]
    # only process 0 writes the logs
    assert len([line for line in metrics.splitlines() if '"train"' in line]) == 4
    assert {"run.log", "run-1.log"} <= set(storage.listdir(two))  # each host's log beside it


# ----------------------------------------------------------------------------- checkpoints across meshes
def test_a_checkpoint_restores_onto_a_different_mesh_and_training_continues(tmp_path):
    cfg = get_config()
    cfg.mesh.update(dict(data=1, fsdp=8, tensor=1))
    cfg.train.update(dict(steps=5, checkpoint_every=3))
    first = run(cfg, str(tmp_path), stop_after=3)
    saved = jax.device_get(first.state["params"])

    other = get_config()
    other.mesh.update(dict(data=4, fsdp=1, tensor=2))
    other.train.update(dict(steps=5, checkpoint_every=3))
    trainer, restored = restore_latest(other, str(tmp_path))
    assert dict(trainer.mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    q = restored["params"]["hubert"]["encoder"]["layers"][0]["attention"]["q_proj"]["kernel"]
    assert q.sharding.spec == P(None, "tensor") and q.addressable_shards[0].data.shape == (32, 16)
    for (path, a), b in zip(flatten(jax.device_get(restored["params"])).items(), flatten(saved).values()):
        np.testing.assert_array_equal(a, b, err_msg=path)  # bit-identical

    resumed = run(other, str(tmp_path))  # the data iterator resumes from the checkpoint too
    assert resumed.step == 5 and np.isfinite(resumed.train["loss"])
    assert _max_rel_diff(jax.device_get(resumed.state["params"]), saved) > 0


# ----------------------------------------------------------------------------- bad input
def test_mesh_errors_name_the_config_field():
    with pytest.raises(ValueError, match=r"config.mesh .* needs 16 devices, 8 are available"):
        mesh_from_config(dict(data=4, fsdp=2, tensor=2))
    with pytest.raises(ValueError, match=r"config.mesh.*8 devices are not a multiple of 3"):
        mesh_from_config(dict(data=-1, tensor=3))
    with pytest.raises(ValueError, match=r"unknown axes \['model'\]"):
        mesh_from_config(dict(data=-1, model=2))
    with pytest.raises(ValueError, match=r"dcn_data=3: must be >= 1 and divide the 8 devices"):
        mesh_from_config(dict(data=-1, dcn_data=3))


def test_global_batch_must_split_over_hosts():
    cfg = get_config()
    data = crop_config(cfg, "train", labels=True)
    with pytest.raises(ValueError, match=r"global batch \(8\) must be divisible by the 3 hosts"):
        make_dataset(LabeledAudio(data), data, batch_size=8, seed=0, process_index=0, process_count=3)


def test_every_host_reads_its_rows_of_the_same_global_batches():
    cfg = get_config()
    data = crop_config(cfg, "train", labels=True)
    source = LabeledAudio(data)
    whole = make_dataset(source, data, batch_size=8, seed=3)
    parts = [make_dataset(source, data, batch_size=8, seed=3, process_index=h, process_count=4) for h in range(4)]
    for b in (0, 5):
        joined = np.concatenate([p[b]["input_values"] for p in parts])
        np.testing.assert_array_equal(joined, whole[b]["input_values"])
        np.testing.assert_array_equal(np.concatenate([p[b]["labels"] for p in parts]), whole[b]["labels"])


def test_an_unreachable_coordinator_times_out_with_a_clear_message(tmp_path):
    port = free_port()  # nothing listens here
    start = time.monotonic()
    with pytest.raises(CoordinatorUnreachable, match=rf"127.0.0.1:{port} did not answer within 1 s"):
        wait_for_coordinator(f"127.0.0.1:{port}", 1)
    assert time.monotonic() - start < 10
    # and through train.py: a clean error and exit, not a hang or a C++ abort
    out = subprocess.run(train_command(tmp_path, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                                    "--process_id", "1", "--init_timeout", "2"),
                         env=subprocess_env(1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: the coordinator 127.0.0.1:{port} did not answer within 2 s"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Check failure" not in out.stderr


# ----------------------------------------------------------------------------- the label pipeline over hosts
def test_the_label_recipe_over_two_processes_equals_one_process(tmp_path):
    """README's pod recipe for labels, command by command, on 2 processes x 2 devices (jax.distributed on
    localhost) and on 1 process x 4 devices. Iteration 1: `mfcc` (a shard per host), `kmeans --nshard 2
    --percent` (every mini-batch split over both hosts' devices), `label --feats` (the utterances split between
    the hosts, the parts joined). Iteration 2 without a full dump: `dump --percent` (a sample shard per host),
    `kmeans` on it, `label --model`. Centroids and .km files equal those of the one process."""
    import hubert_jax
    from flax import nnx

    from tests.reference import TINY

    hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(TINY), rngs=nnx.Rngs(0)).save_pretrained(
        str(tmp_path / "it1"))
    manifest = os.path.join(ROOT, "data", "demo", "valid.tsv")
    fit = ["--batch-size", "256", "--max-iter", "5", "--n-init", "3"]

    def stages(run, *hosts):
        """The recipe's commands for one run (`one` or `two`); `hosts`: the multi-host flags."""
        d, two = str(tmp_path / run), bool(hosts)
        shard = ["--nshard", "2"] if two else ["--nshard", "1"]
        mfcc = ["--out", f"{d}/mfcc"] + (["--rank", "0", "--world", "1"] if not two else [])  # one process: _0_1
        return [["mfcc", "--manifest", manifest, *mfcc],
                ["kmeans", "--feats", f"{d}/mfcc", *shard, "--percent", "0.5", "--clusters", "6", *fit,
                 "--out", f"{d}/km6.npy"],
                ["label", "--feats", f"{d}/mfcc", *shard, "--centroids", f"{d}/km6.npy", "--out", f"{d}/it1.km"],
                ["dump", "--manifest", manifest, "--model", str(tmp_path / "it1"), "--layer", "2", "--percent",
                 "0.5", "--max-tokens", "96000", "--out", f"{d}/l2_sample"],
                ["kmeans", "--feats", f"{d}/l2_sample", *shard, "--clusters", "8", *fit, "--out", f"{d}/km8.npy"],
                ["label", "--model", str(tmp_path / "it1"), "--layer", "2", "--manifest", manifest, "--max-tokens",
                 "96000", "--centroids", f"{d}/km8.npy", "--out", f"{d}/it2.km"]]

    for stage in range(6):
        port = free_port()
        hosts = ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2"]
        procs = [subprocess.Popen([sys.executable, "-m", "hubert_jax.labels", *stages("two", *hosts)[stage], *hosts,
                                   "--process_id", str(i)], env=subprocess_env(2), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, cwd=ROOT) for i in range(2)]
        one = subprocess.run([sys.executable, "-m", "hubert_jax.labels", *stages("one")[stage]], env=subprocess_env(4),
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert one.returncode == 0, one.stderr[-3000:]
        for p in procs:
            out = p.communicate(timeout=300)[0]
            assert p.returncode == 0, out[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.glob("mfcc_*.npy")) == ["mfcc_0_2.npy", "mfcc_1_2.npy"]
    for centroids in ("km6.npy", "km8.npy"):
        # the all-reduce adds in another order: float noise, 1e-4 after 5 passes of 32-d features
        np.testing.assert_allclose(np.load(two / centroids), np.load(one / centroids), rtol=1e-4, atol=1e-4)
    for km in ("it1.km", "it2.km"):
        assert (two / km).read_text() == (one / km).read_text(), km
        assert len((two / km).read_text().splitlines()) == 27
    assert not list(two.glob("it1.km.part*"))  # label --feats: process 0 joined the parts and removed them
    # label --model: the last host done joined them; the parts stay (another host may be joining them too)
    assert sorted(p.name for p in two.glob("it2.km.part?-of-2")) == ["it2.km.part0-of-2", "it2.km.part1-of-2"]


def test_memory_benchmark_measures_the_compiled_sharded_step():
    """benchmarks/memory.py on the tiny config: the state's per-device share is the eval_shape figure."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    flags_before = os.environ.get("XLA_FLAGS")
    import memory

    assert os.environ.get("XLA_FLAGS") == flags_before  # importing it leaves later subprocesses alone

    sharded = memory.measure("tests/tiny_config.py", 8, "fsdp=-1", "float32", "full", True)
    replicated = memory.measure("tests/tiny_config.py", 8, "data=-1", "float32", "none", False)
    assert sharded["params"] == replicated["params"] > 0
    # params + 2 Adam moments in float32 (+ a few scalars) when replicated; fsdp holds a fraction of that
    assert replicated["state"] >= 12 * replicated["params"]
    assert sharded["state"] < 0.5 * replicated["state"]
    assert sharded["per_chip_batch"] == replicated["per_chip_batch"] == 1
    assert sharded["peak"] > sharded["arguments"] > 0 and sharded["temp"] < replicated["temp"]
