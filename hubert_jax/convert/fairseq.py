"""fairseq HuBERT / wav2vec 2.0, unilm WavLM and s3prl DistilHuBERT checkpoints -> transformers names.

The checkpoint's own config gives the architecture; a table of renames gives transformers' state-dict
names, from which `state.torch_to_flat` does the rest. HuBERT's pretraining heads (`final_proj`,
`label_embs_concat`), which transformers' conversion drops, are returned separately so pretraining
can continue from them; `mask_emb` becomes `masked_spec_embed` as in transformers.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import operator
import os
import re
from typing import Mapping

import numpy as np

from hubert_jax.convert import unpickle
from hubert_jax.convert.unpickle import FairseqDictionary, plain

logger = logging.getLogger(__name__)

# fairseq/unilm/s3prl name fragment -> transformers name fragment (layer index kept)
_LAYER_RENAMES = (
    ("self_attn.grep_linear", "attention.gru_rel_pos_linear"),
    ("self_attn.grep_a", "attention.gru_rel_pos_const"),
    ("self_attn.relative_attention_bias", "attention.rel_attn_embed"),
    ("self_attn_layer_norm", "layer_norm"),
    ("self_attn", "attention"),
    ("fc1", "feed_forward.intermediate_dense"),
    ("fc2", "feed_forward.output_dense"),
    ("final_layer_norm", "final_layer_norm"),
)
_TOP_RENAMES = {
    "post_extract_proj": "feature_projection.projection",
    "layer_norm": "feature_projection.layer_norm",
    "encoder.pos_conv.0": "encoder.pos_conv_embed.conv",
    "encoder.layer_norm": "encoder.layer_norm",
    "mask_emb": "masked_spec_embed",
    # wav2vec 2.0 pretraining
    "quantizer.vars": "quantizer.codevectors",
    "quantizer.weight_proj": "quantizer.weight_proj",
    "project_q": "project_q",
}
HUBERT_HEADS = ("final_proj", "label_embs_concat")
_CONV_RE = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)$")


def _layer_key(key: str, renames) -> str | None:
    """encoder.layers.{i}.{old}... -> encoder.layers.{i}.{new}... by the first (old, new) that matches."""
    index, rest = key[len("encoder.layers."):].split(".", 1)
    for old, new in renames:
        if rest.startswith(old + ".") or rest == old:
            return f"encoder.layers.{index}.{new}{rest[len(old):]}"
    return None


def rename_key(key: str, *, wav2vec2_pretraining: bool = False) -> str | None:
    """One fairseq-style name -> transformers' name, or None when the table does not know it."""
    m = _CONV_RE.match(key)
    if m:
        part = "conv" if m[2] == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{m[1]}.{part}.{m[3]}"
    if key.startswith("encoder.layers."):
        return _layer_key(key, _LAYER_RENAMES)
    stem, _, leaf = key.rpartition(".")
    if key in _TOP_RENAMES:  # parameters without a leaf (mask_emb, quantizer.vars)
        return _TOP_RENAMES[key]
    if stem == "final_proj" and wav2vec2_pretraining:
        return f"project_hid.{leaf}"
    if stem in _TOP_RENAMES:
        return f"{_TOP_RENAMES[stem]}.{leaf}"
    return None


def fairseq_key(name: str, *, group_norm: bool, wav2vec2_pretraining: bool = False) -> str | None:
    """One transformers base-model name -> fairseq's (`rename_key` inverted), or None when fairseq has none.
    `group_norm`: the conv stack's norm is fairseq's GroupNorm (`.2`) rather than its LayerNorm (`.2.1`)."""
    m = re.match(r"^feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$", name)
    if m:
        part = "0" if m[2] == "conv" else "2" if group_norm else "2.1"
        return f"feature_extractor.conv_layers.{m[1]}.{part}.{m[3]}"
    if name.startswith("encoder.layers."):
        return _layer_key(name, [(new, old) for old, new in _LAYER_RENAMES])
    if wav2vec2_pretraining and name.startswith("project_hid."):
        return "final_proj." + name[len("project_hid."):]
    for old, new in _TOP_RENAMES.items():
        if name == new or name.startswith(new + "."):
            return old + name[len(new):]
    return None


def parse_conv_layers(text: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", without eval."""
    ops = {ast.Add: operator.add, ast.Mult: operator.mul}

    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"conv_feature_layers: unsupported expression {ast.dump(node)[:60]}")

    layers = value(ast.parse(text, mode="eval"))
    if not (isinstance(layers, list) and all(isinstance(t, tuple) and len(t) == 3 for t in layers)):
        raise ValueError(f"conv_feature_layers {text!r}: expected a list of (dim, kernel, stride)")
    return layers


def _as_dict(obj) -> dict:
    """A config as `unpickle.plain` leaves it (a dict, or None when absent)."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ValueError(f"cannot read a checkpoint config of type {type(obj).__name__}")
    return dict(obj)


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def resolve_interpolations(cfg, root=None, depth: int = 0):
    """omegaconf's `${group.key}` references, as a DictConfig pickled unresolved keeps them, replaced by the
    values they name (left as they are when the key is absent)."""
    root = cfg if root is None else root
    if isinstance(cfg, dict):
        return {k: resolve_interpolations(v, root, depth) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [resolve_interpolations(v, root, depth) for v in cfg]
    m = _INTERPOLATION.match(cfg) if isinstance(cfg, str) else None
    if m is None or depth > 8:
        return cfg
    node = root
    for part in m[1].split("."):
        if not isinstance(node, dict) or part not in node:
            return cfg
        node = node[part]
    return resolve_interpolations(node, root, depth + 1)


def config_fields(cfg: Mapping) -> dict:
    """A fairseq/unilm/s3prl model config -> transformers config fields."""
    g = cfg.get
    fields = dict(
        hidden_size=g("encoder_embed_dim", 768), num_hidden_layers=g("encoder_layers", 12),
        intermediate_size=g("encoder_ffn_embed_dim", 3072), num_attention_heads=g("encoder_attention_heads", 12),
        hidden_act=g("activation_fn", "gelu"), do_stable_layer_norm=bool(g("layer_norm_first", False)),
        feat_extract_norm="layer" if g("extractor_mode", "default") == "layer_norm" else "group",
        conv_bias=bool(g("conv_bias", False)), num_conv_pos_embeddings=g("conv_pos", 128),
        num_conv_pos_embedding_groups=g("conv_pos_groups", 16), hidden_dropout=g("dropout", 0.1),
        attention_dropout=g("attention_dropout", 0.1), activation_dropout=g("activation_dropout", 0.0),
        layerdrop=g("encoder_layerdrop", 0.0), feat_proj_dropout=g("dropout_input", 0.0),
        mask_time_length=g("mask_length", 10),
    )
    layers = parse_conv_layers(g("conv_feature_layers") or g("extractor_conv_feature_layers")
                               or "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
    fields.update(conv_dim=[d for d, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
                  conv_stride=[s for _, _, s in layers])
    if g("mask_prob"):
        fields["mask_time_prob"] = g("mask_prob")
    if g("relative_position_embedding") or g("num_buckets"):
        fields.update(num_buckets=g("num_buckets", 320), max_bucket_distance=g("max_distance", 800))
    return fields


_PRETRAINED = "__pretrained_file__"  # (path, state dict) of the pretrained file an encoder config was read from


def check_frozen_features(finetuned: Mapping, state: Mapping, pretrained: tuple | None, path: str) -> None:
    """A fine-tuning run with frozen conv features (feature_grad_mult 0, fairseq's default) leaves them equal
    to its pretrained checkpoint's: a pretrained file whose differ is another model's, refused by name."""
    if pretrained is None or float(finetuned.get("feature_grad_mult", 0.0) or 0.0) != 0.0:
        return
    where, weights = pretrained
    convs = [k for k in state if k.startswith("feature_extractor.conv_layers.") and k in weights]
    differ = [k for k in convs if not np.array_equal(np.asarray(state[k]), np.asarray(weights[k]))]
    if differ:
        raise ValueError(f"{where}: not the pretrained checkpoint {path} was fine-tuned from: its conv feature "
                         f"weights ({differ[0]}, ...) differ from the fine-tuned file's, which fine-tuning kept "
                         f"frozen (feature_grad_mult 0); {path} names {finetuned.get('w2v_path')!r} (w2v_path)")


def finetuning_fields(finetuned: Mapping) -> dict:
    """The settings a fine-tuned checkpoint's own cfg (fairseq's Wav2Vec2AsrConfig / HubertAsrConfig) gives the
    encoder for fine-tuning, which override the pretrained file's: masks, dropouts, layerdrop."""
    g = finetuned.get
    apply_mask = bool(g("apply_mask", True))
    return dict(mask_time_prob=float(g("mask_prob", 0.0)) if apply_mask else 0.0,
                mask_time_length=int(g("mask_length", 10)),
                mask_feature_prob=float(g("mask_channel_prob", 0.0)) if apply_mask else 0.0,
                mask_feature_length=int(g("mask_channel_length", 10)),
                feat_proj_dropout=float(g("dropout_input", 0.0)), hidden_dropout=float(g("dropout", 0.0)),
                attention_dropout=float(g("attention_dropout", 0.0)),
                activation_dropout=float(g("activation_dropout", 0.0)), layerdrop=float(g("layerdrop", 0.0)),
                final_dropout=float(g("final_dropout", 0.0)))


def check_encoder_shapes(fields: dict, state: Mapping, path: str, pretrained: str | None) -> None:
    """The pretrained settings against the fine-tuned weights: a --w2v-checkpoint of another model is refused."""
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    width = np.shape(state["encoder.layer_norm.weight"])[0] if "encoder.layer_norm.weight" in state else None
    found = (len(layers), width)
    settings = (fields["num_hidden_layers"], fields["hidden_size"] if width is not None else None)
    if layers and found != settings:
        raise ValueError(f"{pretrained}: its encoder ({settings[0]} layers of {settings[1]}) is not the one {path} "
                         f"fine-tuned ({found[0]} layers of {found[1]}): give the pretrained checkpoint it was "
                         f"trained from (--w2v-checkpoint)")


def _finetuned_encoder_cfg(model: Mapping, path: str, w2v_checkpoint: str | None) -> dict:
    """The pretrained encoder's model config of a fine-tuned checkpoint: `w2v_args` when the file keeps it;
    else (current fairseq writes `w2v_args: None`) the config of the pretrained checkpoint it names in
    `w2v_path`, read from `w2v_checkpoint`, that path, or a file of that name beside `path`."""
    w2v_args = model.get("w2v_args")
    if w2v_args:
        w2v_args = _as_dict(w2v_args)
        return _as_dict(w2v_args.get("model", w2v_args))  # hydra configs nest it; Namespace args are flat
    w2v_path = model.get("w2v_path")
    candidates = [c for c in (w2v_checkpoint, w2v_path, w2v_path and os.path.join(
        os.path.dirname(os.path.abspath(path)), os.path.basename(w2v_path))) if c]
    candidates = [c for c in dict.fromkeys(candidates) if os.path.abspath(c) != os.path.abspath(path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            pretrained = load_checkpoint(candidate)
            cfg = _stored_model_cfg(pretrained, candidate)
            if "w2v_args" in cfg or "w2v_path" in cfg:
                raise ValueError(f"{candidate}: expected the pretrained checkpoint of {path}, found a fine-tuned one")
            if w2v_path and os.path.basename(candidate) != os.path.basename(w2v_path):
                logger.warning("%s was fine-tuned from %s (cfg.model.w2v_path); its encoder settings are read from "
                               "%s, a file of another name: make sure it is that checkpoint", path, w2v_path, candidate)
            logger.info("%s: encoder settings read from %s (its w2v_args is None)", path, candidate)
            return {**cfg, _PRETRAINED: (candidate, pretrained.get("model") or {})}
    looked = ", ".join(candidates) if candidates else "no w2v_path either"
    raise ValueError(
        f"{path}: a fine-tuned checkpoint whose cfg.model.w2v_args is None, so the encoder's settings (layers, "
        f"widths, attention heads, conv stack) are not in this file. fairseq reads them from the pretrained "
        f"checkpoint in cfg.model.w2v_path; looked for it at: {looked}. Pass that file with --w2v-checkpoint "
        f"PATH (w2v_checkpoint=PATH)")


def _stored_model_cfg(ckpt: Mapping, path: str) -> dict:
    """The model config a fairseq or unilm checkpoint stores."""
    if ckpt.get("cfg") is not None:
        cfg = _as_dict(ckpt["cfg"])
        return _as_dict(cfg.get("model", cfg))  # fairseq hydra configs nest it; unilm's WavLM stores it flat
    if ckpt.get("args") is not None:  # older fairseq: argparse.Namespace
        return _as_dict(ckpt["args"])
    raise ValueError(f"{path}: not a fairseq, unilm or s3prl checkpoint: expected a 'cfg', 'args' or "
                     f"'Distiller' entry")


def _model_cfg(ckpt: Mapping, path: str = "checkpoint", w2v_checkpoint: str | None = None) -> tuple[dict, str]:
    """(model config, source format) for each checkpoint layout we know."""
    if "Distiller" in ckpt:  # s3prl DistilHuBERT: the runner's Config holds the distiller's settings
        config = _as_dict(ckpt.get("Config"))
        if "distiller" not in config:
            raise ValueError(f"{path}: an s3prl checkpoint whose Config has no 'distiller' section")
        return _as_dict(config["distiller"]), "s3prl"
    model = _stored_model_cfg(ckpt, path)
    if "w2v_args" in model or "w2v_path" in model:  # fine-tuned: the pretrained encoder's config
        return _finetuned_encoder_cfg(model, path, w2v_checkpoint), "fairseq-finetuned"
    return model, "fairseq"


def _family(model_cfg: Mapping, state: Mapping, fmt: str) -> str:
    name = str(model_cfg.get("_name", "")).lower()
    if fmt == "s3prl":
        return "hubert"
    if "wavlm" in name or any(".grep_linear." in k or "relative_attention_bias" in k for k in state):
        return "wavlm"
    if "hubert" in name or "label_embs_concat" in state:
        return "hubert"
    return "wav2vec2"


@dataclasses.dataclass
class Converted:
    """An original checkpoint in transformers' terms: config fields, state dict, heads, kind, and the CTC vocabulary."""
    fields: dict  # transformers config fields
    state: dict  # transformers state dict
    heads: dict  # HuBERT pretraining heads (fairseq names)
    kind: str  # 'Model', 'ForCTC' (fine-tuned) or 'ForPreTraining' (wav2vec 2.0 with its quantizer)
    vocab: dict | None = None  # a fine-tuned checkpoint's CTC vocabulary, from its target dictionary
    normalize: bool = False  # the waveform normalisation the model was trained with (fairseq task.normalize)


def _task_state(ckpt: Mapping) -> Mapping:
    task_state = ckpt.get("task_state")
    return task_state if isinstance(task_state, Mapping) else {}


def _label_dictionaries(ckpt: Mapping, path: str) -> list[FairseqDictionary] | None:
    dictionaries = _task_state(ckpt).get("dictionaries")
    if dictionaries is None:
        return None
    dictionaries = list(dictionaries) if isinstance(dictionaries, (list, tuple)) else [dictionaries]
    if not all(isinstance(d, FairseqDictionary) for d in dictionaries):
        raise ValueError(f"{path}: task_state.dictionaries holds something other than fairseq Dictionaries")
    return dictionaries


def _cluster_rows(d: FairseqDictionary, where: str) -> list[int]:
    """Row of cluster k = 0..K-1 in a label set's embeddings: its symbol's index in the dictionary."""
    index = {s: i for i, s in enumerate(d.symbols)}
    clusters = len(d) - d.nspecial
    missing = [str(k) for k in range(clusters) if str(k) not in index or index[str(k)] < d.nspecial]
    if missing:
        raise ValueError(f"{where}: its symbols after the {d.nspecial} specials are not the clusters 0.."
                         f"{clusters - 1} (no {', '.join(missing[:5])}): not a k-means label dictionary")
    return [index[str(k)] for k in range(clusters)]


def _hubert_heads_config(model_cfg: Mapping, heads: dict, dictionaries, path: str) -> dict:
    """`hubert_pretraining` settings; with the label dictionaries, the cluster count of each label set and
    the offset of cluster 0 (the specials), the embedding rows put in cluster order when they are not."""
    embeddings = heads["label_embs_concat"]
    config = {"final_dim": model_cfg.get("final_dim", embeddings.shape[-1]),
              "logit_temp": model_cfg.get("logit_temp", 0.1),
              "untie_final_proj": bool(model_cfg.get("untie_final_proj", False)),
              "label_rate": model_cfg.get("label_rate", 50)}
    if dictionaries is None:  # e.g. a file stripped of task_state: one label set, fairseq's 4 specials
        logger.warning("%s: no label dictionaries in task_state: assuming one label set of %d rows with "
                       "fairseq's 4 special symbols first", path, embeddings.shape[0])
        return {**config, "label_offset": 4, "num_classes": [int(embeddings.shape[0])],
                "num_label_embeddings": int(embeddings.shape[0])}
    sizes = [len(d) for d in dictionaries]
    if sum(sizes) != embeddings.shape[0]:
        raise ValueError(f"{path}: label_embs_concat has {embeddings.shape[0]} rows, its label dictionaries "
                         f"{sizes} symbols")
    offsets = {d.nspecial for d in dictionaries}
    if len(offsets) != 1:
        raise ValueError(f"{path}: label dictionaries with different numbers of specials {sorted(offsets)}")
    order, start = [], 0
    for i, d in enumerate(dictionaries):
        rows = _cluster_rows(d, f"{path}: task_state.dictionaries[{i}]")
        order += [start + r for r in range(d.nspecial)] + [start + r for r in rows]
        start += len(d)
    if order != list(range(len(order))):
        heads["label_embs_concat"] = embeddings[order]
    return {**config, "label_offset": offsets.pop(), "num_classes": sizes, "num_label_embeddings": sum(sizes)}


def _ctc_vocab(ckpt: Mapping, path: str) -> dict[str, int] | None:
    d = _task_state(ckpt).get("target_dictionary")
    if not isinstance(d, FairseqDictionary):
        return None
    if (d.bos_index, d.pad_index, d.eos_index, d.unk_index, d.nspecial) != (0, 1, 2, 3, 4):
        specials = (d.bos_index, d.pad_index, d.eos_index, d.unk_index)
        raise ValueError(f"{path}: a target dictionary with specials at {specials} ({d.nspecial} in all), not "
                         f"fairseq's <s> <pad> </s> <unk> at 0-3")
    return ctc_vocab(d.symbols[d.nspecial:], f"{path}: task_state.target_dictionary")


def convert_checkpoint(ckpt: Mapping, path: str = "checkpoint", w2v_checkpoint: str | None = None) -> Converted:
    """A loaded original checkpoint -> transformers config fields and state dict, HuBERT pretraining heads
    and, for a fine-tuned checkpoint that carries its target dictionary, the CTC vocabulary."""
    model_cfg, fmt = _model_cfg(ckpt, path, w2v_checkpoint)
    raw = ckpt["Distiller"] if fmt == "s3prl" else ckpt.get("model")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: no state dict ('model' or 'Distiller' entry)")
    if fmt == "fairseq-finetuned":
        prefix = "w2v_encoder.w2v_model."
        state = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        lm_head = {k.replace("w2v_encoder.proj.", "lm_head."): v for k, v in raw.items()
                   if k.startswith("w2v_encoder.proj.")}
    else:
        state, lm_head = dict(raw), {}
    family = _family(model_cfg, state, fmt)
    fields = config_fields(model_cfg)
    fields["model_type"] = family
    if fmt == "fairseq-finetuned":
        check_frozen_features(_stored_model_cfg(ckpt, path), state, model_cfg.get(_PRETRAINED), path)
        fields.update(finetuning_fields(_stored_model_cfg(ckpt, path)))
        check_encoder_shapes(fields, state, path, w2v_checkpoint or _stored_model_cfg(ckpt, path).get("w2v_path"))
        if not (fields["mask_time_prob"] or fields["mask_feature_prob"]):
            state.pop("mask_emb", None)  # transformers has no masked_spec_embed without masking
    if family == "hubert":
        fields["feat_proj_layer_norm"] = "layer_norm.weight" in state
    pretraining = family == "wav2vec2" and "quantizer.vars" in state
    if pretraining:
        fields.update(num_codevector_groups=model_cfg.get("latent_groups", 2),
                      num_codevectors_per_group=model_cfg.get("latent_vars", 320),
                      codevector_dim=state["quantizer.vars"].shape[-1] * model_cfg.get("latent_groups", 2),
                      proj_codevector_dim=model_cfg.get("final_dim", 256),
                      num_negatives=model_cfg.get("num_negatives", 100),
                      contrastive_logits_temperature=model_cfg.get("logit_temp", 0.1))
    if "mask_emb" not in state:  # transformers creates masked_spec_embed only when a mask prob is set
        fields.update(mask_time_prob=0.0, mask_feature_prob=0.0)
    elif not fields.get("mask_time_prob") and fmt != "fairseq-finetuned":
        fields["mask_time_prob"] = 0.05
    if "post_extract_proj.weight" not in state and fields["conv_dim"][-1] == fields["hidden_size"]:
        # fairseq, unilm and s3prl skip the projection when the conv width is the model width; transformers
        # always has one: the identity
        width = fields["hidden_size"]
        state["post_extract_proj.weight"] = np.eye(width, dtype=np.float32)
        state["post_extract_proj.bias"] = np.zeros(width, np.float32)

    out, heads, unknown = {}, {}, []
    for key, value in state.items():
        if family == "hubert" and key.split(".")[0] in HUBERT_HEADS:
            if fmt != "fairseq-finetuned":  # fine-tuning leaves label_embs_concat behind, unused
                heads[key] = value
            continue
        new = rename_key(key, wav2vec2_pretraining=pretraining)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if fmt == "s3prl" and unknown:
        logger.warning("s3prl distiller weights not part of the student HubertModel (prediction heads): %s",
                       ", ".join(sorted(unknown)))
    elif unknown:
        raise ValueError(f"{path}: checkpoint tensors with no transformers name ({len(unknown)}): "
                         f"{', '.join(sorted(unknown))}")
    if lm_head:
        out = {f"{family}.{k}": v for k, v in out.items()} | lm_head  # base_model_prefix == model_type
        fields["vocab_size"] = lm_head["lm_head.weight"].shape[0]
    elif pretraining:
        out = {(k if k.split(".")[0] in ("quantizer", "project_q", "project_hid") else f"wav2vec2.{k}"): v
               for k, v in out.items()}
    kind = "ForCTC" if lm_head else "ForPreTraining" if pretraining else "Model"
    if heads:
        fields["hubert_pretraining"] = _hubert_heads_config(model_cfg, heads, _label_dictionaries(ckpt, path), path)
    vocab = _ctc_vocab(ckpt, path) if lm_head else None
    return Converted(fields, out, heads, kind, vocab, _normalize(ckpt, model_cfg))


def _normalize(ckpt: Mapping, model_cfg: Mapping) -> bool:
    """fairseq keeps it in the task config (cfg.task, or the flat args), unilm in the model config."""
    for source in (_as_dict(ckpt.get("cfg")).get("task"), ckpt.get("args"), model_cfg):
        if isinstance(source, Mapping) and "normalize" in source:
            return bool(source["normalize"])
    return False


def load_checkpoint(path: str) -> dict:
    """An original checkpoint as data: tensors, dicts and lists, `FairseqDictionary` values; no code from
    the file runs (`unpickle.load`). omegaconf `${...}` references in its config are resolved."""
    ckpt = plain(unpickle.load(path))
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict of checkpoint entries, got {type(ckpt).__name__}")
    for key in ("cfg", "Config"):
        if isinstance(ckpt.get(key), dict):
            ckpt[key] = resolve_interpolations(ckpt[key])
    return ckpt


def ctc_vocab(symbols, where: str) -> dict[str, int]:
    """fairseq letter symbols (after its 4 specials) -> a transformers CTC vocabulary.

    fairseq numbers <s>, <pad>, </s>, <unk> 0..3 before the symbols and uses index 0 (<s>) as the CTC
    blank; transformers' blank is the pad token, so <pad> takes id 0 and <s> id 1 (the layout of
    facebook/wav2vec2-base-960h's vocab.json). Other ids keep fairseq's numbering.
    """
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for symbol in symbols:
        if symbol in vocab:
            raise ValueError(f"{where}: symbol {symbol!r} appears twice")
        vocab[symbol] = len(vocab)
    return vocab


def read_fairseq_dictionary(path: str) -> dict[str, int]:
    """A fairseq `dict.ltr.txt` ("symbol count" lines) -> a transformers CTC vocabulary (`ctc_vocab`)."""
    symbols, seen = [], {"<pad>", "<s>", "</s>", "<unk>"}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            symbol = line.rsplit(" ", 1)[0] if " " in line else line
            if symbol in seen:  # named here with its line; ctc_vocab would only name the file
                raise ValueError(f"{path}:{line_no}: symbol {symbol!r} appears twice")
            seen.add(symbol)
            symbols.append(symbol)
    return ctc_vocab(symbols, path)
