"""fairseq HuBERT / wav2vec 2.0, unilm WavLM and s3prl DistilHuBERT checkpoints -> transformers names.

The checkpoint's own config gives the architecture; a table of renames gives transformers' state-dict
names, from which `state.torch_to_flat` does the rest. HuBERT's pretraining heads (`final_proj`,
`label_embs_concat`), which transformers' conversion drops, are returned separately so pretraining
can continue from them; `mask_emb` becomes `masked_spec_embed` as in transformers.
"""

from __future__ import annotations

import argparse
import ast
import logging
import operator
import re
from typing import Mapping

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


def rename_key(key: str, *, wav2vec2_pretraining: bool = False) -> str | None:
    """One fairseq-style name -> transformers' name, or None when the table does not know it."""
    m = _CONV_RE.match(key)
    if m:
        part = "conv" if m[2] == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{m[1]}.{part}.{m[3]}"
    if key.startswith("encoder.layers."):
        index, rest = key[len("encoder.layers."):].split(".", 1)
        for old, new in _LAYER_RENAMES:
            if rest.startswith(old + ".") or rest == old:
                return f"encoder.layers.{index}.{new}{rest[len(old):]}"
        return None
    stem, _, leaf = key.rpartition(".")
    if key in _TOP_RENAMES:  # parameters without a leaf (mask_emb, quantizer.vars)
        return _TOP_RENAMES[key]
    if stem == "final_proj" and wav2vec2_pretraining:
        return f"project_hid.{leaf}"
    if stem in _TOP_RENAMES:
        return f"{_TOP_RENAMES[stem]}.{leaf}"
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
    if obj is None:
        return {}
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, Mapping):
        return {k: _as_dict(v) if isinstance(v, (Mapping, argparse.Namespace)) else v for k, v in obj.items()}
    try:  # omegaconf containers
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    except Exception as e:
        raise ValueError(f"cannot read the checkpoint config of type {type(obj).__name__}") from e


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


def _model_cfg(ckpt: Mapping) -> tuple[dict, str]:
    """(model config, source format) for each checkpoint layout we know."""
    if "Distiller" in ckpt:  # s3prl DistilHuBERT
        config = _as_dict(ckpt.get("Config"))
        return _as_dict(config.get("distiller", config)), "s3prl"
    if "cfg" in ckpt and ckpt["cfg"] is not None:
        cfg = _as_dict(ckpt["cfg"])
        model = cfg.get("model", cfg)  # fairseq hydra configs nest it; unilm's WavLM stores it flat
        if "w2v_args" in model and model["w2v_args"]:  # fine-tuned: the pretrained model's config
            return _as_dict(model["w2v_args"]).get("model", {}), "fairseq-finetuned"
        return model, "fairseq"
    if "args" in ckpt:  # older fairseq: argparse.Namespace
        args = _as_dict(ckpt["args"])
        if args.get("w2v_args"):
            return _as_dict(args["w2v_args"]), "fairseq-finetuned"
        return args, "fairseq"
    raise ValueError("not a fairseq, unilm or s3prl checkpoint: expected a 'cfg', 'args' or 'Distiller' entry")


def _family(model_cfg: Mapping, state: Mapping, fmt: str) -> str:
    name = str(model_cfg.get("_name", "")).lower()
    if fmt == "s3prl":
        return "hubert"
    if "wavlm" in name or any(".grep_linear." in k or "relative_attention_bias" in k for k in state):
        return "wavlm"
    if "hubert" in name or "label_embs_concat" in state:
        return "hubert"
    return "wav2vec2"


def convert_checkpoint(ckpt: Mapping) -> tuple[dict, dict, dict, str]:
    """(transformers config dict, transformers state dict, HuBERT pretraining heads, head kind).

    head kind: 'Model', 'ForCTC' (fine-tuned) or 'ForPreTraining' (wav2vec 2.0 with its quantizer)."""
    model_cfg, fmt = _model_cfg(ckpt)
    raw = ckpt["Distiller"] if fmt == "s3prl" else ckpt["model"]
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
    if family == "hubert":
        fields["feat_proj_layer_norm"] = "layer_norm.weight" in state
    pretraining = family == "wav2vec2" and "quantizer.vars" in state
    if pretraining:
        fields.update(num_codevector_groups=model_cfg.get("latent_groups", 2),
                      num_codevectors_per_group=model_cfg.get("latent_vars", 320),
                      codevector_dim=state["quantizer.vars"].shape[-1] * model_cfg.get("latent_groups", 2),
                      proj_codevector_dim=model_cfg.get("final_dim", 256))
    if "mask_emb" in state and not fields.get("mask_time_prob"):
        fields["mask_time_prob"] = 0.05  # transformers creates masked_spec_embed only when a prob is set

    out, heads, unknown = {}, {}, []
    for key, value in state.items():
        if family == "hubert" and key.split(".")[0] in HUBERT_HEADS:
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
        raise ValueError(f"checkpoint tensors with no transformers name ({len(unknown)}): "
                         f"{', '.join(sorted(unknown))}")
    if lm_head:
        out = {f"{family}.{k}": v for k, v in out.items()} | lm_head  # base_model_prefix == model_type
        fields["vocab_size"] = lm_head["lm_head.weight"].shape[0]
    elif pretraining:
        out = {(k if k.split(".")[0] in ("quantizer", "project_q", "project_hid") else f"wav2vec2.{k}"): v
               for k, v in out.items()}
    kind = "ForCTC" if lm_head else "ForPreTraining" if pretraining else "Model"
    if heads:
        fields["hubert_pretraining"] = {
            "final_dim": model_cfg.get("final_dim", heads["label_embs_concat"].shape[-1]),
            "logit_temp": model_cfg.get("logit_temp", 0.1),
            "untie_final_proj": bool(model_cfg.get("untie_final_proj", False)),
            "label_rate": model_cfg.get("label_rate", 50),
            "label_offset": 4,  # fairseq Dictionary: <s>, <pad>, </s>, <unk>, then the clusters
            "num_label_embeddings": int(heads["label_embs_concat"].shape[0]),
        }
    return fields, out, heads, kind


def load_checkpoint(path: str) -> dict:
    """torch.load with weights_only=True; fairseq's stored configs (argparse.Namespace, and omegaconf
    containers when omegaconf is installed) are allowed as data, nothing else."""
    from hubert_jax.convert.checkpoint_io import read_torch_file

    try:
        return read_torch_file(path)
    except ValueError as first:
        import torch

        allowed = [argparse.Namespace]
        try:
            import omegaconf
            from omegaconf import base, dictconfig, listconfig, nodes

            allowed += [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata,
                        nodes.AnyNode, omegaconf.Node]
        except ImportError:
            pass
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            hint = "" if len(allowed) > 1 else " (if its config is an omegaconf object: pip install omegaconf)"
            raise ValueError(f"{path}: not a readable checkpoint{hint}: {e}") from first


def read_fairseq_dictionary(path: str) -> dict[str, int]:
    """A fairseq `dict.ltr.txt` -> a transformers CTC vocabulary.

    fairseq numbers <s>, <pad>, </s>, <unk> 0..3 before the file's symbols and uses index 0 (<s>) as the
    CTC blank; transformers' blank is the pad token, so <pad> takes id 0 and <s> id 1 (the layout of
    facebook/wav2vec2-base-960h's vocab.json). Other ids keep fairseq's numbering.
    """
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            symbol = line.rsplit(" ", 1)[0] if " " in line else line
            if symbol in vocab:
                raise ValueError(f"{path}:{line_no}: symbol {symbol!r} appears twice")
            vocab[symbol] = len(vocab)
    return vocab
