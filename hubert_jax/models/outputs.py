"""Output containers mirroring transformers' (pytrees, so they pass through jit)."""

from __future__ import annotations

from typing import Any

import flax.struct


@flax.struct.dataclass
class ModelOutput:
    last_hidden_state: Any
    extract_features: Any = None
    hidden_states: tuple | None = None  # L+1 entries: the input to layer 0, then each layer's output
    features_pen: Any = None  # mean square of the conv features (fairseq's feature penalty), float32


@flax.struct.dataclass
class CTCOutput:
    logits: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class SequenceClassifierOutput:
    logits: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class TokenClassifierOutput:
    logits: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class XVectorOutput:
    logits: Any
    embeddings: Any
    loss: Any = None
    hidden_states: tuple | None = None


@flax.struct.dataclass
class PreTrainingOutput:
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
