"""Layer-feature dumping: exact features, host sharding in manifest order, resumption after a crash."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hubert_jax
from hubert_jax.data.manifest import read_audio, read_manifest
from hubert_jax.labels import dump as dump_module
from hubert_jax.labels.features import load_features
from hubert_jax.labels.dump import dump_features, shard_range
from tests.reference import TINY

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo")


def dump(model, entries, prefix, **kwargs):
    """dump_features with a call budget of about a chunk's rows: the default (64 s of audio a call, every call
    full so that shards equal one host bit for bit) would compute mostly padding for these 2-3 utterance chunks."""
    return dump_features(model, entries, prefix, **{"max_tokens": 3 * 64000, **kwargs})


@pytest.fixture(scope="module")
def setup():
    model = hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(TINY), rngs=nnx.Rngs(0))
    return model, read_manifest(os.path.join(DEMO, "valid.tsv"))[:7]


def test_exact_features_match_the_model(tmp_path, setup):
    model, entries = setup
    dump(model, entries, str(tmp_path / "f"), layer=2, chunk_size=3)
    feats, lengths = load_features(str(tmp_path / "f"))
    bounds = np.cumsum([0] + lengths)
    for i, entry in enumerate(entries[:3]):
        audio = read_audio(entry.path)
        ref = model(jnp.asarray(audio)[None], output_hidden_states=True).hidden_states[2][0]
        np.testing.assert_allclose(feats[bounds[i]: bounds[i + 1]], np.asarray(ref), atol=1e-5)
    assert not [p for p in os.listdir(tmp_path) if ".chunk" in p]  # chunks merged and removed


def test_batched_shapes_equal_one_by_one_and_shards_keep_manifest_order(tmp_path, setup):
    model, entries = setup
    dump(model, entries, str(tmp_path / "all"), layer=1, chunk_size=2)
    for rank in range(3):
        dump(model, entries, str(tmp_path / f"part_{rank}_3"), layer=1, rank=rank, world=3, chunk_size=2)
    whole, lengths = load_features(str(tmp_path / "all"))
    parts, part_lengths = load_features(str(tmp_path / "part"), nshard=3)
    np.testing.assert_array_equal(parts, whole)
    assert part_lengths == lengths
    batched_dir = tmp_path / "batched"  # one call for all 7 utterances, three padded lengths
    dump(model, entries, str(batched_dir), layer=1, max_tokens=7 * 80000)
    batched, _ = load_features(str(batched_dir))
    np.testing.assert_allclose(batched, whole, atol=1e-5)  # the group norm sees the real samples only
    assert shard_range(7, 3, 0) == (0, 2) and shard_range(7, 3, 2) == (5, 7)


def test_an_interrupted_dump_resumes_and_gives_the_same_result(tmp_path, setup, monkeypatch):
    model, entries = setup
    dump(model, entries, str(tmp_path / "ref"), layer=1, chunk_size=2)
    real = dump_module._chunk_features
    calls = {"n": 0}

    def crash_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("preempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(dump_module, "_chunk_features", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        dump(model, entries, str(tmp_path / "run"), layer=1, chunk_size=2)
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("run.chunk")) == [
        "run.chunk00000.len", "run.chunk00000.npy", "run.chunk00001.len", "run.chunk00001.npy"]
    monkeypatch.setattr(dump_module, "_chunk_features", real)
    stats = dump(model, entries, str(tmp_path / "run"), layer=1, chunk_size=2)
    assert stats["computed"] == 2 and stats["chunks"] == 4  # two chunks were reused
    np.testing.assert_array_equal(load_features(str(tmp_path / "run"))[0], load_features(str(tmp_path / "ref"))[0])
    assert dump(model, entries, str(tmp_path / "run"), layer=1, chunk_size=2)["computed"] == 0


def test_layer_out_of_range(tmp_path, setup):
    model, entries = setup
    with pytest.raises(ValueError, match="layer 9: the model has hidden states 0..3"):
        dump(model, entries, str(tmp_path / "x"), layer=9)


def _manifest_of(entries, path):
    with open(path, "w") as f:
        f.write("/\n" + "".join(f"{e.path}\t{e.num_samples}\n" for e in entries))
    return str(path)


def test_a_rerun_with_another_model_or_layer_refuses_the_old_features_naming_what_differs(tmp_path, setup):
    """Iteration-2 labels must never come from the features of another model or layer: `labels dump` into an
    --out that holds them refuses (the line counts agree, so nothing else would tell)."""
    from hubert_jax.labels.cli import main

    model, entries = setup
    manifest = _manifest_of(entries[:3], tmp_path / "m.tsv")
    first, second = str(tmp_path / "m1"), str(tmp_path / "m2")
    model.save_pretrained(first)
    hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(TINY), rngs=nnx.Rngs(1)).save_pretrained(second)
    out = str(tmp_path / "l")
    dump = ["dump", "--manifest", manifest, "--out", out, "--rank", "0", "--world", "1"]
    assert main(dump + ["--model", first, "--layer", "1"]) == 0
    kept = load_features(out + "_0_1")[0].copy()
    with pytest.raises(ValueError, match=r"(?s)made by other inputs or settings.*model: on disk '.*m1', now '.*m2'.*"
                                         r"weights: on disk '[0-9a-f]+', now '[0-9a-f]+'"):
        main(dump + ["--model", second, "--layer", "1"])
    with pytest.raises(ValueError, match=r"(?s)made by other inputs or settings.*layer: on disk 1, now 2"):
        main(dump + ["--model", first, "--layer", "2"])
    np.testing.assert_array_equal(load_features(out + "_0_1")[0], kept)  # nothing of the user's was touched
    # another manifest (same line count) is another input too
    other = _manifest_of(entries[3:6], tmp_path / "other.tsv")
    with pytest.raises(ValueError, match=r"(?s)manifest: on disk .*m.tsv', now .*other.tsv'"):
        main(["dump", "--manifest", other, "--out", out, "--rank", "0", "--world", "1", "--model", first,
              "--layer", "1"])
    # the same inputs reuse what is there
    assert main(dump + ["--model", first, "--layer", "1"]) == 0


def test_chunks_without_a_record_are_not_reused(tmp_path, setup):
    model, entries = setup
    prefix = str(tmp_path / "run")
    dump(model, entries, prefix, layer=1, chunk_size=2)
    os.remove(prefix + ".made.json")  # as an older version left its output
    with pytest.raises(ValueError, match=r"output file\(s\) are already there .* with no record of what made them"):
        dump(model, entries, prefix, layer=1, chunk_size=2)


def test_a_second_dump_on_the_same_out_is_refused_naming_the_first(tmp_path, setup):
    import socket

    from hubert_jax.training.workdir_lock import WorkdirBusy, WorkdirLock

    model, entries = setup
    prefix = str(tmp_path / "l6_0_1")
    with WorkdirLock(str(tmp_path), name="l6_0_1.lock"):  # a dump of this process still running
        with pytest.raises(WorkdirBusy, match=rf"{prefix} \(its chunks and shard\) is in use by another run \(host "
                                              rf"{socket.gethostname()}, pid {os.getpid()}.*use another --out"):
            dump(model, entries, prefix, layer=1, chunk_size=2)
    assert os.listdir(tmp_path) == []  # refused before any chunk was written
    dump(model, entries, prefix, layer=1, chunk_size=2)
    assert not os.path.exists(prefix + ".lock")  # given back
