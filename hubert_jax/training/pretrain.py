"""The HuBERT pretraining step: model and optimizer state as plain pytrees, built abstract-first and
sharded over a mesh, a jitted train step that skips (and counts) non-finite updates, and an eval step.

The train state is a dict of arrays: `params` and `rest` (nnx pure dicts of the model's parameters and
its other variables), `opt_state`, `step`, `rng` (the key data the per-step keys are folded from) and the
non-finite-step counters `nan_total` / `nan_run`. Every random draw of step s (span masks, dropout,
layerdrop) comes from fold_in(rng, s), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from hubert_jax.models.layers import ModelOptions
from hubert_jax.models.pretraining_hubert import (
    HubertForPreTraining,
    LossWeights,
    pretraining_loss,
)
from hubert_jax.sharding import (
    DEFAULT_RULES,
    activation_sharding,
    batch_sharding,
    from_host,
    to_host,
    variable_sharding,
)
from hubert_jax.training.config import head_config, model_config
from hubert_jax.training.optim import make_optimizer, make_schedule


def model_options(model_cfg) -> ModelOptions:
    return ModelOptions(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, scan_layers=model_cfg.scan_layers,
                        remat_policy=model_cfg.remat_policy, remat_conv=model_cfg.get("remat_conv", False),
                        attention_impl=model_cfg.attention_impl)


def build_model(cfg, seed: int | None = None) -> HubertForPreTraining:
    return HubertForPreTraining(model_config(cfg.model), head_config(cfg.model),
                                rngs=nnx.Rngs(cfg.seed if seed is None else seed), opts=model_options(cfg.model))


def _pure_map(state: nnx.State, fn) -> dict:
    """An nnx State of Variables -> the nested pure dict of fn(variable)."""
    out: dict = {}
    for path, variable in nnx.to_flat_state(state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = fn(variable)
    return out


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


class Trainer:
    """Holds what does not change during a run (graph, optimizer, shardings) and the jitted steps. A task
    (HuBERT masked prediction, distillation) supplies `build`, `forward` and `summarize`; `frozen` is a
    pytree of arrays the steps read but do not train (a distillation teacher), or None."""

    frozen = None
    frozen_shardings = None

    def build(self):
        raise NotImplementedError

    def __init__(self, cfg, mesh, rules=DEFAULT_RULES):
        self.cfg, self.mesh, self.rules = cfg, mesh, rules
        self.tx = make_optimizer(cfg.optim)
        self.schedule = make_schedule(cfg.optim.schedule)
        abstract = nnx.eval_shape(self.build)
        self.graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
        self.setup(abstract)
        replicated = NamedSharding(mesh, PartitionSpec())
        param_shardings = _pure_map(abs_params, lambda v: variable_sharding(v, mesh, rules))
        rest_shardings = _pure_map(abs_rest, lambda v: variable_sharding(v, mesh, rules))
        abs_params = nnx.to_pure_dict(abs_params)
        abs_opt = jax.eval_shape(self.tx.init, abs_params)
        opt_shardings = optax.tree_utils.tree_map_params(
            self.tx, lambda _, s: s, abs_opt, param_shardings,
            transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding))
        self.state_shardings = dict(params=param_shardings, rest=rest_shardings, opt_state=opt_shardings,
                                    step=replicated, rng=replicated, nan_total=replicated, nan_run=replicated)
        self.batch_sharding = batch_sharding(mesh)
        self.abstract_state = jax.eval_shape(self._init)
        self.init = jax.jit(self._init, out_shardings=self.state_shardings)
        self._train_jit = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sharding,
                                                                   self.frozen_shardings),
                                  out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
        self._eval_jit = jax.jit(self._eval_step, in_shardings=(self.state_shardings, self.batch_sharding, replicated,
                                                                 self.frozen_shardings), out_shardings=replicated)

    def setup(self, abstract) -> None:
        """Task-specific attributes, from the abstract model (before the shardings are made)."""

    def update_mask(self, params, step):
        """A pytree like `params` of booleans (traced): which parameters this step trains; None: all."""
        return None

    def load_initial(self, state, directory: str):
        """--config.model.init_from: the state with the weights of a model directory."""
        return load_initial_weights(self, state, directory)

    def initial_state(self, state):
        """A fresh run's state after init (e.g. a distillation student copied from its teacher)."""
        return state

    def loss_and_grads(self, state, batch):
        """(loss, gradients) of the train step's forward pass (same keys), gradients on the parameters'
        shardings: what the sharded-equals-single-device checks compare."""
        if not hasattr(self, "_grads_jit"):
            def fn(state, batch, frozen):
                key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
                (loss, _), grads = jax.value_and_grad(self._forward, has_aux=True)(
                    state["params"], state["rest"], batch, key, False, frozen)
                return loss, grads

            replicated = NamedSharding(self.mesh, PartitionSpec())
            self._grads_jit = jax.jit(fn, in_shardings=(self.state_shardings, self.batch_sharding,
                                                        self.frozen_shardings),
                                      out_shardings=(replicated, self.state_shardings["params"]))
        return self._grads_jit(state, batch, self.frozen)

    def train_step(self, state, batch):
        return self._train_jit(state, batch, self.frozen)

    def eval_step(self, state, batch, key):
        return self._eval_jit(state, batch, key, self.frozen)

    # ------------------------------------------------------------------ state
    def _init(self):
        model = self.build()
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        return dict(params=params, rest=rest, opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32),
                    rng=jax.random.key_data(jax.random.key(self.cfg.seed)), nan_total=jnp.zeros((), jnp.int32),
                    nan_run=jnp.zeros((), jnp.int32))

    def with_params(self, state, params):
        """The state with these parameters (host values, the same on every host: e.g. from --init_from),
        laid out on the state's shardings."""
        params = from_host(params, self.state_shardings["params"])
        return dict(state, params=params, opt_state=jax.jit(self.tx.init,
                                                             out_shardings=self.state_shardings["opt_state"])(params))

    # ------------------------------------------------------------------ steps
    def _forward(self, params, rest, batch, key, deterministic: bool, frozen):
        model = nnx.merge(self.graphdef, params, rest)
        with activation_sharding(self.mesh, self.rules):  # read while the step is traced
            loss, metrics = self.forward(model, batch, key, deterministic, frozen)
        return loss, (metrics, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    def forward(self, model, batch, key, deterministic: bool, frozen):
        """(loss, metrics) of one batch."""
        raise NotImplementedError

    def summarize(self, metrics: list[dict]) -> dict:
        """One validation figure per metric from the per-batch metrics."""
        return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}

    def _train_step(self, state, batch, frozen):
        step = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        grad_fn = jax.value_and_grad(self._forward, has_aux=True)
        (loss, (metrics, rest)), grads = grad_fn(state["params"], state["rest"], batch, key, False, frozen)
        mask = self.update_mask(state["params"], step)
        if mask is not None:  # frozen parameters: no gradient, and no update (not even weight decay)
            grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), grads, mask)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        if mask is not None:
            updates = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, mask)
        params = optax.apply_updates(state["params"], updates)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        new_state = dict(
            params=keep_if_finite(params, state["params"]), rest=keep_if_finite(rest, state["rest"]),
            opt_state=keep_if_finite(opt_state, state["opt_state"]), step=step + 1, rng=state["rng"],
            nan_total=state["nan_total"] + (~finite).astype(jnp.int32),
            nan_run=jnp.where(finite, 0, state["nan_run"] + 1))
        metrics = dict(metrics, grad_norm=grad_norm, finite=finite, nan_run=new_state["nan_run"],
                       lr=self.schedule(step - state["nan_total"]))  # the optimizer counts applied updates
        return new_state, metrics

    def _eval_step(self, state, batch, key, frozen):
        _, (metrics, _) = self._forward(state["params"], state["rest"], batch, key, True, frozen)
        return metrics

    def eval_key(self, index: int):
        """Fixed masks for validation batch `index`, the same at every evaluation."""
        return jax.random.fold_in(jax.random.key(self.cfg.seed + 1), index)


class Pretrainer(Trainer):
    """HuBERT masked prediction."""

    def build(self):
        return build_model(self.cfg)

    def setup(self, abstract) -> None:
        self.num_label_sets = len(abstract.head.num_classes)
        self.weights = LossWeights(masked=self.cfg.loss.masked, unmasked=self.cfg.loss.unmasked,
                                   features_pen=self.cfg.loss.features_pen)

    def forward(self, model, batch, key, deterministic: bool, frozen):
        mask_key, dropout_key = jax.random.split(key)
        m = self.cfg.masking
        labels = [batch["labels"][:, i] for i in range(self.num_label_sets)]
        out = model(batch["input_values"], labels, batch["attention_mask"], mask_rng=mask_key,
                    mask_prob=m.mask_prob, mask_length=m.mask_length, min_masks=m.min_masks,
                    feature_grad_mult=self.cfg.loss.feature_grad_mult, deterministic=deterministic,
                    dropout_rng=None if deterministic else dropout_key)
        return pretraining_loss(out, self.weights)

    def summarize(self, metrics: list[dict]) -> dict:
        sums = {k: sum(int(m[k]) for m in metrics) for k in ("correct_m", "correct_u", "masked_frames",
                                                             "unmasked_frames")}
        return {"loss": float(np.mean([m["loss"] for m in metrics])),
                "accuracy_m": sums["correct_m"] / max(sums["masked_frames"], 1),
                "accuracy_u": sums["correct_u"] / max(sums["unmasked_frames"], 1)}


def host_model(trainer: Trainer, state):
    """The model with the state's values as host (CPU) arrays, gathered from every host."""
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return nnx.merge(trainer.graphdef, to_host(state["params"]), to_host(state["rest"]))


def load_initial_weights(trainer: Pretrainer, state, directory: str):
    """--init_from: a hubert-jax directory's encoder weights, and its pretraining heads
    (`pretraining_heads.safetensors`, written by the fairseq converter and by our exports) when present."""
    import os

    from hubert_jax.convert.checkpoint_io import read_weights
    from hubert_jax.pretrained import PRETRAINING_HEADS, load_weights_into

    model = host_model(trainer, state)
    load_weights_into(model.hubert, directory)
    heads_file = os.path.join(directory, PRETRAINING_HEADS)
    if os.path.isfile(heads_file) and hasattr(model, "label_embs_concat"):
        heads = read_weights(directory, PRETRAINING_HEADS)
        targets = {"final_proj.kernel": model.final_proj.kernel, "final_proj.bias": model.final_proj.bias,
                   "label_embs_concat": model.label_embs_concat}
        for name, variable in targets.items():
            if name not in heads:
                raise ValueError(f"{heads_file}: no {name}")
            if tuple(heads[name].shape) != tuple(variable.shape):
                raise ValueError(f"{heads_file}: {name} has shape {tuple(heads[name].shape)}, the run's heads "
                                 f"(config.model.head: num_classes, final_dim) make {tuple(variable.shape)}")
            variable.set_value(jnp.asarray(np.asarray(heads[name]), variable.get_value().dtype))
    return trainer.with_params(state, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def export_model(trainer: Trainer, state, directory: str) -> str:
    """A model directory that both `FlaxAutoModel.from_pretrained` (flax_model.safetensors) and transformers'
    `HubertModel.from_pretrained` (model.safetensors) load, plus the pretraining heads
    (`pretraining_heads.safetensors`, settings under `hubert_pretraining` in config.json) so a later run
    can continue from it with --config.model.init_from."""
    import json
    import os

    from hubert_jax.convert import checkpoint_io as io
    from hubert_jax.pretrained import (
        PRETRAINING_HEADS,
        write_directory,
        write_model_files,
        write_transformers_files,
    )

    model = host_model(trainer, state)  # every host takes part in the gather; process 0 writes

    def fill(tmp):
        write_transformers_files(model.hubert, tmp)
        write_model_files(model.hubert, tmp)
        if not hasattr(model, "label_embs_concat"):  # a distillation student: the HubertModel alone
            return
        heads = {"final_proj.kernel": model.final_proj.kernel[...], "final_proj.bias": model.final_proj.bias[...],
                 "label_embs_concat": model.label_embs_concat[...]}
        io.write_safetensors({k: np.asarray(v, np.float32) for k, v in heads.items()}, tmp,
                             PRETRAINING_HEADS[: -len(".safetensors")], metadata={"format": "hubert-jax"})
        path = os.path.join(tmp, "config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config["hubert_pretraining"] = model.head.to_dict()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")

    if jax.process_index() == 0:
        write_directory(directory, fill)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"export {directory}")
    return os.path.abspath(directory)
