"""Every parameter carries logical axis names from creation (the sharding rules map them to a mesh)."""

import pytest
from flax import nnx

import hubert_jax
from tests.reference import TINY, TINY_BY_FAMILY

KNOWN = {None, "embed", "heads", "kv", "mlp", "vocab", "classes", "conv_kernel", "conv_in", "conv_out", "layers"}


@pytest.mark.parametrize("family,head,scan", [("hubert", "ForCTC", False), ("wavlm", "ForXVector", True),
                                              ("wav2vec2", "ForSequenceClassification", False),
                                              ("hubert", "Model", True)])
def test_every_parameter_has_logical_axes(family, head, scan):
    extra = {"use_weighted_layer_sum": True}
    if family == "hubert":
        extra["conv_pos_batch_norm"] = True  # its BatchNorm statistics need axes too
    config = hubert_jax.config_class_for(family).from_dict({**TINY, **TINY_BY_FAMILY[family], **extra})
    cls = getattr(hubert_jax, {"hubert": "Hubert", "wavlm": "WavLM", "wav2vec2": "Wav2Vec2"}[family] + head)
    model = nnx.eval_shape(lambda: cls(config, scan_layers=scan))
    seen = set()
    for path, var in nnx.to_flat_state(nnx.state(model)):
        name = ".".join(map(str, path))
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None, f"{name} has no logical axes"
        assert len(axes) == len(var.shape), f"{name}: axes {axes} vs shape {var.shape}"
        assert set(axes) <= KNOWN, f"{name}: unknown axis names {set(axes) - KNOWN}"
        if scan and ".encoder.layers." in f".{name}":
            assert axes[0] == "layers", name
        seen.update(axes)
    assert {"embed", "heads", "mlp", "conv_out"} <= seen
