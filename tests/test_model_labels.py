"""`labels label --model DIR --layer L`: labels straight from a model's layer, no feature dump; equal to
`dump` then `label --feats`, sharded over hosts (the last host done joins the parts), resumable."""

import os
import shutil

import numpy as np
import pytest
from flax import nnx

import hubert_jax
from hubert_jax.data.manifest import read_manifest, read_skipped
from hubert_jax.labels import dump as dump_module
from hubert_jax.labels.cli import main
from hubert_jax.labels.features import load_features
from hubert_jax.labels.provenance import StaleOutput
from tests.reference import TINY

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model directory, a manifest of 7 demo files and one unreadable file, the dumped way's labels
    (dump + k-means centroids from its features + label --feats)."""
    root = tmp_path_factory.mktemp("model_labels")
    hubert_jax.HubertModel(hubert_jax.HubertConfig.from_dict(TINY), rngs=nnx.Rngs(0)).save_pretrained(
        str(root / "model"))
    entries = read_manifest(os.path.join(DEMO, "valid.tsv"))[:7]
    for e in entries:
        shutil.copy(e.path, root / os.path.basename(e.path))
    rows = [f"{os.path.basename(e.path)}\t{e.num_samples}" for e in entries]
    rows.insert(3, "broken.flac\t16000")
    (root / "broken.flac").write_bytes(b"not audio")
    (root / "m.tsv").write_text("\n".join(["."] + rows) + "\n")
    # calls of at most 6 s of audio (a few rows; the default budget is 64 s a call): the same for both ways
    common = ["--model", str(root / "model"), "--layer", "2", "--manifest", str(root / "m.tsv"), "--max-tokens",
              "96000"]
    # files read one at a time here, four ahead (the default) by label --model: the same labels either way
    assert main(["dump", *common, "--threads", "1", "--out", str(root / "feats"), "--rank", "0", "--world", "1"]) == 0
    feats, _ = load_features(str(root / "feats_0_1"))
    np.save(root / "c.npy", np.asarray(feats[::37][:12]))
    assert main(["label", "--feats", str(root / "feats_0_1"), "--centroids", str(root / "c.npy"),
                 "--out", str(root / "dumped.km")]) == 0
    return root, common + ["--centroids", str(root / "c.npy"), "--chunk-size", "3"]


def test_labels_from_the_model_equal_the_dumped_way_and_write_no_features(setup, tmp_path):
    root, args = setup
    assert main(["label", *args, "--out", str(tmp_path / "direct.km")]) == 0
    assert (tmp_path / "direct.km").read_text() == (root / "dumped.km").read_text()
    lines = (tmp_path / "direct.km").read_text().splitlines()
    assert len(lines) == 8 and lines[3] == ""  # the unreadable file: an empty line, and why
    assert list(read_skipped(str(tmp_path / "direct.km.skipped"))) == [3]
    assert read_skipped(str(tmp_path / "direct.km.skipped")) == read_skipped(str(root / "dumped.km.skipped"))
    assert sorted(os.listdir(tmp_path)) == ["direct.km", "direct.km.made.json", "direct.km.skipped"]  # no features


def test_a_finished_output_made_by_another_layer_is_refused_not_reused(setup, tmp_path):
    root, args = setup
    assert main(["label", *args, "--out", str(tmp_path / "x.km")]) == 0
    other = [a if a != "2" else "1" for a in args]  # --layer 1
    with pytest.raises(StaleOutput, match=r"(?s)made by other inputs or settings.*layer: on disk 2, now 1"):
        main(["label", *other, "--out", str(tmp_path / "x.km")])
    assert (tmp_path / "x.km").read_text() == (root / "dumped.km").read_text()


def test_two_hosts_write_parts_and_the_last_one_done_joins_them(setup, tmp_path):
    root, args = setup
    out = str(tmp_path / "two.km")
    assert main(["label", *args, "--out", out, "--rank", "1", "--world", "2"]) == 0
    assert not os.path.exists(out) and os.path.exists(f"{out}.part1-of-2")  # rank 0 is not done yet
    assert main(["label", *args, "--out", out, "--rank", "0", "--world", "2"]) == 0
    assert open(out).read() == (root / "dumped.km").read_text()
    assert read_skipped(f"{out}.skipped") == read_skipped(str(root / "dumped.km.skipped"))


def test_an_interrupted_run_resumes_from_its_chunks(setup, tmp_path, monkeypatch):
    root, args = setup
    real, calls = dump_module._chunk_features, {"n": 0}

    def crash_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("preempted")
        return real(*a, **k)

    monkeypatch.setattr(dump_module, "_chunk_features", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        main(["label", *args, "--out", str(tmp_path / "run.km")])
    assert sorted(p for p in os.listdir(tmp_path) if ".chunk" in p) == ["run.km.chunk00000.km"]
    monkeypatch.setattr(dump_module, "_chunk_features", real)
    calls["n"] = 0
    monkeypatch.setattr(dump_module, "_chunk_features", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1)
                        or real(*a, **k))
    assert main(["label", *args, "--out", str(tmp_path / "run.km")]) == 0
    assert calls["n"] == 2  # chunks 2 and 3 of 3: the first was reused
    assert (tmp_path / "run.km").read_text() == (root / "dumped.km").read_text()


def test_bad_arguments(setup, tmp_path):
    root, args = setup
    with pytest.raises(SystemExit, match="give exactly one of --feats PREFIX"):
        main(["label", "--centroids", str(root / "c.npy"), "--out", str(tmp_path / "x.km")])
    with pytest.raises(SystemExit, match="label --model: give --layer as well"):
        main(["label", "--model", str(root / "model"), "--manifest", str(root / "m.tsv"), "--centroids",
              str(root / "c.npy"), "--out", str(tmp_path / "x.km")])
    np.save(tmp_path / "wide.npy", np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match=r"centroids of shape \(4, 7\) for a model of hidden size 32"):
        main(["label", *args, "--centroids", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "x.km")])


def test_kmeans_on_a_sample_dump_equals_kmeans_on_the_same_utterances_of_the_full_dump(setup, tmp_path):
    """No full dump for k-means: `dump --percent` computes only the sampled utterances' features, and k-means on
    them gives the centroids that `kmeans --percent` (the same utterances, drawn from the same seed) gives on the
    full dump."""
    from hubert_jax.labels.sample import frame_rows, sample_utterances

    root, args = setup
    common = args[:args.index("--centroids")]
    assert main(["dump", *common, "--out", str(tmp_path / "sample"), "--rank", "0", "--world", "1",
                 "--percent", "0.5", "--sample-seed", "3", "--chunk-size", "2"]) == 0
    full, full_lengths = load_features(str(root / "feats_0_1"))
    part, part_lengths = load_features(str(tmp_path / "sample_0_1"))
    chosen = sample_utterances(8, 0.5, 3)
    assert len(chosen) == 4 and part_lengths == [full_lengths[i] for i in chosen]
    np.testing.assert_array_equal(part, full[frame_rows(full_lengths, chosen)])
    fit = ["--clusters", "5", "--batch-size", "64", "--max-iter", "3", "--n-init", "2", "--seed", "3"]
    assert main(["kmeans", "--feats", str(tmp_path / "sample_0_1"), *fit, "--out", str(tmp_path / "a.npy")]) == 0
    assert main(["kmeans", "--feats", str(root / "feats_0_1"), "--percent", "0.5", *fit,
                 "--out", str(tmp_path / "b.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(root / "c.npy"))
    with pytest.raises(ValueError, match=r"holds a sample of 0.5 of the manifest's utterances \(dump --percent\)"):
        main(["label", "--feats", str(tmp_path / "sample_0_1"), "--centroids", str(tmp_path / "a.npy"),
              "--out", str(tmp_path / "x.km")])
    with pytest.raises(ValueError, match=r"--percent 0.01 takes 1 utterances, \d+ frames, fewer than --clusters 100000"):
        main(["kmeans", "--feats", str(root / "feats_0_1"), "--percent", "0.01", "--clusters", "100000",
              "--out", str(tmp_path / "c.npy")])
