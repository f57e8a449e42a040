from hubert_jax.models.heads import (ForAudioFrameClassification, ForCTC, ForSequenceClassification, ForXVector,
                                     HubertForCTC, HubertForSequenceClassification,
                                     Wav2Vec2ForAudioFrameClassification, Wav2Vec2ForCTC,
                                     Wav2Vec2ForSequenceClassification, Wav2Vec2ForXVector,
                                     WavLMForAudioFrameClassification, WavLMForCTC, WavLMForSequenceClassification,
                                     WavLMForXVector)
from hubert_jax.models.layers import ModelOptions
from hubert_jax.models.model import BASE_MODELS, HubertModel, SpeechModel, Wav2Vec2Model, WavLMModel
from hubert_jax.models.outputs import (CTCOutput, ModelOutput, PreTrainingOutput, SequenceClassifierOutput,
                                       TokenClassifierOutput, XVectorOutput)
from hubert_jax.models.pretraining_hubert import HubertForPreTraining
from hubert_jax.models.pretraining_w2v2 import Wav2Vec2ForPreTraining

# transformers class name (config.json `architectures`) -> our class
ARCHITECTURES = {cls.__name__: cls for cls in (
    HubertModel, WavLMModel, Wav2Vec2Model, HubertForCTC, HubertForSequenceClassification, WavLMForCTC,
    WavLMForSequenceClassification, WavLMForAudioFrameClassification, WavLMForXVector, Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification, Wav2Vec2ForAudioFrameClassification, Wav2Vec2ForXVector,
    Wav2Vec2ForPreTraining)}

# task -> model_type -> class (what the FlaxAutoModelFor* classes dispatch on)
TASK_CLASSES = {
    "ForCTC": {"hubert": HubertForCTC, "wavlm": WavLMForCTC, "wav2vec2": Wav2Vec2ForCTC},
    "ForSequenceClassification": {"hubert": HubertForSequenceClassification, "wavlm": WavLMForSequenceClassification,
                                  "wav2vec2": Wav2Vec2ForSequenceClassification},
    "ForAudioFrameClassification": {"wavlm": WavLMForAudioFrameClassification,
                                    "wav2vec2": Wav2Vec2ForAudioFrameClassification},
    "ForXVector": {"wavlm": WavLMForXVector, "wav2vec2": Wav2Vec2ForXVector},
    # masked prediction on a HuBERT or a WavLM encoder; wav2vec 2.0's contrastive heads
    "ForPreTraining": {"hubert": HubertForPreTraining, "wavlm": HubertForPreTraining,
                       "wav2vec2": Wav2Vec2ForPreTraining},
}
