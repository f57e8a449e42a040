"""Output containers mirroring transformers' (pytrees, so they pass through jit)."""

from __future__ import annotations

from typing import Any

import flax.struct


@flax.struct.dataclass
class ModelOutput:
    """A base model's output: last_hidden_state (B, frames, hidden); extract_features, the conv features (B, frames,
    conv_dim[-1]); hidden_states when asked."""
    last_hidden_state: Any
    extract_features: Any = None
    hidden_states: tuple | None = None  # L+1 entries: the input to layer 0, then each layer's output
    features_pen: Any = None  # mean square of the conv features (fairseq's feature penalty), float32


@flax.struct.dataclass
class CTCOutput:
    """A CTC head's output: logits (B, frames, vocab), the loss when labels are given."""
    logits: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class SequenceClassifierOutput:
    """A sequence-classification head's output: logits (B, classes)."""
    logits: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class TokenClassifierOutput:
    """A frame-classification head's output: logits (B, frames, classes)."""
    logits: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class XVectorOutput:
    """An x-vector head's output: logits (B, classes) and the utterance embeddings (B, xvector_output_dim)."""
    logits: Any
    embeddings: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class PreTrainingOutput:
    """Wav2Vec2ForPreTraining's output: projected context and quantized states (B, frames, proj_codevector_dim), the
    codevector perplexity, and the losses when computed."""
    projected_states: Any
    projected_quantized_states: Any
    codevector_perplexity: Any
    loss: Any = None
    contrastive_loss: Any = None
    diversity_loss: Any = None
    hidden_states: tuple | None = None
    # fairseq's figures: soft- and hard-assignment codebook perplexities over the masked frames, the conv
    # features' mean square, and the masked frames whose positive scores highest
    prob_perplexity: Any = None
    code_perplexity: Any = None
    features_pen: Any = None
    correct: Any = None
