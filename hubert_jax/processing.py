"""Input and output processing compatible with transformers' Wav2Vec2FeatureExtractor and
Wav2Vec2CTCTokenizer: same files (`preprocessor_config.json`, `vocab.json`), same numbers. NumPy only.

transformers 5 saves a processor (feature extractor + tokenizer) as `processor_config.json`, the feature
extractor's settings nested under "feature_extractor"; a feature extractor alone still as v4's
`preprocessor_config.json`. Both are read, the nested settings first, as transformers 5 does; this module
writes v4's file, which both versions read (conversions carry `processor_config.json` along as it is)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Sequence

import numpy as np

from hubert_jax.config import read_json_object
from hubert_jax.lengths import SAMPLE_RATE

PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"  # transformers 5's processor
VOCAB_FILE = "vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


@dataclasses.dataclass
class FeatureExtractor:
    """Wav2Vec2FeatureExtractor: pad a batch of waveforms, zero-mean/unit-variance normalise each over its
    real samples, return `input_values` (float32) and `attention_mask` (int32)."""

    sampling_rate: int = SAMPLE_RATE
    padding_value: float = 0.0
    do_normalize: bool = True
    return_attention_mask: bool = False
    feature_size: int = 1
    padding_side: str = "right"

    def __call__(self, raw_speech, *, sampling_rate: int | None = None, padding: bool | str = True,
                 max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 return_attention_mask: bool | None = None) -> dict[str, np.ndarray]:
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"audio sampled at {sampling_rate} Hz; this model expects {self.sampling_rate} Hz "
                             f"(resample first)")
        batch = self._as_batch(raw_speech)
        if padding is True or padding == "longest":
            target = max(len(x) for x in batch)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            target = max_length
        elif padding is False or padding == "do_not_pad":
            if len({len(x) for x in batch}) > 1:
                raise ValueError("waveforms of different lengths need padding=True")
            target = len(batch[0])
        else:
            raise ValueError(f"padding={padding!r}: expected True, 'longest', 'max_length' or False")
        if pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        if any(len(x) > target for x in batch):
            raise ValueError(f"a waveform is longer than max_length={target}")
        lengths = np.array([len(x) for x in batch])
        values = np.full((len(batch), target), self.padding_value, np.float32)
        for row, x in zip(values, batch):
            row[: len(x)] = x
        mask = (np.arange(target)[None] < lengths[:, None]).astype(np.int32)
        want_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        if self.do_normalize:
            # as transformers: statistics over the real samples only when a mask is returned; without one
            # (e.g. hubert-base's config) the padding takes part, and what the model saw in training is kept
            by_length = want_mask and padding is not False and padding != "do_not_pad"
            for row, n in zip(values, lengths if by_length else [target] * len(batch)):
                real = row[:n]
                row[:] = (row - real.mean()) / np.sqrt(real.var() + 1e-7)
                row[n:] = self.padding_value
        out = {"input_values": values}
        if want_mask:
            out["attention_mask"] = mask
        return out

    @staticmethod
    def _as_batch(raw_speech) -> list[np.ndarray]:
        if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 2:
            return [np.asarray(x, np.float32) for x in raw_speech]
        if isinstance(raw_speech, np.ndarray) and raw_speech.ndim > 2:
            raise ValueError(f"only mono audio is supported: got an array of shape {raw_speech.shape}")
        if isinstance(raw_speech, (list, tuple)) and raw_speech and isinstance(raw_speech[0], (np.ndarray, list, tuple)):
            batch = [np.asarray(x, np.float32) for x in raw_speech]
        else:
            batch = [np.asarray(raw_speech, np.float32)]
        for i, x in enumerate(batch):
            if x.ndim != 1:
                raise ValueError(f"waveform {i} has shape {x.shape}: expected mono (samples,)")
            if x.size == 0:
                raise ValueError(f"waveform {i} is empty")
        return batch

    # ----------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, directory: str) -> "FeatureExtractor":
        """The feature extractor of a directory: the "feature_extractor" section of transformers 5's
        processor_config.json if it has one, else preprocessor_config.json."""
        data = _nested_feature_extractor(os.path.join(directory, PROCESSOR_CONFIG))
        if data is None:
            legacy = os.path.join(directory, PREPROCESSOR_CONFIG)
            if not os.path.isfile(legacy):
                raise FileNotFoundError(f"{directory}: no feature extractor settings: neither {PREPROCESSOR_CONFIG} "
                                        f"(transformers 4, or a feature extractor alone) nor {PROCESSOR_CONFIG} with "
                                        f"a \"feature_extractor\" section (a transformers 5 processor)")
            data = read_json_object(legacy)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save_pretrained(self, directory: str) -> str:
        """Write preprocessor_config.json (as transformers' Wav2Vec2FeatureExtractor); returns its path."""
        os.makedirs(directory, exist_ok=True)
        data = {**dataclasses.asdict(self), "feature_extractor_type": "Wav2Vec2FeatureExtractor"}
        path = os.path.join(directory, PREPROCESSOR_CONFIG)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        return path


def _nested_feature_extractor(path: str) -> dict | None:
    """The feature extractor's settings in a transformers 5 processor_config.json, None without them."""
    if not os.path.isfile(path):
        return None
    processor = read_json_object(path)
    for key in ("feature_extractor", "audio_processor"):  # transformers 5's two names for it
        if key in processor:
            if not isinstance(processor[key], dict):
                raise ValueError(f"{path}: {key!r} is {type(processor[key]).__name__}: expected an object")
            return processor[key]
    return None


@dataclasses.dataclass
class CTCTokenizer:
    """Wav2Vec2CTCTokenizer: characters to ids (space -> word delimiter), greedy CTC decoding."""

    vocab: dict[str, int]
    pad_token: str = "<pad>"
    unk_token: str = "<unk>"
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    word_delimiter_token: str = "|"
    do_lower_case: bool = False

    def __post_init__(self):
        for name in ("pad_token", "unk_token", "word_delimiter_token"):
            if getattr(self, name) not in self.vocab:
                raise ValueError(f"vocabulary has no {name} {getattr(self, name)!r}")
        self.id_to_token = {i: t for t, i in self.vocab.items()}

    @property
    def pad_token_id(self) -> int:
        """The id of the pad token, which is also the CTC blank."""
        return self.vocab[self.pad_token]

    @property
    def special_tokens(self) -> set[str]:
        """pad, unk, bos and eos."""
        return {self.pad_token, self.unk_token, self.bos_token, self.eos_token}

    def encode(self, text: str) -> list[int]:
        """Characters not in the vocabulary map to unk_token (as transformers does)."""
        if self.do_lower_case:
            text = text.upper()
        unk = self.vocab[self.unk_token]
        return [self.vocab.get(ch, unk) for ch in text.replace(" ", self.word_delimiter_token)]

    def decode(self, ids: Sequence[int], *, group_tokens: bool = True, skip_special_tokens: bool = False) -> str:
        """Text of one sequence of ids as transformers decodes it: repeats merged (group_tokens), blanks dropped, the
        word delimiter made a space."""
        tokens = [self.id_to_token.get(int(i), self.unk_token) for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens or t == self.word_delimiter_token]
        if group_tokens:
            tokens = [t for t, _ in itertools.groupby(tokens)]
        chars = [" " if t == self.word_delimiter_token else t for t in tokens if t != self.pad_token]
        text = "".join(chars).strip()
        return text.lower() if self.do_lower_case else text

    def batch_decode(self, batch_ids, **kw) -> list[str]:
        """decode() of each sequence of a batch."""
        return [self.decode(ids, **kw) for ids in batch_ids]

    def decode_logits(self, logits, lengths=None) -> list[str]:
        """Greedy CTC: argmax per frame (up to each row's length), collapse repeats, drop blanks."""
        ids = np.asarray(logits).argmax(-1)
        if lengths is None:
            lengths = [ids.shape[1]] * ids.shape[0]
        return [self.decode(row[: int(n)]) for row, n in zip(ids, lengths)]

    # ----------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, directory: str) -> "CTCTokenizer":
        """The tokenizer of a directory's vocab.json and tokenizer_config.json."""
        vocab = read_json_object(os.path.join(directory, VOCAB_FILE))
        if not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError(f"{os.path.join(directory, VOCAB_FILE)}: expected {{token: id}} with integer ids "
                             f"(per-language vocabularies are not supported)")
        config_path = os.path.join(directory, TOKENIZER_CONFIG)
        config = read_json_object(config_path) if os.path.exists(config_path) else {}
        fields = ("pad_token", "unk_token", "bos_token", "eos_token", "word_delimiter_token", "do_lower_case")
        return cls(vocab=vocab, **{k: config[k] for k in fields if isinstance(config.get(k), (str, bool))})

    def save_pretrained(self, directory: str) -> list[str]:
        """Write vocab.json, tokenizer_config.json and special_tokens_map.json as transformers does; returns their
        paths."""
        os.makedirs(directory, exist_ok=True)
        files = {
            VOCAB_FILE: self.vocab,
            TOKENIZER_CONFIG: {"tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": self.pad_token,
                               "unk_token": self.unk_token, "bos_token": self.bos_token, "eos_token": self.eos_token,
                               "word_delimiter_token": self.word_delimiter_token,
                               "do_lower_case": self.do_lower_case, "replace_word_delimiter_char": " "},
            SPECIAL_TOKENS_MAP: {"pad_token": self.pad_token, "unk_token": self.unk_token,
                                 "bos_token": self.bos_token, "eos_token": self.eos_token},
        }
        for name, data in files.items():
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, ensure_ascii=False)
        return list(files)


@dataclasses.dataclass
class Processor:
    """transformers' Wav2Vec2Processor: the feature extractor and the CTC tokenizer of a fine-tuned model."""

    feature_extractor: FeatureExtractor
    tokenizer: CTCTokenizer

    @classmethod
    def from_pretrained(cls, directory: str) -> "Processor":
        """Both from a directory (transformers 4's or 5's files)."""
        return cls(FeatureExtractor.from_pretrained(directory), CTCTokenizer.from_pretrained(directory))

    def save_pretrained(self, directory: str) -> list[str]:
        """Write both as transformers 4 does (which transformers 5 reads); returns the paths."""
        return [self.feature_extractor.save_pretrained(directory), *self.tokenizer.save_pretrained(directory)]
