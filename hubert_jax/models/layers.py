"""Building blocks with torch semantics, logical axis names, and separate compute/storage dtypes.

Parameter names follow Flax (`kernel`, `bias`, `scale`, `embedding`); the converter maps them to
transformers' `weight`/`bias` with the layout transforms. Norms and softmax compute in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Initializer = Callable[[Array, Sequence[int], Any], Array]

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """How a model runs (not what it is): dtypes, attention kernel, layer scan and remat."""

    dtype: Any = jnp.float32  # compute dtype of activations and matmuls
    param_dtype: Any = jnp.float32  # storage dtype of parameters
    attention_impl: str = "auto"  # auto: cuDNN on GPU, Pallas flash on TPU where they can serve, else XLA
    scan_layers: bool = False  # one jax.lax.scan over stacked encoder layers
    remat_policy: str = "none"  # rematerialisation of each encoder layer (with or without scan)
    remat_conv: bool = False  # recompute each conv feature-encoder layer in the backward pass (keeps its input)
    precision: Any = None  # jax.lax.Precision for matmuls and convs

    def __post_init__(self):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}")
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))


# ----------------------------------------------------------------------------- initialisers
def normal(std: float) -> Initializer:
    """Initializer: normal with standard deviation `std`, drawn in float32."""
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def uniform(low: float, high: float) -> Initializer:
    """Initializer: uniform on [low, high), drawn in float32."""
    return lambda key, shape, dtype: jax.random.uniform(key, shape, jnp.float32, low, high).astype(dtype)


def constant(value: float) -> Initializer:
    """Initializer: every entry `value`."""
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


zeros = constant(0.0)
ones = constant(1.0)


def kaiming_normal(fan_in: int) -> Initializer:
    """torch.nn.init.kaiming_normal_ (fan_in mode, ReLU gain)."""
    return normal(math.sqrt(2.0 / fan_in))


def torch_linear_init(in_features: int) -> dict:
    """torch.nn.Linear.reset_parameters: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(in_features)
    return dict(kernel_init=uniform(-bound, bound), bias_init=uniform(-bound, bound))


def make_param(rngs: nnx.Rngs, init: Initializer, shape, axes, dtype) -> nnx.Param:
    """A parameter carrying its logical axis names (mapped to a mesh by the sharding rules)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)


# ----------------------------------------------------------------------------- layers
class Linear(nnx.Module):
    """torch.nn.Linear's layer with Flax names (kernel (in, out), bias) and logical axes on both."""
    def __init__(self, in_features: int, out_features: int, *, axes: tuple, opts: ModelOptions,
                 rngs: nnx.Rngs, use_bias: bool = True, kernel_init: Initializer | None = None,
                 bias_init: Initializer = zeros, std: float = 0.02):
        self.dtype, self.param_dtype, self.precision = opts.dtype, opts.param_dtype, opts.precision
        self.kernel = make_param(rngs, kernel_init or normal(std), (in_features, out_features), axes,
                                 opts.param_dtype)
        self.bias = make_param(rngs, bias_init, (out_features,), axes[1:], opts.param_dtype) if use_bias else None

    def __call__(self, x: Array) -> Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


CPU_CONV_VJP = True  # on CPU, convs differentiate through _conv_cpu (see there)


def conv1d(x: Array, kernel: Array, *, stride: int = 1, padding=((0, 0),), groups: int = 1, dilation: int = 1,
           precision=None) -> Array:
    """Channels-last 1-D convolution; kernel (K, C_in/groups, C_out).

    A grouped convolution runs as one plain convolution per group, concatenated. XLA's own grouped
    convolution (`feature_group_count`) differentiates into a `batch_group_count` convolution that the
    SPMD partitioner gets wrong when the batch is sharded over only some mesh axes (the kernel gradient
    comes out wrong, e.g. batch over data x fsdp with a tensor axis; tests/test_scale.py), and whose
    backward pass is also about 2x slower on CPU (hubert-base's positional conv, batch 8 x 10 s).
    On CPU the backward pass goes through `_conv_cpu`, whose kernel gradient avoids XLA's slow CPU
    kernel-gradient convolution."""
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    if CPU_CONV_VJP and dilation == 1 and jax.default_backend() == "cpu":
        return _conv_cpu(x, kernel, stride, padding, groups, precision)
    return _xla_conv(x, kernel, stride=stride, padding=padding, groups=groups, dilation=dilation, precision=precision)


def _xla_conv(x: Array, kernel: Array, *, stride: int, padding, groups: int, dilation: int, precision) -> Array:
    if groups == 1:
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=(stride,), padding=padding, rhs_dilation=(dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"), precision=precision)
    return _per_group_conv(x, kernel, stride=stride, padding=padding, groups=groups, dilation=dilation,
                           precision=precision)


def _per_group_conv(x: Array, kernel: Array, *, stride, padding, groups, dilation, precision) -> Array:
    c_in, c_out = x.shape[-1] // groups, kernel.shape[-1] // groups
    return jnp.concatenate([_xla_conv(x[..., g * c_in:(g + 1) * c_in], kernel[..., g * c_out:(g + 1) * c_out],
                                      stride=stride, padding=padding, groups=1, dilation=dilation,
                                      precision=precision)
                            for g in range(groups)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_cpu(x: Array, kernel: Array, stride: int, padding, groups: int, precision) -> Array:
    """XLA's convolution forward; on the way back the kernel gradient is one einsum per tap.

    XLA's CPU kernel-gradient convolution is the slow part of a conv's backward pass. Written as
    dW[k] = sum_t x[t * stride + k]^T g[t] (all groups in one einsum) it is several times faster:
    hubert-base's positional conv (128 taps, 16 groups) 0.11 s against 0.64 s at 1 x 199 frames and
    2.1 s against 13.6 s at 5 x 780; the numbers agree up to summation order (tests/test_conv.py).
    The input gradient stays XLA's."""
    return _xla_conv(x, kernel, stride=stride, padding=padding, groups=groups, dilation=1, precision=precision)


def _conv_cpu_fwd(x, kernel, stride, padding, groups, precision):
    return _conv_cpu(x, kernel, stride, padding, groups, precision), (x, kernel)


def _conv_cpu_bwd(stride, padding, groups, precision, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, stride=stride, padding=padding, groups=groups,
                                                dilation=1, precision=precision), x)
    (dx,) = input_vjp(grad)
    (left, right), = padding
    b, t, _ = x.shape
    taps, per_in, c_out = kernel.shape
    per_out, length = c_out // groups, grad.shape[1]
    padded = jnp.pad(x, ((0, 0), (left, right), (0, 0))).reshape(b, t + left + right, groups, per_in)
    grad = grad.reshape(b, length, groups, per_out)

    def tap_grad(shifted):
        return jnp.einsum("btgi,btgo->igo", shifted, grad, precision=precision, preferred_element_type=jnp.float32)

    if stride == 1:  # long kernels (the positional conv): a loop, not `taps` copies of the graph
        def tap(k, dw):
            return dw.at[k].set(tap_grad(jax.lax.dynamic_slice_in_dim(padded, k, length, axis=1)))

        dw = jax.lax.fori_loop(0, taps, tap, jnp.zeros((taps, per_in, groups, per_out), jnp.float32))
    else:  # the feature encoder's short strided kernels
        shifted = [jax.lax.slice_in_dim(padded, k, k + (length - 1) * stride + 1, stride, axis=1) for k in range(taps)]
        if per_in == 1:  # the first conv: one matmul over the taps, its big operand (the gradient) untransposed
            dw = jnp.einsum("btgo,btgk->kgo", grad, jnp.concatenate(shifted, axis=3), precision=precision,
                            preferred_element_type=jnp.float32)[:, None]
        else:
            dw = jnp.stack([tap_grad(s) for s in shifted])
    return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


class Conv1d(nnx.Module):
    """torch.nn.Conv1d on (B, T, C) inputs; kernel stored as (K, C_in/groups, C_out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, axes: tuple,
                 opts: ModelOptions, rngs: nnx.Rngs, stride: int = 1, padding: int = 0, groups: int = 1,
                 use_bias: bool = True, kernel_init: Initializer | None = None, bias_init: Initializer | None = None):
        self.dtype, self.param_dtype, self.precision = opts.dtype, opts.param_dtype, opts.precision
        self.stride, self.padding, self.groups = stride, padding, groups
        fan_in = in_channels // groups * kernel_size
        self.kernel = make_param(rngs, kernel_init or kaiming_normal(fan_in),
                                 (kernel_size, in_channels // groups, out_channels), axes, opts.param_dtype)
        self.bias = (make_param(rngs, bias_init or zeros, (out_channels,), axes[2:], opts.param_dtype)
                     if use_bias else None)

    def __call__(self, x: Array) -> Array:
        y = conv1d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), stride=self.stride,
                   padding=((self.padding, self.padding),), groups=self.groups, precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis, computed in float32."""

    def __init__(self, features: int, *, eps: float = 1e-5, axes=("embed",), opts: ModelOptions, rngs: nnx.Rngs):
        self.dtype, self.param_dtype, self.eps = opts.dtype, opts.param_dtype, eps
        self.scale = make_param(rngs, ones, (features,), axes, opts.param_dtype)
        self.bias = make_param(rngs, zeros, (features,), axes, opts.param_dtype)

    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm on (B, T, C): statistics over time and the channels of each group, float32."""

    def __init__(self, num_groups: int, channels: int, *, eps: float = 1e-5, axes=("conv_out",),
                 opts: ModelOptions, rngs: nnx.Rngs):
        self.dtype, self.param_dtype, self.eps, self.num_groups = opts.dtype, opts.param_dtype, eps, num_groups
        self.scale = make_param(rngs, ones, (channels,), axes, opts.param_dtype)
        self.bias = make_param(rngs, zeros, (channels,), axes, opts.param_dtype)

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        """mask (B, T), True on the frames the statistics are taken over (default: all)."""
        b, t, c = x.shape
        # one channel per group (every transformers model's conv group norm): statistics over time alone, on
        # (B, T, C). The same forward bits as the grouped form, whose (B, T, G, 1) reduction XLA's CPU backend
        # differentiates 7x slower (8 x 2 s crops of 64 channels: 66 ms against 9 ms, fwd + bwd)
        per_group = c // self.num_groups
        g = x.astype(jnp.float32)
        g = g if per_group == 1 else g.reshape(b, t, self.num_groups, per_group)
        axes = (1,) if per_group == 1 else (1, 3)
        if mask is None:
            mean = g.mean(axes, keepdims=True)
            var = jnp.square(g - mean).mean(axes, keepdims=True)
        else:
            # jnp.where, not a product with the mask as floats: XLA's CPU fusion of the latter took 1.6x as long
            # (hubert-base's first conv output, 4 x 3 s)
            w = mask.reshape(mask.shape + (1,) * (g.ndim - 2))
            count = jnp.maximum(mask.sum(1).astype(jnp.float32).reshape((b,) + (1,) * (g.ndim - 1)) * per_group, 1.0)
            mean = jnp.where(w, g, 0.0).sum(axes, keepdims=True) / count
            var = jnp.where(w, jnp.square(g - mean), 0.0).sum(axes, keepdims=True) / count
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, t, c)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class BatchNorm1d(nnx.Module):
    """torch.nn.BatchNorm1d on (B, T, C): batch statistics in training, running ones otherwise."""

    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float = 0.1, axes=("embed",),
                 opts: ModelOptions, rngs: nnx.Rngs):
        self.dtype, self.param_dtype, self.eps, self.momentum = opts.dtype, opts.param_dtype, eps, momentum
        self.scale = make_param(rngs, ones, (channels,), axes, opts.param_dtype)
        self.bias = make_param(rngs, zeros, (channels,), axes, opts.param_dtype)
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32), out_sharding=axes, eager_sharding=False)
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32), out_sharding=axes, eager_sharding=False)

    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        x = x.astype(jnp.float32)
        if deterministic:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = x.mean((0, 1))
            var = jnp.square(x - mean).mean((0, 1))
            n = x.shape[0] * x.shape[1]
            unbiased = var * n / max(n - 1, 1)
            self.mean[...] = (1 - self.momentum) * self.mean[...] + self.momentum * mean
            self.var[...] = (1 - self.momentum) * self.var[...] + self.momentum * unbiased
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Embedding(nnx.Module):
    """An embedding table (num_embeddings, features) with logical axes."""
    def __init__(self, num_embeddings: int, features: int, *, axes: tuple, opts: ModelOptions, rngs: nnx.Rngs,
                 std: float = 0.02):
        self.dtype, self.param_dtype = opts.dtype, opts.param_dtype
        self.embedding = make_param(rngs, normal(std), (num_embeddings, features), axes, opts.param_dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


# ----------------------------------------------------------------------------- functions
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


def activation(name: str, field: str = "hidden_act") -> Callable[[Array], Array]:
    """The activation function named by a config field (gelu, relu, ...)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"config.{field} = {name!r}: expected one of {sorted(_ACTIVATIONS)}") from None


def dropout(x: Array, rate: float, key: Array | None, deterministic: bool) -> Array:
    """Inverted dropout driven by an explicit key (no hidden RNG state)."""
    if deterministic or rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout needs a PRNG key when deterministic=False: pass dropout_rng=")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def fold(key: Array | None, site: int | Array) -> Array | None:
    """A distinct key for one dropout site; None stays None (deterministic runs need no keys)."""
    return None if key is None else jax.random.fold_in(key, site)


def scale_gradient(x, mult: float):
    """fairseq's GradMultiply (mult 0: no gradient at all)."""
    if mult == 1.0:
        return x
    if mult == 0.0:
        return jax.lax.stop_gradient(x)
    return x * mult + jax.lax.stop_gradient(x) * (1.0 - mult)
