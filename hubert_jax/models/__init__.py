from hubert_jax.models.heads import (ARCHITECTURES, ForAudioFrameClassification, ForCTC, ForSequenceClassification,
                                     ForXVector, HubertForCTC, HubertForSequenceClassification, Wav2Vec2ForAudioFrameClassification,
                                     Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification, Wav2Vec2ForXVector,
                                     WavLMForAudioFrameClassification, WavLMForCTC, WavLMForSequenceClassification,
                                     WavLMForXVector)
from hubert_jax.models.layers import ModelOptions
from hubert_jax.models.model import BASE_MODELS, HubertModel, SpeechModel, Wav2Vec2Model, WavLMModel
from hubert_jax.models.outputs import (CTCOutput, ModelOutput, SequenceClassifierOutput, TokenClassifierOutput,
                                       XVectorOutput)
