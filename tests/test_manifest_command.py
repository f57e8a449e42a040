"""`python -m hubert_jax.labels manifest DIR --out OUT`: a fairseq manifest from a folder of audio (header
reads only, in sorted walk order, counts at 16 kHz, a seeded per-file validation split, one line per file
it cannot read), which the label stages and training then read."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hubert_jax.data.manifest import iter_audio, read_manifest
from hubert_jax.data.scan import is_valid
from hubert_jax.labels.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, samples, rate=16000, fmt=None):
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(samples) / 7)).astype(np.float32), rate, format=fmt)


def corpus(root):
    """Files in nested folders, in two formats and two rates, with things that are not (usable) audio."""
    _write(root / "a" / "x.wav", 8000)
    _write(root / "a" / "b" / "y.flac", 12345)
    _write(root / "c" / "z.WAV", 44100, rate=44100, fmt="WAV")  # 1 s at 44.1 kHz: 16000 at 16 kHz
    _write(root / ".hidden" / "q.wav", 4000)  # hidden folders are skipped
    (root / "notes.txt").write_text("not audio")
    (root / "bad.wav").write_bytes(b"RIFF junk that is no wave header")
    _write(root / "empty.wav", 0)  # a valid header of 0 samples
    return {"a/x.wav": 8000, "a/b/y.flac": 12345, "c/z.WAV": 16000}


def test_a_folder_becomes_a_manifest_the_readers_accept(tmp_path, capsys):
    expected = corpus(tmp_path / "audio")
    assert main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "m"), "--valid-percent", "0"]) == 0
    lines = (tmp_path / "m" / "train.tsv").read_text().splitlines()
    assert lines[0] == os.path.realpath(tmp_path / "audio")  # the root line, as fairseq writes it
    # sorted walk order: a folder's files, then its folders; counts at 16 kHz from the headers
    assert lines[1:] == ["a/x.wav\t8000", "a/b/y.flac\t12345", "c/z.WAV\t16000"]
    assert not (tmp_path / "m" / "valid.tsv").exists()
    captured = capsys.readouterr()
    # one line per file it cannot read, naming it; the others are counted
    assert f"{tmp_path / 'audio' / 'bad.wav'}: unreadable audio header; left out" in captured.err
    assert f"{tmp_path / 'audio' / 'empty.wav'}: no samples; left out" in captured.err
    assert "train.tsv: 3 files" in captured.out and "2 left out (listed above)" in captured.out
    assert "manifest: 100%" in captured.err  # the progress line
    # what the label stages and training read: every listed count equals the samples read at 16 kHz
    entries = read_manifest(str(tmp_path / "m" / "train.tsv"))
    stream, skipped = iter_audio(entries, strict=True, manifest="train.tsv")
    assert [len(audio) for _, audio in stream] == list(expected.values()) and not skipped


def test_the_validation_split_is_seeded_per_file(tmp_path):
    for i in range(300):
        _write(tmp_path / "audio" / f"{i // 100}" / f"{i}.flac", 500)
    assert main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "m"), "--valid-percent", "0.1",
                 "--seed", "3", "--threads", "3", "--ext", "flac"]) == 0
    train = read_manifest(str(tmp_path / "m" / "train.tsv"))
    valid = read_manifest(str(tmp_path / "m" / "valid.tsv"))
    assert len(train) + len(valid) == 300 and 15 <= len(valid) <= 50  # about 10%
    assert not {e.path for e in train} & {e.path for e in valid}
    root = os.path.realpath(tmp_path / "audio")
    assert all(is_valid(os.path.relpath(e.path, root), 3, 0.1) for e in valid)
    # the same seed, fewer threads and more files: every file keeps its split
    _write(tmp_path / "audio" / "3" / "extra.flac", 500)
    assert main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "again"), "--valid-percent", "0.1",
                 "--seed", "3", "--threads", "1", "--ext", "flac"]) == 0
    again = {e.path for e in read_manifest(str(tmp_path / "again" / "valid.tsv"))}
    assert {e.path for e in valid} == again - {os.path.join(root, "3", "extra.flac")}
    # another seed, another split
    assert main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "other"), "--valid-percent", "0.1",
                 "--seed", "4", "--ext", "flac"]) == 0
    assert {e.path for e in read_manifest(str(tmp_path / "other" / "valid.tsv"))} != again


def test_bad_arguments_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder"):
        main(["manifest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    corpus(tmp_path / "audio")
    with pytest.raises(ValueError, match=r"--valid-percent=5.0: expected a fraction in \[0, 1\)"):
        main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "m"), "--valid-percent", "5"])
    with pytest.raises(FileNotFoundError, match=r"no .ogg files under it"):
        main(["manifest", str(tmp_path / "audio"), "--out", str(tmp_path / "m"), "--ext", "ogg"])
    assert not (tmp_path / "m" / "train.tsv").exists()


def test_the_installed_command_prints_one_line_for_a_missing_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hubert_jax.labels", "manifest", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "m")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode != 0
    assert f"{tmp_path / 'nowhere'}: no such folder" in done.stderr and "Traceback" not in done.stderr
