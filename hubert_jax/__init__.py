"""hubert-jax: HuBERT, WavLM, wav2vec2/XLSR and DistilHuBERT in JAX/Flax NNX."""

from hubert_jax.config import (PRESETS, HubertConfig, SpeechConfig, Wav2Vec2Config, WavLMConfig,
                               config_class_for, preset)
from hubert_jax.models import *  # noqa: F401,F403
from hubert_jax.export import export_to_transformers
from hubert_jax.models import ModelOptions
from hubert_jax.auto import (FlaxAutoModel, FlaxAutoModelForAudioClassification,
                             FlaxAutoModelForAudioFrameClassification, FlaxAutoModelForAudioXVector,
                             FlaxAutoModelForCTC, FlaxAutoModelForPreTraining)

__version__ = "0.1.0"
