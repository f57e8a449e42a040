"""conv1d's CPU backward (kernel gradient as one einsum per tap) equals XLA's convolution gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hubert_jax.models import layers


@pytest.mark.parametrize("length,c_in,c_out,taps,stride,padding,groups", [
    (25, 32, 32, 8, 1, (4, 4), 4),       # the positional conv's shape: even kernel, grouped, padded
    (26, 32, 32, 7, 1, (3, 3), 16),      # odd kernel, many groups
    (403, 1, 16, 10, 5, (0, 0), 1),      # the feature encoder's first layer
    (80, 16, 16, 3, 2, (0, 0), 1),       # stride 2, kernel 3 (one frame left over)
    (81, 16, 16, 2, 2, (0, 0), 1),       # stride 2, kernel 2 (the last layer)
])
def test_cpu_conv_gradients_equal_xla(monkeypatch, length, c_in, c_out, taps, stride, padding, groups):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, length, c_in))
    w = jax.random.normal(keys[1], (taps, c_in // groups, c_out)) / np.sqrt(taps * c_in / groups)

    def loss(x, w):
        y = layers.conv1d(x, w, stride=stride, padding=(padding,), groups=groups)
        return jnp.sum(jnp.sin(y) * readout[: y.shape[1]])

    readout = jax.random.normal(keys[2], (length + 1, c_out))  # the even kernel gives one extra frame
    results = {}
    for custom in (False, True):
        monkeypatch.setattr(layers, "CPU_CONV_VJP", custom)
        y = layers.conv1d(x, w, stride=stride, padding=(padding,), groups=groups)
        results[custom] = (y, *jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w))
    for ours, xla in zip(results[True], results[False]):
        assert ours.shape == xla.shape
        np.testing.assert_allclose(np.asarray(ours), np.asarray(xla), rtol=1e-5,
                                   atol=1e-5 * float(jnp.abs(xla).max()))
