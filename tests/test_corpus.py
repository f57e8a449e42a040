"""The shipped demo corpus is complete and consistent; the generator's pieces behave."""

import os

import numpy as np
import pytest
import soundfile as sf

from hubert_jax.corpus.demo import frame_phones, letters, sentences
from hubert_jax.data.manifest import read_label_lines, read_manifest
from hubert_jax.labels.mfcc import num_frames

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo")


@pytest.mark.parametrize("split", ["train", "valid"])
def test_demo_corpus_is_consistent(split):
    entries = read_manifest(os.path.join(DEMO, f"{split}.tsv"))
    assert len(entries) > 20
    phones = read_label_lines(os.path.join(DEMO, f"{split}.phn"), len(entries))
    for ext in ("wrd", "ltr", "lang", "spk"):
        read_label_lines(os.path.join(DEMO, f"{split}.{ext}"), len(entries))  # one line per utterance
    langs = [row[0] for row in read_label_lines(os.path.join(DEMO, f"{split}.lang"), len(entries))]
    assert set(langs) == {"en", "ko"}
    known = {int(line.split()[0]) for line in open(os.path.join(DEMO, "phones.txt"), encoding="utf-8")}
    for entry, row in zip(entries, phones):
        info = sf.info(entry.path)
        assert (info.samplerate, info.channels, info.frames, info.format) == (16000, 1, entry.num_samples, "FLAC")
        assert len(row) == num_frames(entry.num_samples)
        assert {int(p) for p in row} <= known


def test_demo_corpus_size():
    seconds = sum(e.num_samples for s in ("train", "valid") for e in read_manifest(os.path.join(DEMO, f"{s}.tsv")))
    assert 9 * 60 < seconds / 16000 < 13 * 60
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(DEMO) for f in files)
    assert size < 8 * 1024 * 1024


def test_frame_phones_take_the_phone_at_each_frame_centre():
    # frames are 25 ms every 10 ms: centres at 12.5, 22.5, 32.5 ... ms
    events = [(0.0, "_"), (0.02, "a"), (0.041, "b")]
    phones = frame_phones(events, 16000 * 60 // 1000, "en")  # 60 ms -> 4 frames
    assert phones == ["sil", "en:a", "en:a", "en:b"]
    assert frame_phones([], 800, "ko") == ["sil"] * num_frames(800)


def test_sentences_and_letters():
    rng = np.random.default_rng(0)
    en, ko = sentences("en", 20, rng), sentences("ko", 20, rng)
    assert len(set(en)) == 20 and len(set(ko)) == 20
    assert letters("The old farmer.") == "T H E | O L D | F A R M E R |"
    assert letters("할머니는 빵을 샀어요.") == "할 머 니 는 | 빵 을 | 샀 어 요 |"


def _has_espeak():
    import ctypes.util

    return ctypes.util.find_library("espeak-ng") is not None


# .ci/run installs Debian's espeak-ng, so this runs in CI; elsewhere it needs `apt-get install espeak-ng`
@pytest.mark.skipif(not _has_espeak(), reason="libespeak-ng is not installed (apt-get install espeak-ng)")
def test_synthesis_gives_aligned_phone_labels_deterministically():
    import subprocess
    import sys

    from hubert_jax.corpus.demo import synthesize_corpus

    items = synthesize_corpus({"en": 2, "ko": 2}, seed=7)
    for item in items:
        assert len(item.phones) == num_frames(len(item.audio))
        spoken = [p for p in item.phones if p != "sil"]
        assert len(spoken) > 0.5 * len(item.phones) and all(p.startswith(item.language + ":") for p in spoken)
    assert {it.language for it in items} == {"en", "ko"}
    # libespeak-ng keeps state between utterances within a process, so determinism is per fresh process,
    # which is how scripts/make_demo_corpus.py runs
    code = ("import hashlib; from hubert_jax.corpus.demo import synthesize_corpus; "
            "items = synthesize_corpus({'en': 2, 'ko': 2}, seed=7); "
            "print(hashlib.sha256(b''.join(i.audio.tobytes() + ' '.join(i.phones).encode() for i in items))"
            ".hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
