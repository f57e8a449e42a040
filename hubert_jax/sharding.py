"""The device mesh and the rules that map the models' logical axis names onto it (one place for both).

Parameters carry logical names from creation (`embed`, `heads`, `mlp`, ...). A rule maps each name to a
mesh axis (or several, or none); a dimension that a mesh axis does not divide stays replicated.
"""

from __future__ import annotations

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
    ("conv_out", ("tensor",)),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A mesh from {axis: size}; one size may be -1 (the rest of the devices)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = dict(shape)
    unknown = [k for k, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh {shape}: at most one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if unknown:
        if len(devices) % known:
            raise ValueError(f"mesh {shape}: {len(devices)} devices are not a multiple of {known}")
        sizes[unknown[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh {shape} needs {math.prod(sizes.values())} devices, {len(devices)} are available")
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
