"""The label stages end to end on the shipped corpus, and their errors for bad input."""

import os
import re
import shutil

import numpy as np
import pytest

from hubert_jax.data.manifest import read_entry_audio, read_int_labels, read_manifest
from hubert_jax.labels.cli import main
from hubert_jax.labels.features import load_features, load_skipped

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo")


def test_mfcc_kmeans_label_quality_on_the_demo_corpus(tmp_path, capsys):
    manifest = os.path.join(DEMO, "valid.tsv")
    assert main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "valid")]) == 0
    feats, lengths = load_features(str(tmp_path / "valid"))
    assert feats.shape[1] == 39 and len(lengths) == len(read_manifest(manifest))
    # outputs into folders that do not exist yet: made before the work, not an error after it
    centroids = str(tmp_path / "km" / "c.npy")
    assert main(["kmeans", "--feats", str(tmp_path / "valid"), "--clusters", "20", "--out", centroids,
                 "--batch-size", "2000", "--max-iter", "10", "--n-init", "3", "--data-parallel"]) == 0
    assert main(["label", "--feats", str(tmp_path / "valid"), "--centroids", centroids,
                 "--out", str(tmp_path / "labels" / "valid.km")]) == 0
    km = read_int_labels(str(tmp_path / "labels" / "valid.km"), lengths)
    assert all(k.max() < 20 for k in km)
    # each stage reports its progress with the time left; not a terminal here: plain lines, no redraws
    err = capsys.readouterr().err
    for stage in ("mfcc: 100%", "k-means: ", "label: 100%"):
        assert stage in err, err[-2000:]
    assert "\r" not in err and "<" in err.split("mfcc: 100%")[1].splitlines()[0]
    assert main(["quality", "--km", str(tmp_path / "labels" / "valid.km"), "--phones", os.path.join(DEMO, "valid.phn"),
                 "--manifest", manifest]) == 0
    pnmi = float(capsys.readouterr().out.split("PNMI")[1].split()[0])
    assert pnmi > 0.3  # chance is ~0; 20 MFCC clusters on the demo corpus measured 0.4-0.5


def _copy_manifest(tmp_path, lines):
    src = read_manifest(os.path.join(DEMO, "valid.tsv"))[:3]
    for e in src:
        shutil.copy(e.path, tmp_path / os.path.basename(e.path))
    rows = [f"{os.path.basename(e.path)}\t{e.num_samples}" for e in src]
    (tmp_path / "m.tsv").write_text("\n".join(["."] + rows + lines) + "\n")
    return src


def test_missing_audio_is_named_with_its_line(tmp_path):
    _copy_manifest(tmp_path, ["gone.flac\t16000"])
    with pytest.raises(FileNotFoundError, match=r"m.tsv: 1 audio file\(s\) missing \(line 5: .*gone.flac"):
        main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "f")])


def test_bad_manifest_line(tmp_path):
    (tmp_path / "m.tsv").write_text(".\na.flac 123\n")
    with pytest.raises(ValueError, match=r"m.tsv:2: expected 'relative/path<TAB>num_samples'"):
        read_manifest(str(tmp_path / "m.tsv"))


def test_unusable_audio_is_skipped_with_a_count_or_stops_with_strict(tmp_path, capsys):
    import soundfile as sf

    _copy_manifest(tmp_path, ["short.flac\t100", "broken.flac\t16000", "nan.wav\t16000"])
    sf.write(tmp_path / "short.flac", np.zeros(100, np.float32), 16000)
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    sf.write(tmp_path / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    assert main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "f")]) == 0
    assert f"from 3 files (3 skipped, listed in {tmp_path / 'f'}.skipped)" in capsys.readouterr().out
    _, lengths = load_features(str(tmp_path / "f"))
    assert lengths[3:] == [0, 0, 0] and all(n > 0 for n in lengths[:3])  # manifest order kept
    with pytest.raises(ValueError, match="short.flac: 100 samples"):
        main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "g"), "--strict"])


def test_mfcc_streams_in_manifest_order_across_skipped_rows_and_a_failed_run_changes_nothing(tmp_path, capsys):
    """Features are written as they come (batches of --batch), an unusable row anywhere gets 0 frames in its
    place, and the file equals np.save of the whole; a run that stops leaves the last output as it was."""
    import soundfile as sf

    from hubert_jax.labels.mfcc import mfcc_with_deltas

    src = read_manifest(os.path.join(DEMO, "valid.tsv"))[:3]
    for e in src:
        shutil.copy(e.path, tmp_path / os.path.basename(e.path))
    names = [os.path.basename(e.path) for e in src]
    rows = [f"{names[0]}\t{src[0].num_samples}", "broken.flac\t16000", f"{names[1]}\t{src[1].num_samples}",
            "short.flac\t100", f"{names[2]}\t{src[2].num_samples}"]
    (tmp_path / "m.tsv").write_text("\n".join(["."] + rows) + "\n")
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    sf.write(tmp_path / "short.flac", np.zeros(100, np.float32), 16000)
    assert main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "f"), "--batch", "2"]) == 0
    feats, lengths = load_features(str(tmp_path / "f"))
    alone = mfcc_with_deltas([read_entry_audio(str(tmp_path / "m.tsv"), e, normalize=False)
                              for e in read_manifest(str(tmp_path / "m.tsv")) if e.path.endswith(tuple(names))])
    assert lengths[1] == lengths[3] == 0 and [lengths[i] for i in (0, 2, 4)] == [len(a) for a in alone]
    np.testing.assert_array_equal(feats, np.concatenate(alone))
    assert sorted(load_skipped(str(tmp_path / "f"))) == [1, 3]
    np.save(tmp_path / "whole.npy", np.concatenate(alone))
    assert (tmp_path / "f.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    before = {p: (tmp_path / p).read_bytes() for p in ("f.npy", "f.len", "f.skipped")}
    with pytest.raises(ValueError, match="broken.flac"):
        main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "f"), "--strict"])
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == sorted(names + ["broken.flac", "short.flac", "m.tsv", "whole.npy"]
                                                  + list(before) + ["f.made.json"])


def test_mfcc_shards_by_rank_and_world_join_to_the_one_host_features(tmp_path):
    """Three hosts' `mfcc --rank R --world 3` shards, read back by `--nshard 3`, equal one host's features,
    with the skipped rows' reasons at their places in the whole manifest; `label` gives the same .km."""
    src = _copy_manifest(tmp_path, ["broken.flac\t16000"])
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    manifest = str(tmp_path / "m.tsv")
    assert main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "one")]) == 0
    for rank in range(3):
        assert main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "sh"), "--rank", str(rank),
                     "--world", "3"]) == 0
    one, one_lengths = load_features(str(tmp_path / "one"))
    sharded, lengths = load_features(str(tmp_path / "sh"), 3)
    assert lengths == one_lengths and len(lengths) == len(src) + 1
    np.testing.assert_array_equal(np.asarray(sharded), one)
    assert load_skipped(str(tmp_path / "sh"), 3) == load_skipped(str(tmp_path / "one")) and 3 in load_skipped(
        str(tmp_path / "one"))
    np.save(tmp_path / "c.npy", np.asarray(one[::50]))
    for feats, nshard in (("one", "0"), ("sh", "3")):
        assert main(["label", "--feats", str(tmp_path / feats), "--nshard", nshard, "--centroids",
                     str(tmp_path / "c.npy"), "--out", str(tmp_path / f"{feats}.km")]) == 0
    assert (tmp_path / "sh.km").read_text() == (tmp_path / "one.km").read_text()


def test_label_files_checked_against_the_manifest(tmp_path):
    manifest = os.path.join(DEMO, "valid.tsv")
    lines = open(os.path.join(DEMO, "valid.phn")).read().splitlines()
    (tmp_path / "short.km").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"short.km: 26 lines, but the manifest has 27 utterances"):
        main(["quality", "--km", str(tmp_path / "short.km"), "--phones", os.path.join(DEMO, "valid.phn"),
              "--manifest", manifest])
    bad = list(lines)
    bad[4] = " ".join(bad[4].split()[:-7])
    (tmp_path / "frames.km").write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"frames.km:5: .* labels, expected .* frames: is the label rate right"):
        main(["quality", "--km", str(tmp_path / "frames.km"), "--phones", os.path.join(DEMO, "valid.phn"),
              "--manifest", manifest])
    # 100 Hz labels declared as 50 Hz: every line has twice the frames expected
    with pytest.raises(ValueError, match=r"valid.phn:1: .* is the label rate right"):
        main(["quality", "--km", os.path.join(DEMO, "valid.phn"), "--phones", os.path.join(DEMO, "valid.phn"),
              "--manifest", manifest, "--label-rate", "50"])


def test_non_finite_feature_frames_are_dropped_by_kmeans_with_a_count_and_refused_by_label(tmp_path, capsys):
    """One NaN frame used to give a NaN centroid, and `label` then put every frame in one cluster."""
    manifest = os.path.join(DEMO, "valid.tsv")
    entries = read_manifest(manifest)
    feats = str(tmp_path / "f")
    assert main(["mfcc", "--manifest", manifest, "--out", feats]) == 0
    values = np.load(feats + ".npy")
    lengths = [int(n) for n in open(feats + ".len")]
    first = sum(lengths[:2])  # utterance 2's frames
    values[first + 5, 3] = np.nan
    values[first + 9, 0] = np.inf
    np.save(feats + ".npy", values)
    capsys.readouterr()
    assert main(["kmeans", "--feats", feats, "--clusters", "8", "--out", str(tmp_path / "c.npy"), "--n-init", "2",
                 "--max-iter", "3"]) == 0
    out, err = capsys.readouterr()
    assert f"dropped 2 frames of 1 utterance(s) (utterance 2 ({entries[2].path}): 2 frames): NaN or infinite" in err
    per_frame = re.search(r"inertia per frame (\S+) \(on (\d+) frames\)", out)  # the sample without those 2
    assert np.isfinite(float(per_frame[1])) and int(per_frame[2]) == len(values) - 2, out
    assert np.isfinite(np.load(tmp_path / "c.npy")).all()
    with pytest.raises(ValueError, match=rf"label: {feats}: 2 frames of 1 utterance\(s\) \(utterance 2 "
                                         rf"\({entries[2].path}\): 2 frames\) are NaN or infinite"):
        main(["label", "--feats", feats, "--centroids", str(tmp_path / "c.npy"), "--out", str(tmp_path / "v.km")])
    assert not os.path.exists(tmp_path / "v.km")


def test_kmeans_never_returns_a_non_finite_centroid():
    from hubert_jax.labels.kmeans import KMeansConfig, fit

    x = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    x[17, 2] = np.nan
    with pytest.raises(ValueError, match="centroids are not finite"):
        fit(x, KMeansConfig(4, batch_size=50, max_iter=2, n_init=1))


def test_rows_read_in_chunks_with_their_pages_released_equal_plain_indexing(tmp_path):
    from hubert_jax.labels.features import Rows, read_rows, release_pages, save_features

    rng = np.random.default_rng(0)
    save_features(str(tmp_path / "a"), [rng.normal(size=(n, 7)) for n in (300, 5, 1200)], dims=7)
    save_features(str(tmp_path / "b"), [rng.normal(size=(n, 7)) for n in (40, 900)], dims=7)
    single, _ = load_features(str(tmp_path / "a"))
    both = Rows([single, load_features(str(tmp_path / "b"))[0]])
    for features in (single, both):
        rows = np.sort(rng.choice(len(features), 500, replace=False))
        np.testing.assert_array_equal(read_rows(features, rows, chunk=64), np.asarray(features[rows], np.float32))
        release_pages(features)  # the map stays usable: the pages come back from the page cache
        np.testing.assert_array_equal(np.asarray(features[rows[:3]]), read_rows(features, rows[:3]))
