"""The task-agnostic trainer: model and optimizer state as plain pytrees, built abstract-first and sharded
over a mesh, a jitted train step that skips (and counts) non-finite updates, and an eval step. What is
trained and how comes from a task (hubert_jax/training/tasks/): its model, its forward pass and loss, which
parameters a step trains, what it reads from outside (a distillation teacher) and how it exports.

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

from hubert_jax import storage
from hubert_jax.models.layers import ModelOptions
from hubert_jax.sharding import (DEFAULT_RULES, activation_sharding, batch_sharding, from_host, to_host,
                                 variable_sharding)
from hubert_jax.training.optim import make_optimizer, make_schedule, schedule_steps


def model_options(model_cfg) -> ModelOptions:
    """The ModelOptions (dtypes, scan, remat, attention) of config.model."""
    return ModelOptions(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, scan_layers=model_cfg.scan_layers,
                        remat_policy=model_cfg.remat_policy, remat_conv=model_cfg.get("remat_conv", False),
                        attention_impl=model_cfg.attention_impl)


def pure_map(state: nnx.State, fn) -> dict:
    """An nnx State of Variables -> the nested pure dict of fn(variable)."""
    out: dict = {}
    for path, variable in nnx.to_flat_state(state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = fn(variable)
    return out


def param_count(params) -> int:
    """Number of parameters in a pytree of arrays."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


class Trainer:
    """Holds what does not change during a run (graph, optimizer, shardings) and the jitted steps of one
    task. `frozen` is the task's pytree of arrays the steps read but do not train (a distillation teacher),
    or None."""

    log_keys = ("lr", "grad_norm")  # what the train step adds to the task's metrics, for the console line

    def __init__(self, task, mesh, rules=DEFAULT_RULES):
        self.task, self.cfg, self.mesh, self.rules = task, task.cfg, mesh, rules
        self.tx = make_optimizer(self.cfg.optim, schedule_steps(self.cfg))
        self.schedule = make_schedule(self.cfg.optim.schedule, schedule_steps(self.cfg))
        abstract = self.abstract_model = nnx.eval_shape(task.build)
        self.graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
        task.setup(abstract, mesh, rules)
        self.frozen, self.frozen_shardings = task.frozen, task.frozen_shardings
        replicated = NamedSharding(mesh, PartitionSpec())
        param_shardings = pure_map(abs_params, lambda v: variable_sharding(v, mesh, rules))
        rest_shardings = pure_map(abs_rest, lambda v: variable_sharding(v, mesh, rules))
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

    # ------------------------------------------------------------------ the task's hooks, on the state
    def initial_state(self, state):
        """A fresh run's state after init (e.g. a distillation student copied from its teacher)."""
        params = self.task.initial_params(state["params"], self.frozen)
        return state if params is None else self.with_params(state, params)

    def load_initial(self, state, directory: str):
        """--config.model.init_from: the state with the weights the task takes from a model directory."""
        model = self.host_model(state)
        self.task.load_initial(model, directory)
        return self.with_params(state, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    def summarize(self, metrics: list[dict]) -> dict:
        """The task's validation figures from the eval steps' metrics."""
        return self.task.summarize(metrics)

    def global_batch(self, batch: dict) -> dict:
        """Global arrays of this host's part of a batch (every host passes its own rows)."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in batch.items()}

    def export(self, state, directory: str) -> str:
        """The task's model directory of this state (every host takes part in the gather; process 0 writes)."""
        from hubert_jax.export import write_directory_from_run

        model = self.host_model(state)
        write_directory_from_run(directory, lambda tmp: self.task.export(model, tmp))
        return storage.absolute(directory)

    def host_model(self, state):
        """The model with the state's values as host (CPU) arrays, gathered from every host."""
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            return nnx.merge(self.graphdef, to_host(state["params"]), to_host(state["rest"]))

    def train_step(self, state, batch):
        """(new state, metrics) of one train step on a global batch (the state is donated)."""
        return self._train_jit(state, batch, self.frozen)

    def eval_step(self, state, batch, key):
        """The metrics of one evaluation step (deterministic, dropout off)."""
        return self._eval_jit(state, batch, key, self.frozen)

    # ------------------------------------------------------------------ state
    def _init(self):
        model = self.task.build()
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
    def _forward(self, params, rest, batch, key, step, deterministic: bool, frozen):
        model = nnx.merge(self.graphdef, params, rest)
        with activation_sharding(self.mesh, self.rules):  # read while the step is traced
            loss, metrics = self.task.forward(model, batch, key, step, deterministic, frozen)
        return loss, (metrics, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    def _train_step(self, state, batch, frozen):
        step = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        grad_fn = jax.value_and_grad(self._forward, has_aux=True)
        (loss, (metrics, rest)), grads = grad_fn(state["params"], state["rest"], batch, key, step, False, frozen)
        mask = self.task.update_mask(state["params"], step)
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
        # validation runs at the state's step (a schedule inside the loss sees where training is)
        _, (metrics, _) = self._forward(state["params"], state["rest"], batch, key, state["step"], True, frozen)
        return metrics

    def eval_key(self, index: int):
        """Fixed masks for validation batch `index`, the same at every evaluation."""
        return jax.random.fold_in(jax.random.key(self.cfg.seed + 1), index)
