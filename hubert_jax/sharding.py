"""The device mesh and the rules that map the models' logical axis names onto it (one place for both).

Mesh axes: `data` (pure data parallelism: the batch is split, parameters are replicated), `fsdp` (the batch
is split and so are the parameters, along their `embed` dimension; XLA all-gathers them per layer), and
`tensor` (attention heads and feed-forward units split, Megatron style). On multi-slice TPU
(`dcn_data` > 1) the data axis spans the slices and the rest stays inside each slice's ICI.

Parameters carry logical names from creation (`embed`, `heads`, `mlp`, ...). Activations are constrained at
block boundaries with `act_*` names (`constrain`), which resolve only inside `activation_sharding(mesh)`,
so models run unchanged (and unconstrained) outside a sharded step. A rule maps each name to a mesh axis
(or several, or none); a dimension that a mesh axis does not divide stays replicated.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (in order of preference); names not listed are replicated
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("conv_out", ("tensor", "fsdp")),  # the feature encoder's output channels
    # activations (see `constrain`): batch over the data axes, heads / feed-forward units over `tensor`;
    # the model dimension and time stay whole
    ("act_batch", ("data", "fsdp")),
    ("act_heads", ("tensor",)),
    ("act_mlp", ("tensor",)),
)


def mesh_from_config(mesh_cfg, devices: Sequence | None = None) -> Mesh:
    """The run's mesh from `config.mesh` ({data, fsdp, tensor[, dcn_data]}; one of the first three may be -1).

    The device order follows the physical topology (`mesh_utils.create_device_mesh`: neighbouring chips
    on the tensor axis); with `dcn_data` > 1 the data axis is split across that many slices
    (`create_hybrid_device_mesh`), so only the data-parallel gradient reduction crosses the slower network."""
    from jax.experimental import mesh_utils

    cfg = dict(mesh_cfg)
    dcn = int(cfg.pop("dcn_data", 1))
    unknown = sorted(set(cfg) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh: unknown axes {unknown} (known: {list(MESH_AXES)} and dcn_data)")
    devices = list(devices if devices is not None else jax.devices())
    if dcn < 1 or len(devices) % dcn:
        raise ValueError(f"config.mesh.dcn_data={dcn}: must be >= 1 and divide the {len(devices)} devices")
    shape = {axis: int(cfg.get(axis, 1)) for axis in MESH_AXES}
    sizes = _fill(shape, len(devices) // dcn, "config.mesh" + (f" (per slice, dcn_data={dcn})" if dcn > 1 else ""))
    if dcn > 1:
        grid = mesh_utils.create_hybrid_device_mesh(tuple(sizes.values()), (dcn, 1, 1), devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(tuple(sizes.values()), devices)
        except (ValueError, NotImplementedError, AssertionError):  # an odd topology: plain order
            grid = np.asarray(devices).reshape(tuple(sizes.values()))
    return Mesh(grid, MESH_AXES)


def _fill(shape: Mapping[str, int], count: int, what: str) -> dict[str, int]:
    sizes = dict(shape)
    bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
    if bad:
        raise ValueError(f"{what} {dict(shape)}: axis sizes must be positive or -1, got {bad}")
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"{what} {dict(shape)}: at most one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if unknown:
        if count % known:
            raise ValueError(f"{what} {dict(shape)}: {count} devices are not a multiple of {known}")
        sizes[unknown[0]] = count // known
    if math.prod(sizes.values()) != count:
        raise ValueError(f"{what} {dict(shape)} needs {math.prod(sizes.values())} devices, {count} are available")
    return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A mesh from {axis: size}; one size may be -1 (the rest of the devices)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = _fill(shape, len(devices), "mesh")
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), tuple(sizes))


def partition_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules=DEFAULT_RULES) -> PartitionSpec:
    """The PartitionSpec for one array: each logical axis takes the first rule's mesh axes that exist in
    the mesh, are not used by another dimension, and divide the dimension."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape):
        chosen = []
        for axis in table.get(name, ()) if name is not None else ():
            if axis in mesh.shape and axis not in used and mesh.shape[axis] > 1:
                if size % (math.prod(mesh.shape[a] for a in chosen) * mesh.shape[axis]) == 0:
                    chosen.append(axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return PartitionSpec(*spec)


def variable_sharding(variable, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """The NamedSharding of an nnx Variable from its logical axes (`out_sharding` metadata)."""
    axes = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return NamedSharding(mesh, partition_spec(axes, variable.shape, mesh, rules))


def data_shards(mesh: Mesh) -> int:
    """How many parts the batch dimension is split into: the data x fsdp axes."""
    return mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axes, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(tuple(a for a in ("data", "fsdp") if a in mesh.shape)))


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("hubert_jax_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """Within this block (while a function is traced), `constrain` pins activations to the mesh."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, logical_axes: Sequence[str | None]):
    """`with_sharding_constraint` by logical names (`act_batch`, `act_heads`, ...); the identity outside
    `activation_sharding`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, partition_spec(logical_axes, x.shape, mesh, rules)))


def to_host(tree):
    """A numpy copy of every (possibly multi-host) array in `tree`, on every host. One process: device_get;
    several: an all-gather over the hosts (host memory, never a whole copy on one device)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def from_host(tree, shardings):
    """Global arrays on `shardings` from the same full numpy values on every host: each host places only
    its own devices' shards (make_array_from_callback), so no device ever holds more than its shard."""
    def place(value, sharding):
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree, shardings)
