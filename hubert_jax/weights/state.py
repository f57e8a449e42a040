"""Moving parameters between a transformers PyTorch state dict and a hubert-jax model.

Paths already mirror the state-dict names, so the mapping is a short table of renames
(`weight` -> `kernel` | `scale` | `embedding`, BatchNorm statistics, the two weight-norm
spellings) and layout transforms (Linear transposes, conv kernels (O, I, K) <-> (K, I, O)),
plus stacking per-layer parameters for a scanned encoder. Both directions use it.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

# torch name suffix -> our name suffix (order matters: the longest match first)
_RENAMES = (
    (".parametrizations.weight.original0", ".weight_g"),
    (".parametrizations.weight.original1", ".weight_v"),
    (".running_mean", ".mean"),
    (".running_var", ".var"),
)
_WEIGHT_TARGETS = ("kernel", "scale", "embedding", "weight")
_LAYER_RE = re.compile(r"^(?P<pre>(?:.*\.)?encoder\.layers)\.(?P<idx>\d+)\.(?P<rest>.*)$")
_WAVLM_EMBED_PER_LAYER = "encoder.layers.0.attention.rel_attn_embed.embedding"
_WAVLM_EMBED_SCANNED = "encoder.rel_attn_embed.embedding"


def flat_state(model: nnx.Module) -> dict[str, nnx.Variable]:
    """'a.b.0.kernel' -> Variable, for every Param and BatchStat of the model."""
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(model))}


def _to_ours(name: str, value: np.ndarray) -> np.ndarray:
    """Torch layout -> ours for one tensor, given our leaf name."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("kernel", "weight_v", "weight_g"):
        if value.ndim == 2:
            return value.T
        if value.ndim == 3:
            return value.transpose(2, 1, 0)
    return value


_to_torch = _to_ours  # both transforms are their own inverse


def torch_to_ours(name: str, tensor) -> np.ndarray:
    """One torch tensor, given our name for it, as a float32 numpy array in our layout."""
    return _to_ours(name, to_numpy(tensor))


def to_numpy(tensor) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array.

    Copy: numpy views of torch tensors (and jax arrays made from them on CPU) share memory, so an in-place
    torch update (BatchNorm running stats, optimizer steps) would silently change our weights."""
    if hasattr(tensor, "detach"):
        return tensor.detach().cpu().float().numpy().copy()
    return np.array(tensor, copy=True)


def stack_layers(flat: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """Per-layer names (`encoder.layers.3.x`) -> one stacked array per name (`encoder.layers.x`)."""
    out, per_layer = {}, {}
    for name, value in flat.items():
        if name.endswith(_WAVLM_EMBED_PER_LAYER):
            out[name[: -len(_WAVLM_EMBED_PER_LAYER)] + _WAVLM_EMBED_SCANNED] = value
            continue
        m = _LAYER_RE.match(name)
        if m is None:
            out[name] = value
            continue
        per_layer.setdefault(f"{m['pre']}.{m['rest']}", {})[int(m["idx"])] = value
    for name, layers in per_layer.items():
        if sorted(layers) != list(range(num_layers)):
            raise ValueError(f"{name}: expected layers 0..{num_layers - 1}, found {sorted(layers)}")
        out[name] = np.stack([np.asarray(layers[i]) for i in range(num_layers)])
    return out


def unstack_layers(flat: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """Inverse of stack_layers."""
    out = {}
    for name, value in flat.items():
        if name.endswith(_WAVLM_EMBED_SCANNED):
            out[name[: -len(_WAVLM_EMBED_SCANNED)] + _WAVLM_EMBED_PER_LAYER] = value
        elif ".encoder.layers." in f".{name}" and not re.search(r"encoder\.layers\.\d+\.", name):
            pre, rest = name.split("encoder.layers.", 1)
            if value.shape[0] != num_layers:
                raise ValueError(f"{name}: leading axis {value.shape[0]} is not num_layers={num_layers}")
            for i in range(num_layers):
                out[f"{pre}encoder.layers.{i}.{rest}"] = value[i]
        else:
            out[name] = value
    return out


def _is_scanned(model: nnx.Module) -> bool:
    return bool(getattr(getattr(model, "opts", None), "scan_layers", False))


def _num_layers(model: nnx.Module) -> int:
    return model.config.num_hidden_layers


def per_layer_names(model: nnx.Module) -> set[str]:
    """The model's parameter names in the per-layer layout, whether or not it scans its layers."""
    names = flat_state(model)
    if not _is_scanned(model):
        return set(names)
    return set(unstack_layers({k: np.zeros((_num_layers(model),)) for k in names}, _num_layers(model)))


def torch_to_flat(state_dict: Mapping[str, object], model: nnx.Module, *, stacked: bool | None = None
                  ) -> dict[str, np.ndarray]:
    """A transformers state dict -> our flat names and layouts; stacked for a scanned model unless
    `stacked=False` asks for the per-layer layout."""
    ours_unstacked = per_layer_names(model)
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        value = to_numpy(tensor)
        name = key
        for old, new in _RENAMES:
            if name.endswith(old):
                name = name[: -len(old)] + new
                break
        if name.endswith(".weight"):
            stem = name[: -len(".weight")]
            name = next((f"{stem}.{t}" for t in _WEIGHT_TARGETS if f"{stem}.{t}" in ours_unstacked), name)
        out[name] = _to_ours(name, value)
    if stacked is None:
        stacked = _is_scanned(model)
    return stack_layers(out, _num_layers(model)) if stacked else out


def flat_to_torch(flat: Mapping[str, np.ndarray], model: nnx.Module, *, old_weight_norm: bool = False
                  ) -> dict[str, np.ndarray]:
    """Our flat names -> transformers state-dict names and layouts (numpy arrays)."""
    if _is_scanned(model):
        flat = unstack_layers(flat, _num_layers(model))
    out = {}
    for name, value in flat.items():
        value = _to_torch(name, np.asarray(value, dtype=np.float32))
        stem, _, leaf = name.rpartition(".")
        if leaf in ("kernel", "scale", "embedding"):
            key = f"{stem}.weight"
        elif leaf in ("weight_g", "weight_v") and not old_weight_norm:
            key = f"{stem}.parametrizations.weight.original{0 if leaf == 'weight_g' else 1}"
        elif leaf in ("mean", "var"):
            key = f"{stem}.running_{leaf}"
        else:
            key = name
        out[key] = value
    return out


def check_flat(targets: Mapping[str, object], flat: Mapping[str, np.ndarray], *, allow_missing=(),
               source: str = "checkpoint") -> None:
    """Compare names and shapes; one ValueError listing every missing, unexpected and mis-shaped tensor."""
    missing = sorted(n for n in set(targets) - set(flat) if n not in allow_missing)
    unexpected = sorted(set(flat) - set(targets))
    misshaped = sorted(f"{n} ({source} {tuple(np.shape(flat[n]))}, model {tuple(targets[n].shape)})"
                       for n in set(flat) & set(targets) if tuple(np.shape(flat[n])) != tuple(targets[n].shape))
    problems = [f"{label} ({len(names)}): {', '.join(names)}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if names]
    if problems:
        raise ValueError(f"{source} does not match the model:\n  " + "\n  ".join(problems))


def load_flat(model: nnx.Module, flat: Mapping[str, np.ndarray], *, allow_missing=(),
              source: str = "checkpoint") -> None:
    """Write `flat` into the model's variables (cast to each variable's dtype), checking names and shapes.

    Names in `allow_missing` may be absent (e.g. a new task head) and keep their initial values.
    """
    targets = flat_state(model)
    check_flat(targets, flat, allow_missing=allow_missing, source=source)
    for name, var in targets.items():
        if name in flat:
            # copy: never alias the caller's buffer
            var.set_value(jnp.array(np.asarray(flat[name]), dtype=var.get_value().dtype, copy=True))


def model_to_flat(model: nnx.Module) -> dict[str, np.ndarray]:
    """A model's variables as {transformers-style name: numpy array}."""
    return {name: np.asarray(var.get_value()) for name, var in flat_state(model).items()}


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, object]) -> None:
    """Load a transformers state dict into `model` in place (names and shapes checked)."""
    load_flat(model, torch_to_flat(state_dict, model), source="state dict")
