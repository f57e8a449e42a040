"""DistilHuBERT (s3prl's distiller): a small HubertModel student whose prediction heads regress chosen
hidden layers of a frozen teacher, with L1 + cosine (-log sigmoid(cos)) losses.

The student is transformers' DistilHuBERT layout (a HubertModel, typically 2 post-LN layers without the
feature-projection LayerNorm), so exporting it gives a HubertModel directory. The heads are s3prl's
"expand-last" output layer: Linear(hidden, inter x N) -> GELU -> one Linear(inter, teacher dim) per
predicted layer. s3prl averages the losses over every frame of its (unpadded) batches; here padded
frames are left out of the averages, which is the same on unpadded batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax.config import HubertConfig
from hubert_jax.models.layers import Linear, ModelOptions, make_param, torch_linear_init, uniform
from hubert_jax.models.model import HubertModel, make_options


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """DistilHuBERT's prediction heads: the teacher layers they predict, their sizes and the loss weights (s3prl's
    names)."""
    pred_layers: tuple[int, ...] = (4, 8, 12)  # teacher hidden_states indices (fairseq output_layer)
    teacher_dim: int = 768
    inter_dim: int = -1  # s3prl out_layer_inter_dim; -1: the student's hidden size
    cosine_weight: float = 1.0
    feat_pen_weight: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "pred_layers", tuple(int(x) for x in self.pred_layers))


class SplitLinear(nnx.Module):
    """One Linear(in, out) per predicted layer, applied to its own slice: (..., N, in) -> (..., N, out)."""

    def __init__(self, in_dim: int, splits: int, out_dim: int, *, opts: ModelOptions, rngs: nnx.Rngs):
        bound = 1.0 / in_dim ** 0.5
        self.dtype = opts.dtype
        self.kernel = make_param(rngs, uniform(-bound, bound), (splits, in_dim, out_dim), (None, "mlp", "embed"),
                                 opts.param_dtype)
        self.bias = make_param(rngs, uniform(-bound, bound), (splits, out_dim), (None, "embed"), opts.param_dtype)

    def __call__(self, x):
        y = jnp.einsum("...ni,nio->...no", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class DistilHubertStudent(nnx.Module):
    """The DistilHuBERT student: a small HuBERT encoder and one prediction head per teacher layer."""
    def __init__(self, config: HubertConfig, distill: DistillConfig, *, rngs: nnx.Rngs | None = None,
                 opts: ModelOptions | None = None, **option_kw):
        opts = make_options(opts, **option_kw)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config, self.distill = config, distill
        n = len(distill.pred_layers)
        inter = distill.inter_dim if distill.inter_dim > 0 else config.hidden_size
        self.inter = inter
        self.hubert = HubertModel(config, opts=opts, rngs=rngs)
        self.pred_in = Linear(config.hidden_size, inter * n, axes=("embed", "mlp"), opts=opts, rngs=rngs,
                              **torch_linear_init(config.hidden_size))
        self.pred_out = SplitLinear(inter, n, distill.teacher_dim, opts=opts, rngs=rngs)

    def __call__(self, input_values, attention_mask=None, *, feature_grad_mult: float = 1.0,
                 deterministic: bool = True, dropout_rng=None):
        """(predictions (B, N, F, teacher_dim), frame mask (B, F), feature penalty)."""
        base = self.hubert
        features = base.conv_features(input_values, feature_grad_mult=feature_grad_mult)
        features_pen = jnp.mean(jnp.square(features.astype(jnp.float32)))
        key_mask = base.frame_mask(features.shape[1], attention_mask)
        hidden, _ = base.project(features, deterministic=deterministic, dropout_rng=dropout_rng)
        encoded = base.contextualize(hidden, key_mask, deterministic=deterministic, dropout_rng=dropout_rng)
        frame_mask = jnp.ones(features.shape[:2], bool) if key_mask is None else key_mask
        x = jax.nn.gelu(self.pred_in(encoded.last_hidden_state), approximate=False)
        b, f, _ = x.shape
        pred = self.pred_out(x.reshape(b, f, len(self.distill.pred_layers), self.inter))
        return jnp.transpose(pred, (0, 2, 1, 3)), frame_mask, features_pen


def distill_loss(pred, target, frame_mask, features_pen, distill: DistillConfig):
    """s3prl's distiller loss. pred and target (B, N, F, D); returns (loss, metrics)."""
    pred = pred.astype(jnp.float32)
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    weight = frame_mask[:, None, :].astype(jnp.float32)  # (B, 1, F)
    frames = jnp.maximum(weight.sum(), 1.0)
    n = pred.shape[1]
    l1 = jnp.abs(pred - target).mean(-1)  # (B, N, F)
    cos = jnp.sum(pred * target, -1) / (jnp.maximum(jnp.linalg.norm(pred, axis=-1), 1e-8)
                                         * jnp.maximum(jnp.linalg.norm(target, axis=-1), 1e-8))
    sim = -jax.nn.log_sigmoid(cos)
    rec_layers = (l1 * weight).sum((0, 2)) / frames
    sim_layers = (sim * weight).sum((0, 2)) / frames
    rec, sim_total = rec_layers.mean(), sim_layers.mean()
    loss = rec + distill.cosine_weight * sim_total + distill.feat_pen_weight * features_pen
    metrics = {"loss": loss, "rec_loss": rec, "sim_loss": sim_total, "features_pen": features_pen,
               "cosine": (cos * weight).sum() / (frames * n)}
    for i, layer in enumerate(distill.pred_layers):
        metrics[f"layer{layer}"] = rec_layers[i] + sim_layers[i]
    return loss, metrics


def init_student_from_teacher(student: dict, teacher: dict, num_layers: int) -> dict:
    """s3prl's init_teacher_conv_layers / init_teacher_encoder_layers on pure param dicts: the student's
    conv stack, projection, positional conv, encoder LayerNorm and first `num_layers` layers are copied
    from the teacher's `hubert` params (shapes must match)."""
    out = jax.tree.map(lambda x: x, student)
    s, t = out["hubert"], teacher
    s["feature_extractor"] = t["feature_extractor"]
    s["feature_projection"]["projection"] = t["feature_projection"]["projection"]
    s["encoder"]["pos_conv_embed"] = t["encoder"]["pos_conv_embed"]
    s["encoder"]["layer_norm"] = t["encoder"]["layer_norm"]
    for i in range(num_layers):
        s["encoder"]["layers"][i] = t["encoder"]["layers"][i]
    if "masked_spec_embed" in s and "masked_spec_embed" in t:
        s["masked_spec_embed"] = t["masked_spec_embed"]
    return out
