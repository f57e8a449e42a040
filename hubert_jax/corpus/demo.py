"""The shipped demo corpus: English and Korean sentences of our own, spoken by espeak-ng with varied
voices, rates and pitches, with frame-level phone labels from espeak's phoneme events.

Layout (all under one directory, manifests fairseq-style):
  {split}.tsv    (8-bit FLAC, 16 kHz mono) root line ("." = this directory), then `audio/{split}/{id}.flac<TAB>num_samples`
  {split}.wrd    transcript per utterance;  {split}.ltr  letters with "|" between words
  {split}.phn    phone ids per 10 ms frame (Kaldi MFCC frame count);  phones.txt  id -> phone
  {split}.lang   en | ko;  {split}.spk  the espeak voice (speaker) id
Deterministic for a given seed and espeak-ng version.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from hubert_jax.labels.mfcc import num_frames
from hubert_jax.lengths import SAMPLE_RATE

FRAME_SHIFT, FRAME_CENTER = 0.010, 0.0125  # a Kaldi frame t covers [10t, 10t + 25) ms

_EN = dict(
    subject=["the old farmer", "my sister", "a tired student", "the quiet engineer", "our neighbour", "the young pilot",
             "a clever child", "the baker", "my grandfather", "the new teacher", "a busy doctor", "the painter"],
    verb=["carried", "painted", "found", "repaired", "watched", "borrowed", "cleaned", "opened", "counted", "followed"],
    thing=["a red bicycle", "the wooden boxes", "seven green apples", "an empty bottle", "the broken radio",
           "a heavy suitcase", "three paper boats", "the silver key", "a yellow kite", "the garden gate"],
    place=["near the river", "after dinner", "in the morning", "behind the station", "during the storm",
           "at the market", "before sunrise", "on the small island", "under the bridge", "at the library"],
)
_KO = dict(
    subject=["할머니는", "제 동생은", "그 학생은", "우리 선생님은", "옆집 아저씨는", "작은 고양이는", "친구들은",
             "그 요리사는", "새 의사는", "어린 아이는"],
    place=["시장에서", "학교 앞에서", "강가에서", "도서관에서", "부엌에서", "공원에서", "버스 안에서", "바닷가에서"],
    object=["사과를", "책을", "편지를", "국수를", "꽃을", "자전거를", "사진을", "노래를", "우산을", "빵을"],
    verb=["샀어요", "읽었어요", "찾았어요", "만들었어요", "기다렸어요", "좋아해요", "보았어요", "그렸어요"],
)
_VOICES = {
    "en": ["en-us", "en-us+m3", "en-us+f2", "en-us+f4", "en+m1", "en+m5", "en+f3", "en-us+m7"],
    "ko": ["ko", "ko+m2", "ko+f1", "ko+f3", "ko+m4", "ko+f5"],
}
_PAUSES = {"_", "_:", "_!", "_;", "_^_", "||", "|"}


def sentences(language: str, count: int, rng: np.random.Generator) -> list[str]:
    out, seen = [], set()
    while len(out) < count:
        if language == "en":
            w = {k: v[rng.integers(len(v))] for k, v in _EN.items()}
            text = f"{w['subject'].capitalize()} {w['verb']} {w['thing']} {w['place']}."
        else:
            w = {k: v[rng.integers(len(v))] for k, v in _KO.items()}
            text = f"{w['subject']} {w['place']} {w['object']} {w['verb']}."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def frame_phones(phonemes: list[tuple[float, str]], num_samples: int, language: str) -> list[str]:
    """One phone per Kaldi frame: the phoneme sounding at the frame's centre ('sil' before the first one
    and for espeak's pause symbols)."""
    frames = num_frames(num_samples)
    starts = np.array([t for t, _ in phonemes] or [0.0])
    names = [("sil" if p in _PAUSES else f"{language}:{p}") for _, p in phonemes] or ["sil"]
    centers = np.arange(frames) * FRAME_SHIFT + FRAME_CENTER
    idx = np.searchsorted(starts, centers, side="right") - 1
    return ["sil" if i < 0 else names[i] for i in idx]


@dataclasses.dataclass
class Item:
    uid: str
    split: str
    language: str
    voice: str
    text: str
    audio: np.ndarray
    phones: list[str]


def synthesize_corpus(per_language: dict[str, int], valid_fraction: float = 0.12, seed: int = 0) -> list[Item]:
    from scipy.signal import resample_poly

    from hubert_jax.corpus.espeak import Espeak

    rng = np.random.default_rng(seed)
    engine = Espeak()
    items = []
    for language, count in per_language.items():
        for i, text in enumerate(sentences(language, count, rng)):
            voice = _VOICES[language][rng.integers(len(_VOICES[language]))]
            utt = engine.synthesize(text, voice=voice, rate=int(rng.integers(135, 190)),
                                    pitch=int(rng.integers(25, 75)), pitch_range=int(rng.integers(30, 80)))
            audio = resample_poly(utt.audio, SAMPLE_RATE, utt.sample_rate).astype(np.float32)
            audio = np.clip(audio, -1.0, 1.0)
            split = "valid" if i < round(count * valid_fraction) else "train"
            items.append(Item(f"{language}{i:04d}", split, language, voice, text, audio,
                              frame_phones(utt.phonemes, len(audio), language)))
    return items


def letters(text: str) -> str:
    """fairseq's .ltr form: upper-case letters separated by spaces, "|" closing every word."""
    words = text.replace(".", "").replace(",", "").upper().split()
    return " ".join(" ".join(word) + " |" for word in words)


def write_corpus(items: list[Item], directory: str) -> dict[str, int]:
    import soundfile as sf

    phones = sorted({p for item in items for p in item.phones} - {"sil"})
    phone_ids = {"sil": 0, **{p: i + 1 for i, p in enumerate(phones)}}
    with open(os.path.join(directory, "phones.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i} {p}\n" for p, i in phone_ids.items())
    counts = {}
    for split in ("train", "valid"):
        rows = [it for it in items if it.split == split]
        counts[split] = len(rows)
        os.makedirs(os.path.join(directory, "audio", split), exist_ok=True)
        files = {ext: open(os.path.join(directory, f"{split}.{ext}"), "w", encoding="utf-8")
                 for ext in ("tsv", "wrd", "ltr", "phn", "lang", "spk")}
        files["tsv"].write(".\n")
        for it in rows:
            rel = f"audio/{split}/{it.uid}.flac"
            # 8-bit FLAC: a third of the 16-bit size, and espeak's synthetic speech loses nothing that matters
            sf.write(os.path.join(directory, rel), it.audio, SAMPLE_RATE, subtype="PCM_S8", format="FLAC")
            files["tsv"].write(f"{rel}\t{len(it.audio)}\n")
            files["wrd"].write(it.text + "\n")
            files["ltr"].write(letters(it.text) + "\n")
            files["phn"].write(" ".join(str(phone_ids[p]) for p in it.phones) + "\n")
            files["lang"].write(it.language + "\n")
            files["spk"].write(it.voice + "\n")
        for f in files.values():
            f.close()
    return counts
