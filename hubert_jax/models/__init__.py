"""The models: base encoders (`HubertModel`, `WavLMModel`, `Wav2Vec2Model`), their heads under transformers'
class names (`HubertForCTC`, ...) and the pretraining models. Which family has which is hubert_jax/families.py."""

from hubert_jax import families
from hubert_jax.models.heads import (HEAD_CLASSES, ForAudioFrameClassification, ForCTC, ForSequenceClassification,
                                     ForXVector)
from hubert_jax.models.layers import ModelOptions
from hubert_jax.models.model import HubertModel, SpeechModel, Wav2Vec2Model, WavLMModel
from hubert_jax.models.outputs import (CTCOutput, ModelOutput, PreTrainingOutput, SequenceClassifierOutput,
                                       TokenClassifierOutput, XVectorOutput)
from hubert_jax.models.pretraining_hubert import HubertForPreTraining
from hubert_jax.models.pretraining_w2v2 import Wav2Vec2ForPreTraining

globals().update(HEAD_CLASSES)  # HubertForCTC, WavLMForXVector, ...

# model_type -> base model class
BASE_MODELS = {t: families.base_model_class(t) for t in families.FAMILIES}
# transformers class name (config.json `architectures`) -> our class
ARCHITECTURES = families.architectures()
# head kind -> model_type -> class (what the FlaxAutoModelFor* classes dispatch on); "ForPreTraining": masked
# prediction on a HuBERT or a WavLM encoder, wav2vec 2.0's contrastive heads
HEADS = {kind: {f.model_type: families.head_class(kind, f.model_type) for f in families.FAMILIES.values()
                if kind == "ForPreTraining" or kind in f.heads}
         for kind in (*families.HEAD_KINDS, "ForPreTraining")}

__all__ = ["BASE_MODELS", "ARCHITECTURES", "HEADS", "ModelOptions", "SpeechModel", "HubertModel", "WavLMModel",
           "Wav2Vec2Model", "HubertForPreTraining", "Wav2Vec2ForPreTraining", "ForCTC", "ForSequenceClassification",
           "ForAudioFrameClassification", "ForXVector", *HEAD_CLASSES, "ModelOutput", "CTCOutput",
           "PreTrainingOutput", "SequenceClassifierOutput", "TokenClassifierOutput", "XVectorOutput"]
