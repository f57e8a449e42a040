"""CTC speech recognition (`config.task = "ctc"`) on `*ForCTC`: transcripts (.wrd) normalised by
`config.text`, a character vocabulary (built from the training transcripts, or `text.vocab`), validation by
greedy decoding and character / word error rates (jiwer) against the normalised transcripts."""

from __future__ import annotations

import jax.numpy as jnp

from hubert_jax.data.targets import TextConfig, build_vocab, check_word_transcripts, encode_texts
from hubert_jax.lengths import feat_extract_output_lengths
from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.base import batch_means
from hubert_jax.training.tasks.finetune import FineTuneTask, Targets


@register_task("ctc")
class CTCTask(FineTuneTask):
    """CTC fine-tuning on transcripts (transformers' *ForCTC): a character vocabulary (from the train transcripts or text.vocab), greedy
    decoding and CER / WER in validation."""
    head_kind = "ForCTC"
    target_files = "transcripts (.wrd)"

    def use_meta(self, meta: dict) -> None:
        from hubert_jax.processing import CTCTokenizer

        super().use_meta(meta)
        self.tokenizer = CTCTokenizer(vocab=meta["vocab"])

    def read_targets(self, splits, rows, lines, max_samples) -> Targets:
        from hubert_jax.processing import CTCTokenizer

        text = TextConfig(**{k: v for k, v in dict(self.cfg.text).items() if k != "vocab"})
        for name in splits:
            check_word_transcripts(splits[name].targets, lines[name])
        texts = {name: [text.normalize(t) for t in lines[name]] for name in splits}
        vocab = _read_vocab(self.cfg.text.vocab) if self.cfg.text.get("vocab") else build_vocab(texts["train"])
        tokenizer = CTCTokenizer(vocab=vocab)
        targets = {name: encode_texts(texts[name], tokenizer, path=splits[name].targets, unknown=text.unknown)
                   for name in splits}
        empty = [f"{splits[n].targets}:{i + 1}" for n in splits for i, t in enumerate(targets[n]) if len(t) == 0]
        if empty:
            raise ValueError(f"empty transcripts (CTC needs at least one character): {', '.join(empty[:5])}")
        label_length = max(len(t) for ts in targets.values() for t in ts)
        return Targets(targets, {"vocab": vocab, "label_length": label_length}, label_length=label_length,
                       crop=False)

    def speech_config(self):
        return super().speech_config().replace(
            vocab_size=len(self.meta["vocab"]), pad_token_id=self.tokenizer.pad_token_id,
            ctc_loss_reduction=self.cfg.finetune.ctc_loss_reduction, ctc_zero_infinity=True)

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        out = self.head_output(model, batch, key, deterministic)
        metrics = {"loss": out.loss}
        if deterministic:  # what validation decodes
            metrics["predictions"] = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
            metrics["frames"] = feat_extract_output_lengths(self.config, batch["attention_mask"].sum(-1),
                                                            add_adapter=None)
            metrics["labels"] = batch["labels"]
        return out.loss, metrics

    def summarize(self, metrics: list[dict]) -> dict:
        refs, hyps = [], []
        for m in metrics:
            for pred, frames, labels in zip(m["predictions"], m["frames"], m["labels"]):
                refs.append(self.tokenizer.decode(labels[labels >= 0], group_tokens=False))
                hyps.append(self.tokenizer.decode(pred[: int(frames)]))
        return {**batch_means(metrics, "loss"), **error_rates(refs, hyps)}

    def export(self, model, directory: str) -> None:
        super().export(model, directory)
        self.tokenizer.save_pretrained(directory)


def _read_vocab(path: str) -> dict:
    from hubert_jax.config import read_json_object

    vocab = read_json_object(path)
    if not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{path}: expected a vocab.json of {{token: id}} with integer ids")
    return vocab


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus character and word error rates (jiwer), over the references that are not empty."""
    import jiwer

    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        raise ValueError("no non-empty reference transcript to score")
    refs, hyps = zip(*pairs)
    return {"cer": float(jiwer.cer(list(refs), list(hyps))), "wer": float(jiwer.wer(list(refs), list(hyps)))}
