"""Length buckets with a token budget (hubert_jax/data/buckets.py) on a corpus of short utterances of
many lengths: batch sizes, the plan, host invariance, crops without padding, fine-tuning keeps every
utterance, and a bucketed batch's loss is that of its crops one by one."""

import os

import numpy as np
import pytest

from hubert_jax.data.buckets import BatchPlan, batch_sizes, crop_bucket, pad_bucket
from hubert_jax.data.pipeline import DataConfig, LabeledAudio, make_dataset

BUCKETS = (8000, 16000, 24000)
MAX_TOKENS = 8 * 24000  # rows: 24, 12 -> 8, 8


def short_corpus(root, count=96, seed=0):
    """Utterances of 0.4 to 2 s with 100 Hz labels: a manifest and a .km file."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    os.makedirs(root / "wav", exist_ok=True)
    rows, labels = [str(root)], []
    for i in range(count):
        n = int(rng.integers(6400, 32000))
        sf.write(root / "wav" / f"{i}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), 16000,
                 subtype="FLOAT")
        rows.append(f"wav/{i}.wav\t{n}")
        labels.append(" ".join(map(str, (np.arange(round(n / 160)) % 50))))  # label = frame index mod 50
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    (root / "train.km").write_text("\n".join(labels) + "\n")
    return DataConfig(manifest=str(root / "train.tsv"), labels=(str(root / "train.km"),), label_rate=100.0,
                      crop_samples=24000, min_samples=6400, buckets=BUCKETS, max_tokens=MAX_TOKENS)


def test_batch_sizes_fill_the_budget_in_multiples_of_the_shards():
    assert batch_sizes(BUCKETS, MAX_TOKENS, 8) == (24, 8, 8)
    assert batch_sizes(BUCKETS, MAX_TOKENS, 1) == (24, 12, 8)
    with pytest.raises(ValueError, match=r"data.max_tokens=100000: the buckets of 16000, 24000 samples hold fewer "
                                         r"rows than the 8 .*at least 192000"):
        batch_sizes(BUCKETS, 100000, 8)


def test_bucket_rules():
    assert [crop_bucket(n, BUCKETS) for n in (6400, 8000, 15999, 16000, 99999)] == [0, 0, 0, 1, 2]
    assert [pad_bucket(n, BUCKETS) for n in (1, 8000, 8001, 24000, 24001)] == [0, 0, 1, 2, None]


def test_plan_is_deterministic_and_uses_each_utterance_at_most_once_per_epoch():
    buckets = np.random.default_rng(0).integers(0, 3, 200)
    plan = BatchPlan(buckets, (16, 8, 8), seed=5)
    again = BatchPlan(buckets, (16, 8, 8), seed=5)
    first = [plan[i] for i in range(plan.per_epoch)]
    assert all(np.array_equal(a[1], again[i][1]) for i, a in enumerate(first))
    used = np.concatenate([items for _, items, _, _ in first])
    assert len(used) == len(set(used.tolist()))
    assert all(np.all(buckets[items] == k) and len(items) == (16, 8, 8)[k] for k, items, _, _ in first)
    assert sorted({k for k, _, _, _ in first}) == [0, 1, 2]
    second = [plan[plan.per_epoch + i][1] for i in range(plan.per_epoch)]
    assert any(not np.array_equal(a[1], b) for a, b in zip(first, second))  # a new shuffle each epoch
    assert BatchPlan(buckets, (16, 8, 8), seed=5, repeat=False, shuffle=False).__len__() == plan.per_epoch


def test_pretraining_batches_are_crops_without_padding_and_labels_follow(tmp_path):
    config = short_corpus(tmp_path)
    source = LabeledAudio(config)
    ds = make_dataset(source, config, batch_size=0, seed=1, data_shards=8)
    shapes = set()
    for i in range(12):
        batch = ds[i]
        rows, length = batch["input_values"].shape
        assert (rows, length) in {(24, 8000), (8, 16000), (8, 24000)}
        # no padding, except utterances shorter than the smallest bucket (min_samples lets them in)
        short = batch["attention_mask"].sum(1) < length
        assert not short.any() or (length == BUCKETS[0] and np.all(batch["attention_mask"].sum(1) >= 6400))
        assert batch["labels"].shape == (rows, 1, length // 160)
        # labels are frame indices mod 50, cut at the crop's offset: consecutive
        for row, labels in zip(batch["attention_mask"], batch["labels"][:, 0]):
            real = labels[: int(round(row.sum() / 160))]
            assert np.all(np.diff(real) % 50 == 1) and np.all(labels[len(real):] == -1)
        shapes.add(length)
    assert shapes == set(BUCKETS)


def test_hosts_read_their_rows_of_the_same_bucketed_batches(tmp_path):
    config = short_corpus(tmp_path)
    source = LabeledAudio(config)
    whole = make_dataset(source, config, batch_size=0, seed=3, data_shards=8)
    parts = [make_dataset(source, config, batch_size=0, seed=3, process_index=h, process_count=2, data_shards=8)
             for h in range(2)]
    for b in (0, 3, 7):
        for key in ("input_values", "labels"):
            np.testing.assert_array_equal(np.concatenate([p[b][key] for p in parts]), whole[b][key])


def test_finetuning_keeps_every_utterance_padded_to_its_bucket(tmp_path):
    from hubert_jax.data.targets import TargetAudio
    from hubert_jax.training.config import pretraining_defaults
    from hubert_jax.training.tasks.finetune import finetune_data_config

    config = short_corpus(tmp_path)
    lengths = [int(line.split("\t")[1]) for line in (tmp_path / "train.tsv").read_text().splitlines()[1:]]
    cfg = pretraining_defaults()
    cfg.data.buckets, cfg.data.max_tokens = (8000, 16000), 8 * max(lengths)
    data = finetune_data_config(cfg, config.manifest, max(lengths))
    assert data.buckets == (8000, 16000, max(lengths))
    source = TargetAudio(config.manifest, [[1, 2]] * len(lengths), max_samples=max(lengths), label_length=4)
    ds = make_dataset(source, data, batch_size=0, seed=0, shuffle=False, repeat=False, transform=source.pad,
                      data_shards=8)
    seen = 0
    for i in range(len(ds)):
        batch = ds[i]
        length = batch["input_values"].shape[1]
        real = batch["attention_mask"].sum(1)
        assert np.all(real <= length) and np.all(real > ([0] + list(data.buckets))[data.buckets.index(length)])
        seen += len(real)
    # batches are whole (drop_remainder per bucket); what one epoch leaves out is less than a batch per bucket
    sizes = batch_sizes(data.buckets, data.max_tokens, 8)
    assert len(lengths) - seen < sum(sizes)


def test_a_bucketed_batch_scores_like_its_crops_one_by_one(tmp_path):
    """fairseq's weighting: the loss is the sum over scored frames divided by their count, so a batch's
    loss is the frame-weighted mean of its rows' losses whatever the batch size."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from hubert_jax.config import HubertConfig
    from hubert_jax.masking import span_mask
    from hubert_jax.models.pretraining_hubert import HeadConfig, HubertForPreTraining, pretraining_loss

    config = short_corpus(tmp_path)
    batch = make_dataset(LabeledAudio(config), config, batch_size=0, seed=1, data_shards=8)[0]
    model_cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
                             mask_time_prob=0.05)
    model = HubertForPreTraining(model_cfg, HeadConfig(num_classes=(50,), final_dim=16, label_rate=100.0),
                                 rngs=nnx.Rngs(0))
    x, labels = jnp.asarray(batch["input_values"]), jnp.asarray(batch["labels"][:, 0])
    frames = model.hubert.feature_extractor(x).shape[1]
    masks = span_mask(jax.random.key(0), (x.shape[0], frames), mask_prob=0.8, mask_length=10, min_masks=2)
    loss, metrics = pretraining_loss(model(x, labels, mask_time_indices=masks))
    sums, counts = 0.0, 0
    for i in range(x.shape[0]):
        _, one = pretraining_loss(model(x[i:i + 1], labels[i:i + 1], mask_time_indices=masks[i:i + 1]))
        sums += float(one["loss_m"]) * int(one["masked_frames"])
        counts += int(one["masked_frames"])
    np.testing.assert_allclose(float(metrics["loss_m"]), sums / counts, rtol=1e-5)
    np.testing.assert_allclose(float(loss) - 10 * float(metrics["features_pen"]), sums / counts, rtol=1e-5)


# ----------------------------------------------------------------------------- whole runs with buckets
def bucket_flags(root) -> list[str]:
    config = short_corpus(root)
    return [f"--config.data.train.manifest={config.manifest}", f"--config.data.train.labels=('{config.labels[0]}',)",
            "--config.data.valid.manifest=", f"--config.data.buckets={BUCKETS}",
            f"--config.data.max_tokens={MAX_TOKENS}", "--config.data.min_samples=8000",
            "--config.model.head.num_classes=(50,)", "--config.model.head.label_rate=100.0"]


def bucketed_config(root):
    from tests import tiny_config

    cfg = tiny_config.get_config()
    config = short_corpus(root)
    cfg.data.train.update(dict(manifest=config.manifest, labels=config.labels))
    cfg.data.valid.manifest = ""
    cfg.data.update(dict(buckets=BUCKETS, max_tokens=MAX_TOKENS, min_samples=8000))
    cfg.model.head.update(dict(num_classes=(50,), label_rate=100.0))
    return cfg


def test_kill_9_then_restart_is_bit_identical_with_buckets(tmp_path):
    import signal
    import subprocess

    from hubert_jax.training.run import restore_latest, run
    from tests.processes import TRAIN, start, wait_for_step
    from tests.test_train import ROOT, assert_same_params

    corpus = tmp_path / "corpus"
    reference = run(bucketed_config(corpus), str(tmp_path / "reference"))
    assert reference.step == 12
    kill_at = int(np.random.default_rng(99).integers(2, 10))
    flags = bucket_flags(corpus) + ["--config.train.checkpoint_every=1"]
    (tmp_path / "run").mkdir()
    proc = start(tmp_path / "run", *flags)
    wait_for_step(proc, tmp_path / "run", kill_at)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(TRAIN + ["--workdir", str(tmp_path / "run"), *flags], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout and "(compilation)" in done.stdout + done.stderr
    cfg = bucketed_config(corpus)
    cfg.train.checkpoint_every = 1
    _, state = restore_latest(cfg, str(tmp_path / "run"))
    assert int(state["step"]) == 12
    assert_same_params(reference.state, state)


def test_two_processes_train_like_one_with_buckets(tmp_path):
    import subprocess

    from hubert_jax.training.run import restore_latest
    from tests.environment import subprocess_env
    from tests.processes import assert_params_close, free_port, train_command

    flags = bucket_flags(tmp_path / "corpus")
    port = free_port()
    procs = [subprocess.Popen(train_command(tmp_path / "two", *flags, "--coordinator_address", f"127.0.0.1:{port}",
                                         "--num_processes", "2", "--process_id", str(i)),
                              env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    one = subprocess.run(train_command(tmp_path / "one", *flags), env=subprocess_env(4), capture_output=True,
                         text=True, timeout=600)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert one.returncode == 0, one.stderr[-3000:]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    cfg = bucketed_config(tmp_path / "corpus")
    cfg.train.update(dict(steps=4, checkpoint_every=4, eval_every=100))
    _, two = restore_latest(cfg, str(tmp_path / "two"))
    _, single = restore_latest(cfg, str(tmp_path / "one"))
    assert int(two["step"]) == int(single["step"]) == 4
    assert_params_close(two["params"], single["params"])
