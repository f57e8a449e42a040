"""DistilHuBERT distillation (`config.task = "distill"`): a frozen teacher (any hubert-jax or transformers
HuBERT directory, `config.distill.teacher`) and the student of `hubert_jax.models.distill`, trained with the
same loop, checkpoints and logs as pretraining. The per-layer losses (`layer{i}`) are logged with the rest."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hubert_jax.models.distill import DistillConfig, DistilHubertStudent, distill_loss, init_student_from_teacher
from hubert_jax.sharding import from_host, to_host, variable_sharding
from hubert_jax.training.resolve import model_config
from hubert_jax.training.tasks import register_task
from hubert_jax.training.tasks.base import Task, crop_data
from hubert_jax.training.trainer import model_options, pure_map


def load_teacher(cfg):
    """The teacher base model of config.distill.teacher (a hubert-jax or transformers directory)."""
    from hubert_jax.models import HubertModel
    from hubert_jax.auto import FlaxAutoModel

    if not cfg.distill.teacher:
        raise ValueError("config.distill.teacher: give the teacher's model directory (hubert-jax or transformers)")
    teacher = FlaxAutoModel.from_pretrained(cfg.distill.teacher)
    if not isinstance(teacher, HubertModel):
        raise ValueError(f"{cfg.distill.teacher}: the teacher must be a HuBERT model, got {type(teacher).__name__}")
    return teacher


@register_task("distill")
class DistillTask(Task):
    """DistilHuBERT: a small student predicts chosen teacher layers (L1 and cosine loss, s3prl's recipe)."""
    # the teacher's directory, the teacher layers the heads predict
    sections = {"distill": dict(teacher="", pred_layers=(4, 8, 12), inter_dim=-1, cosine_weight=1.0,
                                feat_pen_weight=0.0, init_from_teacher=True)}
    log_keys = ("loss", "rec_loss", "cosine")

    def __init__(self, cfg, teacher=None):
        """`teacher`: the teacher model (may be abstract); default: loaded from config.distill.teacher."""
        super().__init__(cfg)
        self.teacher = teacher if teacher is not None else load_teacher(cfg)
        layers = self.teacher.config.num_hidden_layers
        bad = [i for i in cfg.distill.pred_layers if not 1 <= i <= layers]
        if bad:
            raise ValueError(f"config.distill.pred_layers: {bad} are not layers of the {layers}-layer teacher")
        self.distill = DistillConfig(pred_layers=tuple(cfg.distill.pred_layers),
                                     teacher_dim=self.teacher.config.hidden_size, inter_dim=cfg.distill.inter_dim,
                                     cosine_weight=cfg.distill.cosine_weight,
                                     feat_pen_weight=cfg.distill.feat_pen_weight)

    def data(self, workdir):
        return crop_data(self.cfg, labels=False)  # distillation needs no labels

    def build(self):
        return DistilHubertStudent(model_config(self.cfg.model), self.distill, rngs=nnx.Rngs(self.cfg.seed),
                                   opts=model_options(self.cfg.model))

    def setup(self, abstract, mesh, rules) -> None:
        graphdef, params, rest = nnx.split(self.teacher, nnx.Param, ...)
        self.teacher_graphdef = graphdef
        self.frozen_shardings = dict(params=pure_map(params, lambda v: variable_sharding(v, mesh, rules)),
                                     rest=pure_map(rest, lambda v: variable_sharding(v, mesh, rules)))
        frozen = dict(params=nnx.to_pure_dict(params), rest=nnx.to_pure_dict(rest))
        concrete = all(isinstance(x, jax.Array) for x in jax.tree.leaves(frozen))
        self.frozen = from_host(frozen, self.frozen_shardings) if concrete else frozen

    def initial_params(self, params, frozen):
        """The student's conv stack, projection, positional conv and first layers copied from the teacher."""
        if not self.cfg.distill.init_from_teacher:
            return None
        teacher = to_host(frozen["params"])
        student = to_host(params)
        layers = model_config(self.cfg.model).num_hidden_layers
        try:
            params = init_student_from_teacher(student, teacher, layers)
            mismatched = [jax.tree_util.keystr(p) for (p, a), b in zip(
                jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(student)) if a.shape != b.shape]
        except KeyError as e:
            raise ValueError(f"{self.cfg.distill.teacher}: the teacher has no {e} to initialise the student from "
                             f"(set config.distill.init_from_teacher=False)") from None
        if mismatched:
            raise ValueError(f"{self.cfg.distill.teacher}: teacher and student shapes differ at {mismatched[:5]}; "
                             f"set config.distill.init_from_teacher=False or match the student's sizes")
        return params

    def forward(self, model, batch, key, step, deterministic: bool, frozen):
        teacher = nnx.merge(self.teacher_graphdef, frozen["params"], frozen["rest"])
        out = teacher(batch["input_values"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        target = jnp.stack([out.hidden_states[i] for i in self.distill.pred_layers], axis=1)
        pred, frame_mask, features_pen = model(batch["input_values"], batch["attention_mask"],
                                               feature_grad_mult=self.cfg.loss.feature_grad_mult,
                                               deterministic=deterministic,
                                               dropout_rng=None if deterministic else key)
        return distill_loss(pred, jax.lax.stop_gradient(target), frame_mask, features_pen, self.distill)

    def load_initial(self, model, directory: str) -> None:
        from hubert_jax.pretrained import load_weights_into

        load_weights_into(model.hubert, directory)

    def export(self, model, directory: str) -> None:
        """The student's HubertModel alone (its prediction heads only serve the distillation)."""
        super().export(model.hubert, directory)
