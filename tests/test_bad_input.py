"""Bad audio, manifests, labels and paths, through the public commands: each is refused (or skipped and
counted) with a message that names the file or line and what was expected."""

import logging
import os

import numpy as np
import pytest
import soundfile as sf

from hubert_jax.data.manifest import AudioError, read_entry_audio, read_manifest
from hubert_jax.data.pipeline import DataConfig, LabeledAudio
from hubert_jax.labels.cli import main
from hubert_jax.labels.features import load_features
from hubert_jax.training.run import run
from tests import tiny_config

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo")


def _corpus(tmp_path, extra_rows=(), count=3):
    """The first `count` demo utterances copied to tmp_path as WAV, a manifest of them plus `extra_rows`,
    and their real (100 Hz) phone labels."""
    entries = read_manifest(os.path.join(DEMO, "valid.tsv"))[:count]
    phones = open(os.path.join(DEMO, "valid.phn")).read().splitlines()[:count]
    rows = []
    for i, e in enumerate(entries):
        audio, rate = sf.read(e.path, dtype="float32")
        sf.write(tmp_path / f"u{i}.wav", audio, rate, subtype="PCM_16")
        rows.append(f"u{i}.wav\t{len(audio)}")
    (tmp_path / "m.tsv").write_text("\n".join(["."] + rows + list(extra_rows)) + "\n")
    return str(tmp_path / "m.tsv"), phones


def _truncated_wav(path, seconds=3.0):
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, int(16000 * seconds)).astype(np.float32), 16000,
             subtype="PCM_16")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # the header still says 48000 samples


# ---------------------------------------------------------------------------------------------- audio (4, 7)
def test_a_truncated_wav_is_a_damaged_file_skipped_with_a_count_or_stopped_under_strict(tmp_path, capsys):
    _truncated_wav(tmp_path / "cut.wav")
    manifest, _ = _corpus(tmp_path, ["cut.wav\t48000"])
    assert main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "f")]) == 0
    assert "from 3 files (1 skipped" in capsys.readouterr().out
    _, lengths = load_features(str(tmp_path / "f"))
    assert lengths[3] == 0
    why = open(tmp_path / "f.skipped").read()
    assert why.startswith("3\t") and "cut.wav: damaged or truncated: its header says 48000 samples, the file " \
                                     "holds 23989" in why
    with pytest.raises(AudioError, match=r"m.tsv:5: .*cut.wav: damaged or truncated"):
        main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "g"), "--strict"])
    # the training reader refuses it too, naming the manifest line
    entry = read_manifest(manifest)[3]
    with pytest.raises(AudioError, match=r"m.tsv:5: .*damaged or truncated"):
        read_entry_audio(manifest, entry, normalize=False)


def test_files_read_ahead_in_threads_come_in_order_with_the_same_skips_and_errors(tmp_path):
    from hubert_jax.data.manifest import iter_audio

    _truncated_wav(tmp_path / "cut.wav")
    manifest, _ = _corpus(tmp_path, ["cut.wav\t48000", "gone.wav\t16000"], count=6)
    entries = read_manifest(manifest) * 3  # 24 files: several windows of reads in flight
    one_stream, one_skipped = iter_audio(entries, manifest=manifest)
    one = list(one_stream)
    many_stream, many_skipped = iter_audio(entries, manifest=manifest, threads=3)
    many = list(many_stream)
    assert [e.line for e, _ in many] == [e.line for e, _ in one] and len(one) == 18
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, many))
    assert many_skipped == one_skipped and sorted(one_skipped) == [6, 7, 14, 15, 22, 23]
    stream, _ = iter_audio(entries, manifest=manifest, threads=3, strict=True)
    with pytest.raises(AudioError, match=r"m.tsv:8: .*cut.wav: damaged or truncated"):
        next(e for e, _ in stream if e.line > 7)


def test_files_read_ahead_note_their_rate_and_count_for_the_first_file_in_manifest_order(tmp_path, caplog,
                                                                                          monkeypatch):
    """The once-per-rate notes come from the reading threads; the first file in the manifest must be the one
    named even when a later file finishes decoding first (here the first one's read is held back)."""
    import collections
    import time

    from hubert_jax.data import audio
    from hubert_jax.data.manifest import iter_audio

    monkeypatch.setattr(audio, "_resampled", collections.Counter())  # "once per process": start afresh
    monkeypatch.setattr(audio, "_native", collections.Counter())
    tone = np.sin(np.arange(16000) / 8000 * 2 * np.pi * 440).astype(np.float32) * 0.3
    for name in ("a8k.wav", "b8k.wav", "c8k.wav"):
        sf.write(tmp_path / name, tone, 8000, subtype="PCM_16")
    (tmp_path / "m.tsv").write_text(".\na8k.wav\t16000\nb8k.wav\t16000\nc8k.wav\t16000\n")  # native counts
    read = sf.read

    def slow_first(path, *args, **kwargs):
        if str(path).endswith("a8k.wav"):
            time.sleep(0.5)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(sf, "read", slow_first)
    with caplog.at_level(logging.WARNING):
        stream, _ = iter_audio(read_manifest(str(tmp_path / "m.tsv")), manifest=str(tmp_path / "m.tsv"), threads=3)
        assert len(list(stream)) == 3
    notes = [r.getMessage() for r in caplog.records if "Hz" in r.getMessage()]
    assert len(notes) == 2 and "a8k.wav is at 8000 Hz" in notes[0] and "m.tsv:2: lists" in notes[1], notes
    assert audio.resampled_counts() == {8000: 3, ("native", 8000): 3}


def test_a_manifest_count_that_disagrees_with_the_file_names_the_line_and_both_numbers(tmp_path, capsys):
    manifest, _ = _corpus(tmp_path)
    rows = open(manifest).read().splitlines()
    real = int(rows[2].split("\t")[1])
    rows[2] = "u1.wav\t999999"
    open(manifest, "w").write("\n".join(rows) + "\n")
    with pytest.raises(AudioError, match=rf"m.tsv:3: the manifest lists 999999 samples, but .*u1.wav has {real} at "
                                         rf"16000 Hz"):
        main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "f"), "--strict"])
    assert main(["mfcc", "--manifest", manifest, "--out", str(tmp_path / "f")]) == 0
    assert "(1 skipped" in capsys.readouterr().out
    assert "999999" in open(tmp_path / "f.skipped").read()


def test_8khz_audio_is_resampled_with_one_note_and_its_count_taken_at_either_rate(tmp_path, capsys, caplog):
    tone = np.sin(np.arange(16000) / 8000 * 2 * np.pi * 440).astype(np.float32) * 0.3  # 2 s at 8 kHz
    for name in ("a8k.wav", "b8k.wav"):
        sf.write(tmp_path / name, tone, 8000, subtype="PCM_16")
    (tmp_path / "m.tsv").write_text(".\na8k.wav\t32000\nb8k.wav\t32000\n")  # counted at 16 kHz: right
    with caplog.at_level(logging.WARNING):
        assert main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "f")]) == 0
    assert "(0 skipped; 2 files resampled from 8000 Hz)" in capsys.readouterr().out
    notes = [r for r in caplog.records if "resampling it to 16000 Hz" in r.getMessage()]
    assert len(notes) == 1 and "a8k.wav is at 8000 Hz" in notes[0].getMessage()
    # the file's own count at its native rate, as fairseq's wav2vec_manifest.py writes it: accepted, noted
    # once and counted, the same features as the 16 kHz count gives
    (tmp_path / "m.tsv").write_text(".\na8k.wav\t16000\nb8k.wav\t16000\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "g"), "--strict"]) == 0
    assert "(0 skipped; 2 files resampled from 8000 Hz (2 listed with their 8000 Hz count))" in capsys.readouterr().out
    notes = [r.getMessage() for r in caplog.records if "native 8000 Hz count" in r.getMessage()]
    assert len(notes) == 1 and "m.tsv:2: lists" in notes[0], notes
    np.testing.assert_array_equal(load_features(str(tmp_path / "g"))[0], load_features(str(tmp_path / "f"))[0])
    # a count that matches neither rate is still the manifest's error
    (tmp_path / "m.tsv").write_text(".\na8k.wav\t20000\n")
    with pytest.raises(AudioError, match=r"m.tsv:2: the manifest lists 20000 samples, but .*a8k.wav has 32000 at "
                                         r"16000 Hz; the file is at 8000 Hz. Fix the line"):
        main(["mfcc", "--manifest", str(tmp_path / "m.tsv"), "--out", str(tmp_path / "h"), "--strict"])


# ---------------------------------------------------------------------------------------------- labels (5, 6, 8)
def test_a_negative_label_is_refused_naming_file_and_line(tmp_path):
    manifest, phones = _corpus(tmp_path)
    bad = list(phones)
    bad[1] = " ".join(["-3"] + bad[1].split()[1:])
    (tmp_path / "bad.km").write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad.km:2: label -3 is negative: labels are cluster ids 0..K-1 \(-1 alone"):
        LabeledAudio(DataConfig(manifest=manifest, labels=(str(tmp_path / "bad.km"),), label_rate=100.0,
                                min_samples=1000))
    ok = list(phones)
    ok[1] = " ".join(["-1"] + ok[1].split()[1:])  # the padding value: a frame without a label
    (tmp_path / "ok.km").write_text("\n".join(ok) + "\n")
    LabeledAudio(DataConfig(manifest=manifest, labels=(str(tmp_path / "ok.km"),), label_rate=100.0, min_samples=1000))


def test_an_empty_label_line_says_the_label_stage_skipped_the_utterance_and_why(tmp_path):
    _truncated_wav(tmp_path / "cut.wav")
    manifest, _ = _corpus(tmp_path, ["cut.wav\t48000"])
    feats = str(tmp_path / "f")
    assert main(["mfcc", "--manifest", manifest, "--out", feats]) == 0
    assert main(["kmeans", "--feats", feats, "--clusters", "4", "--out", str(tmp_path / "c.npy"),
                 "--max-iter", "2", "--n-init", "1"]) == 0
    assert main(["label", "--feats", feats, "--centroids", str(tmp_path / "c.npy"),
                 "--out", str(tmp_path / "t.km")]) == 0
    with pytest.raises(ValueError, match=r"t.km:4: an empty line, so no labels for utterance 4 of the manifest: the "
                                         r"label stage skipped it \(.*cut.wav: damaged or truncated"):
        LabeledAudio(DataConfig(manifest=manifest, labels=(str(tmp_path / "t.km"),), label_rate=100.0,
                                min_samples=1000))


def test_a_wrong_manifest_count_is_blamed_on_the_manifest_not_the_labels(tmp_path):
    manifest, phones = _corpus(tmp_path)
    (tmp_path / "t.km").write_text("\n".join(phones) + "\n")
    rows = open(manifest).read().splitlines()
    real = int(rows[2].split("\t")[1])
    rows[2] = f"u1.wav\t{real + 16000}"  # a second too many
    open(manifest, "w").write("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"m.tsv:3: the manifest lists {real + 16000} samples, but .*u1.wav has "
                                         rf"{real}, and its labels \(.*t.km:2, .* of them\) fit the file: the "
                                         rf"manifest's count is wrong"):
        LabeledAudio(DataConfig(manifest=manifest, labels=(str(tmp_path / "t.km"),), label_rate=100.0,
                                min_samples=1000))


# ---------------------------------------------------------------------------------------------- config and paths (9, 10)
def test_a_valid_manifest_without_labels_names_the_field(tmp_path):
    cfg = tiny_config.get_config()
    cfg.data.valid.labels = ("",)
    with pytest.raises(FileNotFoundError, match=r"config.data.valid.labels: no label file given: data.valid.manifest "
                                                r"\(.*valid.tsv\) needs one .km file per label set"):
        run(cfg, str(tmp_path))
    cfg.data.valid.labels = (str(tmp_path / "valid.km"),)
    with pytest.raises(FileNotFoundError, match=r"config.data.valid.labels: .*valid.km' does not exist"):
        run(cfg, str(tmp_path))


def test_from_pretrained_says_no_such_directory_before_any_hub_lookup(tmp_path, monkeypatch):
    import huggingface_hub

    from hubert_jax import HubertModel

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    for path in (str(tmp_path / "exprot"), "./work/exprot", "work/runs/exprot", "exprot"):
        with pytest.raises(FileNotFoundError, match=r"no such directory"):
            HubertModel.from_pretrained(path)


def test_a_hub_like_name_that_is_no_directory_says_both(tmp_path, monkeypatch):
    from hubert_jax import HubertModel

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"work/exprot: no such local directory \(.*work/exprot\), and as a hub "
                                                r"id it is not in the hub cache"):
        HubertModel.from_pretrained("work/exprot", local_files_only=True, cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("section,edit,task", [
    ("mix", dict(prob=0.5), "hubert"),
    ("mix", dict(noise_manifest="/nowhere/noise.tsv"), "hubert"),
    ("wav2vec2", dict(gumbel=(1.0, 0.5, 0.9)), "hubert"),
    ("distill", dict(teacher="/some/teacher"), "hubert"),
])
def test_a_section_the_task_does_not_read_is_refused_naming_its_fields(tmp_path, section, edit, task):
    cfg = tiny_config.get_config()
    cfg.task = task
    cfg[section].update(edit)
    field = next(iter(edit))
    with pytest.raises(ValueError, match=rf"config.{section} \({section}.{field}\) is set, but config.task='{task}' "
                                         rf"does not read it"):
        run(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_noise_files_that_cannot_be_read_are_refused_at_start(tmp_path):
    from hubert_jax.data.mixing import Noise

    sf.write(tmp_path / "hum.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all" * 100)
    (tmp_path / "noise.tsv").write_text(f"{tmp_path}\nhum.wav\t16000\nbroken.wav\t16000\n")
    with pytest.raises(AudioError, match=rf"noise.tsv \(config.mix.noise_manifest\): 1 noise file\(s\) cannot be "
                                         rf"read as audio: {tmp_path}/broken.wav"):
        Noise(str(tmp_path / "noise.tsv"))


def test_training_reads_a_manifest_of_native_rate_counts_with_its_labels(tmp_path, caplog):
    """fairseq's wav2vec_manifest.py lists a 44.1 kHz file with its 44.1 kHz count; the labels (made at
    16 kHz) fit the file: the rows are recounted at 16 kHz from the headers, once, with a note."""
    from scipy.signal import resample_poly

    entries = read_manifest(os.path.join(DEMO, "valid.tsv"))[:9]
    phones = open(os.path.join(DEMO, "valid.phn")).read().splitlines()[:9]
    rows = []
    for i, e in enumerate(entries):
        audio = read_entry_audio(os.path.join(DEMO, "valid.tsv"), e, normalize=False)
        native = resample_poly(audio, 441, 160).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", native, 44100, subtype="FLOAT")
        rows.append(f"u{i}.wav\t{sf.info(str(tmp_path / f'u{i}.wav')).frames}")
    (tmp_path / "m.tsv").write_text("\n".join(["."] + rows) + "\n")
    (tmp_path / "m.phn").write_text("\n".join(phones) + "\n")
    config = DataConfig(manifest=str(tmp_path / "m.tsv"), labels=(str(tmp_path / "m.phn"),), label_rate=100,
                        crop_samples=16000, min_samples=16000)
    with caplog.at_level(logging.WARNING):
        source = LabeledAudio(config)
    assert "9 rows list their file's native-rate count; counted at 16000 Hz" in caplog.text
    assert [e.num_samples for e in source.entries] == [e.num_samples for e in entries]
