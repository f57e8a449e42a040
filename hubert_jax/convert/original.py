"""Original checkpoints (fairseq HuBERT / wav2vec 2.0, unilm WavLM, s3prl DistilHuBERT) -> a hubert-jax
model directory, written through the models' own `save_pretrained` files."""

from __future__ import annotations

import logging

from flax import nnx

from hubert_jax.config import SpeechConfig
from hubert_jax.weights import files as io
from hubert_jax.weights.state import load_flat, torch_to_flat, torch_to_ours
from hubert_jax.pretrained import write_directory, write_model_files

logger = logging.getLogger(__name__)


def convert_original_checkpoint(path: str, directory, *, max_shard_bytes: int = io.DEFAULT_MAX_SHARD_BYTES,
                                overwrite: bool = False, dictionary: str | None = None,
                                w2v_checkpoint: str | None = None):
    """A fairseq HuBERT/wav2vec 2.0, unilm WavLM or s3prl DistilHuBERT checkpoint -> a hubert-jax directory.

    A HuBERT checkpoint with its pretraining heads becomes a `HubertForPreTraining` (the encoder in
    `flax_model.safetensors`, `final_proj` and `label_embs_concat` in `pretraining_heads.safetensors`, their
    settings under `hubert_pretraining` in config.json), so pretraining can continue from it. A fine-tuned
    checkpoint's vocabulary comes from `dictionary` (a fairseq dict.ltr.txt) or else from the target
    dictionary the file carries. `w2v_checkpoint`: the pretrained checkpoint of a fine-tuned file whose
    config does not keep the encoder's settings. Returns the converted model."""
    from hubert_jax.convert import fairseq
    from hubert_jax import families
    from hubert_jax.processing import FeatureExtractor

    converted = fairseq.convert_checkpoint(fairseq.load_checkpoint(path), path, w2v_checkpoint)
    fields, kind = converted.fields, converted.kind
    if dictionary is not None and kind != "ForCTC":
        raise ValueError(f"{dictionary}: a dictionary only goes with a fine-tuned (CTC) checkpoint")
    vocab, vocab_source = converted.vocab, f"{path} (its target dictionary)"
    if dictionary is not None:
        vocab, vocab_source = fairseq.read_fairseq_dictionary(dictionary), dictionary
    tokenizer = None
    if vocab is None and kind == "ForCTC":
        logger.warning("%s: no target dictionary in the file, so no vocab.json: pass --dict dict.ltr.txt "
                       "(dictionary=...) to write one", path)
    if vocab is not None:
        from hubert_jax.processing import CTCTokenizer

        if len(vocab) != fields["vocab_size"]:
            raise ValueError(f"{vocab_source} gives {len(vocab)} symbols, the checkpoint's CTC head has "
                             f"{fields['vocab_size']} outputs")
        tokenizer = CTCTokenizer(vocab=vocab)
        fields.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = SpeechConfig.from_dict(fields)
    heads = converted.heads
    if heads and kind == "Model":  # the encoder under its prefix, the heads (torch Linear weights -> kernels) beside it
        kind = "ForPreTraining"
    elif heads:
        logger.info("%s: a fine-tuned checkpoint: its pretraining heads (%s) are not kept", path, ", ".join(heads))
        heads = {}
    cls = (families.base_model_class(config.model_type) if kind == "Model"
           else families.head_class(kind, config.model_type))
    model = cls(config, rngs=nnx.Rngs(0))
    if heads:
        prefix = model.base_model_prefix
        flat = {f"{prefix}.{k}": v for k, v in torch_to_flat(converted.state, model.base_model).items()}
        for key, value in heads.items():
            name = key[: -len(".weight")] + ".kernel" if key.endswith(".weight") else key
            flat[name] = torch_to_ours(name, value)
        load_flat(model, flat, source=path)
    else:
        load_flat(model, torch_to_flat(converted.state, model), source=path)

    def fill(tmp):
        write_model_files(model, tmp, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        # the model's input as it was trained: fairseq's normalize, and masks only for layer-norm extractors
        FeatureExtractor(do_normalize=converted.normalize,
                         return_attention_mask=config.feat_extract_norm == "layer").save_pretrained(tmp)

    write_directory(directory, fill, overwrite=overwrite)
    return model
