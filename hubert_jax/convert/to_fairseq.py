"""hubert-jax or transformers directories -> fairseq checkpoints that fairseq loads, runs and keeps training.

    python convert_pt_to_flax.py SRC OUT.pt --to-fairseq

What each kind becomes (fairseq's names: `cfg.model._name`, `cfg.task._name`):
- `HubertForPreTraining` -> `hubert` / `hubert_pretraining`: the encoder, `final_proj`, `label_embs_concat` and
  one label Dictionary per label set in `task_state` (symbols 0..K-1 after fairseq's 4 specials), so that
  `fairseq-hydra-train checkpoint.restore_file=OUT.pt` continues pretraining from it.
- `Wav2Vec2ForPreTraining` -> `wav2vec2` / `audio_pretraining`, quantizer and projections included.
- A base model (`HubertModel`, `Wav2Vec2Model`) -> the same, with the pretraining parameters fairseq's model has
  and ours lacks made as fairseq initialises them (seeded; logged by name): a label set of `clusters` for HuBERT,
  the quantizer and projections for wav2vec 2.0. The encoder is exact; those heads are new.
- `HubertForCTC` / `Wav2Vec2ForCTC` -> `hubert_ctc` / `wav2vec_ctc` with the target Dictionary in `task_state`
  (vocab.json's blank `<pad>` at id 0 becomes fairseq's `<s>`, its blank; the rows of the output layer keep
  their order). `cfg.model.w2v_args` holds the pretrained encoder's `model` and `task` settings, so the file
  is self-contained (current fairseq writes `w2v_args: None` and reads the encoder's settings from the
  pretrained file at `w2v_path`, which a user of this file does not have). A HuBERT CTC file also carries
  `dictionaries: [None]` in `task_state`: fairseq's `HubertEncoder` hands the fine-tuning task's state to the
  pretraining task it builds, and `[None]` is how fairseq's HubertModel knows it is built for fine-tuning.

`cfg` is plain dicts, lists and numbers; the Dictionaries pickle as `fairseq.data.dictionary.Dictionary`
without fairseq installed. The model config comes from config.json, the waveform normalisation from the
directory's feature extractor settings. Writing needs torch (a checkpoint is a `torch.save` file).
"""

from __future__ import annotations

import copyreg
import hashlib
import json
import logging
import os
import pickle

import numpy as np

from hubert_jax.convert.fairseq import fairseq_key

logger = logging.getLogger(__name__)

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary: bos, pad, eos, unk at 0..3
DEFAULT_CLUSTERS = 500  # a base HuBERT's new label set: fairseq's HuBERT iteration-2 recipe


# ----------------------------------------------------------------------------- fairseq Dictionaries, pickled
class Dictionary:
    """What fairseq's `Dictionary` pickles: its `__dict__`. Saved under fairseq's class name (`_Pickler`)."""

    def __init__(self, symbols):
        symbols = list(SPECIALS) + [str(s) for s in symbols]
        self.state = {"bos_word": "<s>", "unk_word": "<unk>", "pad_word": "<pad>", "eos_word": "</s>",
                      "symbols": symbols, "count": [1] * len(symbols),
                      "indices": {s: i for i, s in enumerate(symbols)}, "bos_index": 0, "pad_index": 1,
                      "eos_index": 2, "unk_index": 3, "nspecial": len(SPECIALS)}
        if len(self.state["indices"]) != len(symbols):
            raise ValueError(f"a fairseq Dictionary's symbols must be distinct: {symbols}")

    def __reduce__(self):
        return copyreg.__newobj__, (Dictionary,), self.state


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing `Dictionary` as the global fairseq.data.dictionary.Dictionary."""

    def save_global(self, obj, name=None):
        if obj is Dictionary:
            self.write(pickle.GLOBAL + b"fairseq.data.dictionary\nDictionary\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _PickleModule:
    """What torch.save needs of a pickle module."""
    Pickler = _Pickler
    Unpickler = pickle.Unpickler
    HIGHEST_PROTOCOL = 2


# ----------------------------------------------------------------------------- config
def conv_layers_text(config) -> str:
    """fairseq's `conv_feature_layers` string of a config's conv stack."""
    return "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in
                           zip(config.conv_dim, config.conv_kernel, config.conv_stride)) + "]"


def _check_representable(config) -> None:
    problems = []
    if config.model_type not in ("hubert", "wav2vec2"):
        problems.append(f"model_type {config.model_type!r} (fairseq has HuBERT and wav2vec 2.0; WavLM is unilm's)")
    if config.hidden_act != "gelu" or config.feat_extract_activation != "gelu":
        problems.append(f"hidden_act {config.hidden_act!r} / feat_extract_activation "
                        f"{config.feat_extract_activation!r} (fairseq's conv stack is GELU; export takes gelu)")
    if getattr(config, "add_adapter", False) or getattr(config, "adapter_attn_dim", None):
        problems.append("an adapter (fairseq's wav2vec 2.0 has none)")
    if getattr(config, "conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm (fairseq's HuBERT has no batch norm before the positional conv)")
    if config.model_type == "hubert" and not getattr(config, "feat_proj_layer_norm", True):
        problems.append("feat_proj_layer_norm False (fairseq's HuBERT always normalises the conv features)")
    if config.layer_norm_eps != 1e-5:
        problems.append(f"layer_norm_eps {config.layer_norm_eps} (fairseq's LayerNorms use 1e-5)")
    if problems:
        raise ValueError("fairseq cannot hold this model: " + "; ".join(problems))


def encoder_cfg(config) -> dict:
    """The encoder's settings as fairseq's HubertConfig / Wav2Vec2Config fields (their other fields keep
    fairseq's defaults)."""
    return {
        "extractor_mode": "layer_norm" if config.feat_extract_norm == "layer" else "default",
        "encoder_layers": config.num_hidden_layers, "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size, "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": "gelu", "layer_norm_first": bool(config.do_stable_layer_norm),
        "conv_feature_layers": conv_layers_text(config), "conv_bias": bool(config.conv_bias),
        "conv_pos": config.num_conv_pos_embeddings, "conv_pos_groups": config.num_conv_pos_embedding_groups,
        "dropout": config.hidden_dropout, "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout, "encoder_layerdrop": config.layerdrop,
        "dropout_input": config.feat_proj_dropout, "mask_length": config.mask_time_length,
        "mask_prob": config.mask_time_prob, "mask_channel_length": config.mask_feature_length,
        "mask_channel_prob": config.mask_feature_prob,
    }


def pretraining_model_cfg(config, head=None) -> dict:
    """cfg.model of a pretraining checkpoint: `hubert` (with `head`, a HeadConfig) or `wav2vec2`."""
    cfg = encoder_cfg(config)
    if config.model_type == "hubert":
        return {"_name": "hubert", **cfg, "label_rate": float(head.label_rate), "final_dim": head.final_dim,
                "untie_final_proj": bool(head.untie_final_proj), "logit_temp": float(head.logit_temp)}
    return {"_name": "wav2vec2", **cfg, "final_dim": config.proj_codevector_dim, "quantize_targets": True,
            "latent_vars": config.num_codevectors_per_group, "latent_groups": config.num_codevector_groups,
            "latent_dim": config.codevector_dim, "num_negatives": config.num_negatives,
            "logit_temp": float(config.contrastive_logits_temperature)}


def pretraining_task_cfg(config, *, normalize: bool, head=None) -> dict:
    """cfg.task of a pretraining checkpoint (`hubert_pretraining` with one `km` label set per label set of `head`,
    a HeadConfig, or `audio_pretraining`). `data` is '.': fairseq's runs give their own."""
    if config.model_type == "hubert":
        labels = ["km"] + [f"km{i}" for i in range(1, len(head.num_classes))]
        return {"_name": "hubert_pretraining", "data": ".", "fine_tuning": False, "labels": labels,
                "label_rate": float(head.label_rate), "sample_rate": 16000, "normalize": normalize}
    return {"_name": "audio_pretraining", "data": ".", "sample_rate": 16000, "normalize": normalize}


# ----------------------------------------------------------------------------- weights
def _torch_state(model) -> dict[str, np.ndarray]:
    from hubert_jax.weights.state import flat_to_torch, model_to_flat

    return flat_to_torch(model_to_flat(model), model, old_weight_norm=True)


def encoder_state(state: dict, config, where: str) -> dict[str, np.ndarray]:
    """A base model's transformers state dict -> fairseq's names. The feature projection that fairseq leaves
    out when the conv width is the model width must be the identity; `masked_spec_embed` becomes `mask_emb`."""
    out, unknown = {}, []
    group_norm = config.feat_extract_norm == "group"
    state = dict(state)
    proj = state.get("feature_projection.projection.weight")
    if config.conv_dim[-1] == config.hidden_size and proj is not None:
        bias = state.pop("feature_projection.projection.bias")
        state.pop("feature_projection.projection.weight")
        if not (np.array_equal(proj, np.eye(len(proj), dtype=proj.dtype)) and not np.any(bias)):
            raise ValueError(f"{where}: its feature projection ({config.conv_dim[-1]} -> {config.hidden_size}) is "
                             f"not the identity, and fairseq has no projection when the conv width equals the "
                             f"model width")
    for name, value in state.items():
        key = fairseq_key(name, group_norm=group_norm)
        if key is None:
            unknown.append(name)
        else:
            out[key] = value
    if unknown:
        raise ValueError(f"{where}: parameters fairseq has no name for: {', '.join(sorted(unknown))}")
    return out


def _new(shape, rng, name: str, how: str, fill) -> np.ndarray:
    logger.warning("%s: not in the model; made as fairseq initialises it (%s), seeded", name, how)
    return fill(rng, shape).astype(np.float32)


def _linear(rng, shape):
    bound = 1 / np.sqrt(shape[-1])  # torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in)
    return rng.uniform(-bound, bound, shape)


def _uniform01(rng, shape):
    return rng.uniform(0.0, 1.0, shape)


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint(cfg: dict, state: dict, task_state: dict, criterion: str) -> dict:
    """The entries fairseq's `load_checkpoint_to_cpu` and trainer read (no optimizer state: a run restores
    from it with `reset_optimizer`)."""
    return {"args": None, "cfg": cfg, "model": state, "criterion": None,
            "optimizer_history": [{"criterion_name": criterion, "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 0}],
            "task_state": task_state,
            "extra_state": {"train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
                            "val_loss": None, "previous_training_time": 0.0},
            "last_optimizer_state": None}


def _hubert_head(model, state: dict, rng, clusters: int | None):
    """(HeadConfig, final_proj weight and bias, label_embs_concat) of a HubertForPreTraining, or new ones."""
    from hubert_jax.models.pretraining_hubert import HeadConfig

    head = getattr(model, "head", None)
    if head is not None and clusters is not None:
        own = [n - head.label_offset for n in head.num_classes]
        raise ValueError(f"clusters={clusters}: the model has its own label sets ({own} clusters); clusters is for a "
                         f"base model without pretraining heads")
    if head is not None:
        if head.label_offset != len(SPECIALS):
            raise ValueError(f"hubert_pretraining.label_offset is {head.label_offset}: fairseq's label dictionaries "
                             f"put {len(SPECIALS)} special symbols before the clusters (an offset of 4)")
        return head, state["final_proj.weight"], state["final_proj.bias"], state["label_embs_concat"]
    # new heads: the settings config.json keeps for them (a --to-pytorch directory), else HuBERT's recipe
    section = dict(model.config.extra.get("hubert_pretraining") or {})
    if clusters is not None or not section:
        section.pop("num_label_embeddings", None)
        section["num_classes"] = [(DEFAULT_CLUSTERS if clusters is None else clusters) + len(SPECIALS)]
    section.setdefault("final_dim", min(256, model.config.hidden_size))
    head = HeadConfig.from_dict({**section, "label_offset": len(SPECIALS)})
    rows = head.final_dim * (len(head.num_classes) if head.untie_final_proj else 1)
    hidden = model.config.hidden_size
    return (head, _new((rows, hidden), rng, "final_proj.weight", "nn.Linear", _linear),
            _new((rows,), rng, "final_proj.bias", "nn.Linear", _linear),
            _new((sum(head.num_classes), head.final_dim), rng, "label_embs_concat", "uniform_", _uniform01))


def _wav2vec2_heads(model, state: dict, rng) -> dict:
    """A Wav2Vec2ForPreTraining's quantizer and projections in fairseq's names, or new ones for a base model."""
    config = model.config
    if hasattr(model, "quantizer"):
        return {fairseq_key(k, group_norm=False, wav2vec2_pretraining=True): v for k, v in state.items()
                if k.split(".")[0] in ("quantizer", "project_q", "project_hid")}
    groups, per_group, dim = config.num_codevector_groups, config.num_codevectors_per_group, config.codevector_dim
    final, width = config.proj_codevector_dim, config.conv_dim[-1]
    return {
        "quantizer.vars": _new((1, groups * per_group, dim // groups), rng, "quantizer.vars", "uniform_", _uniform01),
        "quantizer.weight_proj.weight": _new((groups * per_group, width), rng, "quantizer.weight_proj.weight",
                                             "normal_(0, 1)", lambda r, s: r.standard_normal(s)),
        "quantizer.weight_proj.bias": np.zeros(groups * per_group, np.float32),
        "project_q.weight": _new((final, dim), rng, "project_q.weight", "nn.Linear", _linear),
        "project_q.bias": _new((final,), rng, "project_q.bias", "nn.Linear", _linear),
        "final_proj.weight": _new((final, config.hidden_size), rng, "final_proj.weight", "nn.Linear", _linear),
        "final_proj.bias": _new((final,), rng, "final_proj.bias", "nn.Linear", _linear),
    }


def target_dictionary(vocab: dict[str, int], vocab_size: int, where: str) -> Dictionary:
    """A CTC vocabulary (transformers' layout: the blank `<pad>` at 0 and the other specials at 1..3) -> fairseq's
    target Dictionary with the same row order (fairseq's blank is `<s>` at 0)."""
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(vocab_size)):
        raise ValueError(f"{where}: vocab.json's ids are not 0..{vocab_size - 1} (the CTC head has {vocab_size} rows)")
    if by_id[0] != "<pad>" or {by_id[i] for i in (1, 2, 3)} != {"<s>", "</s>", "<unk>"}:
        raise ValueError(f"{where}: fairseq's target dictionary holds <s> <pad> </s> <unk> at ids 0-3, its blank "
                         f"at 0: expected the blank <pad> at id 0 and <s>, </s>, <unk> at 1-3 (transformers' "
                         f"layout), found {[by_id[i] for i in range(4)]}")
    return Dictionary(by_id[i] for i in range(4, vocab_size))


def _ctc_checkpoint(config, state: dict, encoder: dict, vocab, *, normalize: bool, where: str) -> dict:
    """A CTC head's fine-tuned checkpoint: the encoder under `w2v_encoder.w2v_model.`, the output layer as
    `w2v_encoder.proj`, `w2v_args` holding the encoder's settings (the module docstring says why)."""
    if vocab is None:
        raise ValueError(f"{where}: a CTC model without its vocab.json: fairseq's checkpoint needs the target "
                         f"dictionary")
    head = {"w2v_encoder.proj.weight": state["lm_head.weight"], "w2v_encoder.proj.bias": state["lm_head.bias"]}
    weights = {f"w2v_encoder.w2v_model.{k}": v for k, v in encoder.items()} | head
    dictionary = target_dictionary(vocab, int(state["lm_head.weight"].shape[0]), where)
    hubert = config.model_type == "hubert"
    head_cfg = None
    if hubert:  # the pretraining model fairseq builds (and strips) under the CTC head has its heads' sizes
        from hubert_jax.models.pretraining_hubert import HeadConfig
        head_cfg = HeadConfig(num_classes=(DEFAULT_CLUSTERS + len(SPECIALS),), label_offset=len(SPECIALS))
    w2v_args = {"model": pretraining_model_cfg(config, head_cfg),
                "task": pretraining_task_cfg(config, normalize=normalize, head=head_cfg)}
    if not hubert:
        w2v_args["model"] = {**w2v_args["model"], "quantize_targets": True}
    model_cfg = {"_name": "hubert_ctc" if hubert else "wav2vec_ctc", "w2v_path": "", "w2v_args": w2v_args,
                 "normalize": normalize, "data": ".", "apply_mask": bool(config.mask_time_prob or
                                                                         config.mask_feature_prob),
                 "mask_prob": config.mask_time_prob, "mask_length": config.mask_time_length,
                 "mask_channel_prob": config.mask_feature_prob, "mask_channel_length": config.mask_feature_length,
                 "dropout_input": config.feat_proj_dropout, "final_dropout": config.final_dropout,
                 "dropout": config.hidden_dropout, "attention_dropout": config.attention_dropout,
                 "activation_dropout": config.activation_dropout, "layerdrop": config.layerdrop,
                 "feature_grad_mult": 0.0}
    if hubert:
        task_cfg = {"_name": "hubert_pretraining", "data": ".", "fine_tuning": True, "labels": ["ltr"],
                    "label_rate": -1.0, "sample_rate": 16000, "normalize": normalize, "single_target": True}
        task_state = {"target_dictionary": dictionary, "dictionaries": [None]}
    else:
        task_cfg = {"_name": "audio_finetuning", "data": ".", "labels": "ltr", "sample_rate": 16000,
                    "normalize": normalize}
        task_state = {"target_dictionary": dictionary}
    return _checkpoint({"model": model_cfg, "task": task_cfg}, weights, task_state, "CtcCriterion")


def fairseq_checkpoint(model, *, normalize: bool, vocab: dict[str, int] | None = None,
                       clusters: int | None = None, seed: int = 0, where: str = "model") -> dict:
    """A hubert-jax model as a fairseq checkpoint (entries as `torch.load` gives them, arrays as numpy).
    `clusters`: a base HuBERT's new label set (default DEFAULT_CLUSTERS); `seed`: the parameters made new."""
    config = model.config
    _check_representable(config)
    rng = np.random.default_rng(seed)
    state = _torch_state(model)
    prefix = "" if hasattr(model, "feature_extractor") else model.base_model_prefix + "."
    encoder = encoder_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, config, where)
    if "mask_emb" not in encoder:
        encoder["mask_emb"] = _new((config.hidden_size,), rng, "mask_emb", "uniform_", _uniform01)
    if hasattr(model, "lm_head"):
        return _ctc_checkpoint(config, state, encoder, vocab, normalize=normalize, where=where)
    if config.model_type == "hubert":
        head, proj_w, proj_b, embeddings = _hubert_head(model, state, rng, clusters)
        weights = {**encoder, "final_proj.weight": proj_w, "final_proj.bias": proj_b, "label_embs_concat": embeddings}
        dictionaries = [Dictionary(range(n - len(SPECIALS))) for n in head.num_classes]
        cfg = {"model": pretraining_model_cfg(config, head),
               "task": pretraining_task_cfg(config, normalize=normalize, head=head)}
        return _checkpoint(cfg, weights, {"dictionaries": dictionaries}, "HubertCriterion")
    weights = {**encoder, **_wav2vec2_heads(model, state, rng)}
    cfg = {"model": pretraining_model_cfg(config), "task": pretraining_task_cfg(config, normalize=normalize)}
    return _checkpoint(cfg, weights, {}, "Wav2vecCriterion")


def checkpoint_digest(ckpt: dict) -> str:
    """sha256 of what a checkpoint says to fairseq: `cfg`, every tensor of `model` (name, shape, float32 bytes)
    and the symbols of the Dictionaries in `task_state`; the same for a checkpoint as `fairseq_checkpoint`
    makes it and as `convert.fairseq.load_checkpoint` reads the file back."""
    def symbols(value):
        if isinstance(value, (list, tuple)):
            return [symbols(v) for v in value]
        if isinstance(value, Dictionary):
            return value.state["symbols"]
        return None if value is None else list(value.symbols)

    h = hashlib.sha256()
    h.update(json.dumps(ckpt["cfg"], sort_keys=True, default=str).encode())
    h.update(json.dumps({k: symbols(v) for k, v in sorted(ckpt["task_state"].items())}).encode())
    for name in sorted(ckpt["model"]):
        value = ckpt["model"][name]
        value = np.ascontiguousarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)
        h.update(f"{name}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def save_checkpoint(ckpt: dict, path: str) -> None:
    """torch.save the checkpoint (arrays as float32 tensors), written to a temporary file then renamed."""
    import torch

    def tensors(obj):
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(np.array(obj, dtype=np.float32))  # a copy torch may write
        if isinstance(obj, dict):
            return {k: tensors(v) for k, v in obj.items()}
        return obj

    data = {**ckpt, "model": tensors(ckpt["model"])}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(data, tmp, pickle_module=_PickleModule, pickle_protocol=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_directory(src: str, out: str, *, overwrite: bool = False, clusters: int | None = None) -> dict:
    """A hubert-jax or transformers model directory -> the fairseq checkpoint file `out`. Returns the checkpoint."""
    from hubert_jax.auto import FlaxAutoModelForPreTraining, load_any
    from hubert_jax.config import SpeechConfig
    from hubert_jax.processing import CTCTokenizer, FeatureExtractor, VOCAB_FILE
    from hubert_jax.weights.files import PRETRAINING_HEADS

    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    # HuBERT's pretraining heads sit beside the encoder (config.json's architectures names the encoder alone); a
    # directory without their weights (e.g. --to-pytorch's) is a base model: its heads are made new, and logged
    pretraining = ("hubert_pretraining" in SpeechConfig.from_pretrained(src).extra
                   and os.path.isfile(os.path.join(src, PRETRAINING_HEADS)))
    model = FlaxAutoModelForPreTraining.from_pretrained(src) if pretraining else load_any(src)
    try:
        normalize = FeatureExtractor.from_pretrained(src).do_normalize
    except FileNotFoundError:
        normalize = False
        logger.warning("%s: no feature extractor settings; the checkpoint says the model takes raw waveforms "
                       "(task.normalize false)", src)
    vocab = None
    if hasattr(model, "lm_head"):
        if not os.path.isfile(os.path.join(src, VOCAB_FILE)):
            raise FileNotFoundError(f"{src}: a CTC model needs its {VOCAB_FILE} for fairseq's target dictionary")
        vocab = CTCTokenizer.from_pretrained(src).vocab
    ckpt = fairseq_checkpoint(model, normalize=normalize, vocab=vocab, clusters=clusters, where=src)
    save_checkpoint(ckpt, out)
    return ckpt
