"""Fine-tuning targets: transcripts (CTC) and utterance labels (classification), one line per manifest row.

- Transcripts (`.wrd`): text is normalised (`TextConfig`: upper-casing, characters removed, spaces
  collapsed), a character vocabulary is built from the training split in the layout of
  transformers' `Wav2Vec2CTCTokenizer` (`<pad>` = CTC blank = 0, `<s>`, `</s>`, `<unk>`, `|` for the
  word boundary, then the characters in sorted order), and a character outside the vocabulary
  becomes `<unk>` (as transformers does) or, with `unknown="error"`, an error naming the file and line.
- Labels (`.spk`, `.lang`, any one token per line): the classes are the training split's distinct
  labels in sorted order; a validation label the training split lacks is an error.
- Frame labels (`.phn`-style integer lines at a known rate, as the pretraining labels): cropped with
  the audio, -100 where no label applies.

A target file whose line count differs from its manifest's rows is refused with both paths named:
rows and lines are paired by position, so one missing line would shift every later target.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from hubert_jax.data.manifest import SAMPLE_RATE, check_files_exist, read_entry_audio, read_manifest
from hubert_jax.data.buckets import pad_bucket
from hubert_jax.data.pipeline import window
from hubert_jax.data.source import Source

logger = logging.getLogger(__name__)

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
WORD_DELIMITER = "|"
CTC_IGNORE = -100  # transformers' label padding (CTC and frame labels)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """How transcripts are normalised before tokenising."""
    uppercase: bool = True
    remove: str = ".,?!;:\""  # characters dropped before tokenising
    unknown: str = "unk"  # a character outside the vocabulary: "unk" (-> <unk>) or "error"

    def normalize(self, text: str) -> str:
        """The text upper-cased, stripped of the `remove` characters, with single spaces."""
        if self.uppercase:
            text = text.upper()
        if self.remove:
            text = text.translate({ord(c): None for c in self.remove})
        return " ".join(text.split())


def read_target_lines(path: str, manifest: str, rows: int) -> list[str]:
    """The lines of a target file, which must have one line per manifest row."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: target file not found (given for {manifest})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if len(lines) != rows:
        raise ValueError(f"{path}: {len(lines)} lines, but {manifest} has {rows} utterances; a target file "
                         f"needs exactly one line per manifest row, in the same order")
    return lines


def check_word_transcripts(path: str, lines: list[str]) -> None:
    """Refuse fairseq's letter targets (`.ltr`: `T H E | C A T |`, one letter per token, `|` between words)
    given as transcripts: read as words, every letter would become a word of its own."""
    spelled = [line for line in lines if line.strip() and WORD_DELIMITER in line.split()
               and all(len(token) == 1 for token in line.split())]
    if lines and len(spelled) >= 0.5 * sum(1 for line in lines if line.strip()):
        example = spelled[0] if len(spelled[0]) <= 40 else spelled[0][:40] + " ..."
        raise ValueError(f"{path}: these are fairseq letter targets (.ltr: {example!r}, one letter per token, "
                         f"'|' between words), not word transcripts: give the .wrd file (one utterance's words "
                         f"per line) that fairseq's manifest scripts write beside it")


def build_vocab(texts: list[str]) -> dict[str, int]:
    """Wav2Vec2CTCTokenizer layout: specials, the word delimiter, then every character in sorted order."""
    chars = sorted({c for text in texts for c in text if c != " "} - set(SPECIALS) - {WORD_DELIMITER})
    tokens = [*SPECIALS, WORD_DELIMITER, *chars]
    return {t: i for i, t in enumerate(tokens)}


def encode_texts(texts: list[str], tokenizer, *, path: str, unknown: str) -> list[np.ndarray]:
    """Token ids per text; characters outside the vocabulary per `unknown` ('unk' or 'error')."""
    if unknown not in ("unk", "error"):
        raise ValueError(f"text.unknown must be 'unk' or 'error', got {unknown!r}")
    known = set(tokenizer.vocab) | {" "}
    unseen: dict[str, int] = {}
    out = []
    for number, text in enumerate(texts, 1):
        missing = sorted({c for c in text if c not in known})
        if missing and unknown == "error":
            raise ValueError(f"{path}:{number}: characters not in the vocabulary: {''.join(missing)!r} "
                             f"(text.unknown='unk' maps them to <unk>)")
        for c in missing:
            unseen[c] = unseen.get(c, 0) + 1
        out.append(np.asarray(tokenizer.encode(text), np.int32))
    if unseen:
        logger.warning("%s: characters outside the vocabulary mapped to <unk>: %s", path,
                       ", ".join(f"{c!r} in {n} lines" for c, n in sorted(unseen.items())))
    return out


class TargetAudio(Source):
    """Random-access source of (audio, target) for fine-tuning: every utterance whole (no crop for CTC),
    zero-padded to `max_samples` with an attention mask. Utterances longer than `max_samples` are left
    out of the split, and the log says how many."""

    def __init__(self, manifest: str, targets: list, *, max_samples: int, label_length: int | None = None,
                 normalize: bool = False, crop: bool = False, frame_rate: float | None = None):
        entries = read_manifest(manifest)
        if not entries:
            raise ValueError(f"{manifest}: no utterances (an empty split)")
        check_files_exist(manifest, entries)
        if len(targets) != len(entries):
            raise ValueError(f"{manifest}: {len(entries)} utterances but {len(targets)} targets")
        self.manifest, self.max_samples, self.normalize, self.crop = manifest, max_samples, normalize, crop
        keep = [i for i, e in enumerate(entries) if crop or e.num_samples <= max_samples]
        if not keep:
            raise ValueError(f"{manifest}: every utterance is longer than data.max_samples={max_samples}")
        if len(keep) < len(entries):
            logger.warning("%s: %d utterances longer than data.max_samples=%d left out", manifest,
                           len(entries) - len(keep), max_samples)
        self.entries = [entries[i] for i in keep]
        self.targets = [targets[i] for i in keep]
        self.label_length = label_length
        # frame targets (frame classification): labels per second, cropped with the audio
        self.frame_rate = frame_rate

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        audio = read_entry_audio(self.manifest, self.entries[index], normalize=self.normalize)
        return {"audio": audio, "target": self.targets[index]}

    def item_buckets(self, buckets) -> list[int]:
        """Fine-tuning: each utterance whole, in the shortest bucket that holds it (the caller makes the
        last bucket hold the longest, max_samples)."""
        if buckets[-1] < self.max_samples:
            raise ValueError(f"data.buckets: the last bucket ({buckets[-1]}) must hold the longest utterance "
                             f"({self.max_samples} samples)")
        return [pad_bucket(min(e.num_samples, self.max_samples), buckets) for e in self.entries]

    def pad(self, example, rng: np.random.Generator, size: int | None = None):
        """Pad (or, for classification, randomly crop) to `size` (default max_samples); pad the labels."""
        size = self.max_samples if size is None else size
        values, mask, start = window(example["audio"], size, rng)
        target = example["target"]
        if self.frame_rate is not None:  # frame labels: the crop's window, -100 past the audio
            first = int(round(start * self.frame_rate / SAMPLE_RATE))
            length = int(round(size * self.frame_rate / SAMPLE_RATE))
            labels = np.full(length, CTC_IGNORE, np.int32)
            cut = np.asarray(target[first: first + length], np.int32)
            labels[: len(cut)] = cut
        elif self.label_length is not None:
            labels = np.full(self.label_length, CTC_IGNORE, np.int32)
            labels[: len(target)] = target
        else:
            labels = np.asarray(target, np.int32)
        return {"input_values": values, "attention_mask": mask, "labels": labels}

    transform = pad  # a batch row: the whole utterance padded (or a crop, for classification)
