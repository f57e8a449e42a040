"""The mesh and the logical-axis rules (the seed of the scale-out work)."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from hubert_jax.sharding import make_mesh, partition_spec


def test_make_mesh_fills_the_rest_and_checks_counts():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs 16 devices, 8 are available"):
        make_mesh({"data": 4, "tensor": 4})
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        make_mesh({"data": -1, "tensor": -1})
    with pytest.raises(ValueError, match="not a multiple of 3"):
        make_mesh({"data": 3, "tensor": -1})


def test_partition_spec_follows_rules_and_replicates_what_does_not_divide():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert partition_spec(("embed", "heads"), (64, 64), mesh) == P("fsdp", "tensor")
    assert partition_spec(("embed", "vocab"), (64, 33), mesh) == P("fsdp", None)  # 33 is not divisible
    assert partition_spec(("layers", "embed", "mlp"), (3, 64, 128), mesh) == P(None, "fsdp", "tensor")
    assert partition_spec((None, "classes"), (5, 7), mesh) == P(None, None)
    assert partition_spec(("batch", "length"), (8, 100), mesh) == P(("data", "fsdp"), None)
    one = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    assert partition_spec(("embed", "heads"), (64, 64), one) == P(None, None)  # size-1 axes are not used
    assert jax.device_count() == 8
