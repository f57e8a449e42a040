"""Scaled dot-product attention kernels and the choice between them.

- `xla`: the reference. Any bias, attention dropout, float32 softmax.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on GPU (bf16/fp16).
- `pallas`: JAX's Pallas TPU flash attention (`jax.experimental.pallas.ops.tpu.flash_attention`),
  which takes WavLM's bias as `ab` and padding as segment ids. On CPU it runs only inside
  `pallas_interpret()` (Pallas' TPU interpret mode, for tests).

`auto` picks cuDNN on GPU and Pallas on TPU wherever the fused kernel can serve the case; a case
that a fused kernel cannot serve (attention dropout, float32 on GPU, odd head sizes) falls back to
`xla`, and an explicit request that falls back logs the reason once.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import jax
import jax.numpy as jnp

from hubert_jax.models.layers import dropout

logger = logging.getLogger(__name__)

PALLAS_BLOCK = 128  # the flash kernel's default q/k block; frame counts are padded up to a multiple
_interpret = {"on": False}


@contextlib.contextmanager
def pallas_interpret():
    """Run the Pallas kernels in TPU interpret mode (on CPU), for tests of the TPU path."""
    from jax.experimental.pallas import tpu as pltpu

    previous = _interpret["on"]
    _interpret["on"] = True
    try:
        with pltpu.force_tpu_interpret_mode():
            yield
    finally:
        _interpret["on"] = previous


@functools.lru_cache(maxsize=None)
def _log_fallback(kernel: str, reason: str) -> None:
    logger.warning("attention: using the XLA kernel instead of %s: %s", kernel, reason)


def cudnn_unsupported_reason(*, dtype, head_dim: int, with_dropout: bool) -> str | None:
    """Why cuDNN fused attention cannot run this case, or None when it can."""
    if jax.default_backend() != "gpu":
        return f"backend is {jax.default_backend()}, cuDNN needs a GPU"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"compute dtype {jnp.dtype(dtype).name}, cuDNN needs bfloat16 or float16"
    if head_dim % 8 != 0 or head_dim > 128:
        return f"head_dim {head_dim}, cuDNN needs a multiple of 8 up to 128"
    if with_dropout:
        return "attention dropout is active, jax.nn.dot_product_attention has no dropout"
    return None


def pallas_unsupported_reason(*, dtype, head_dim: int, with_dropout: bool) -> str | None:
    """Why the Pallas TPU flash kernel cannot run this case, or None when it can."""
    del dtype  # the kernel accumulates in float32 for any input dtype
    if jax.default_backend() != "tpu" and not _interpret["on"]:
        return f"backend is {jax.default_backend()}, Pallas flash attention needs a TPU (or pallas_interpret())"
    if with_dropout:
        return "attention dropout is active, the flash kernel has no dropout"
    if head_dim > 256:
        return f"head_dim {head_dim} is above 256"
    return None


_REASONS = {"cudnn": cudnn_unsupported_reason, "pallas": pallas_unsupported_reason}


def resolve_impl(requested: str, *, dtype, head_dim: int, with_dropout: bool) -> str:
    """'auto' | 'xla' | 'cudnn' | 'pallas' -> the kernel that will actually run."""
    if requested == "xla":
        return "xla"
    if requested == "auto":
        backend = jax.default_backend()
        candidate = {"gpu": "cudnn", "tpu": "pallas"}.get(backend)
        if candidate is None:
            return "xla"
    else:
        candidate = requested
    reason = _REASONS[candidate](dtype=dtype, head_dim=head_dim, with_dropout=with_dropout)
    if reason is None:
        return candidate
    if requested != "auto":
        _log_fallback(candidate, reason)
    return "xla"


def xla_attention(q, k, v, *, bias=None, key_mask=None, dropout_rate: float = 0.0, dropout_key=None,
                  deterministic: bool = True, precision=None):
    """q, k, v: (B, T, H, D); bias: broadcastable to (B, H, Tq, Tk); key_mask: (B, Tk) bool.

    The heads move in front of the frames before the two matmuls: XLA's CPU dot runs this layout
    faster than the (B, T, H, D) einsum (hubert-base, 1 x 10 s forward on 2 CPU cores: 0.87 s against
    0.93 s, same run), and on GPU/TPU it is the layout the compiler picks for the einsum anyway."""
    scale = q.shape[-1] ** -0.5
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q * jnp.asarray(scale, q.dtype), k, v))
    logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), precision=precision).astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = dropout(probs, dropout_rate, dropout_key, deterministic)
    return jnp.swapaxes(jnp.matmul(probs.astype(v.dtype), v, precision=precision), 1, 2)


def pad_frames(q, k, v, bias, key_mask, multiple: int):
    """Pad the frame axis to a multiple of `multiple`; the added keys are masked out.

    Returns (q, k, v, bias, key_mask, t): t is the original length to slice the output back to.
    """
    b, t = q.shape[0], q.shape[1]
    padded = -(-t // multiple) * multiple
    if key_mask is None and padded == t:
        return q, k, v, bias, None, t
    if key_mask is None:
        key_mask = jnp.ones((b, t), bool)
    extra = padded - t
    if extra:
        q, k, v = (jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0))) for x in (q, k, v))
        key_mask = jnp.pad(key_mask, ((0, 0), (0, extra)))
        if bias is not None:
            bias = jnp.broadcast_to(bias, (b, q.shape[2], t, t))
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, extra), (0, extra)))
    return q, k, v, bias, key_mask, t


def cudnn_attention(q, k, v, *, bias=None, key_mask=None, implementation: str = "cudnn"):
    """jax.nn.dot_product_attention with our mask/bias conventions (`implementation` is for tests).

    With a bias, frames are padded to an even count: cuDNN's bias gradient needs even lengths.
    """
    q, k, v, bias, key_mask, t = pad_frames(q, k, v, bias, key_mask, 2 if bias is not None else 1)
    lengths = None
    if key_mask is not None:
        # our masks are right-padded by construction (built from lengths)
        lengths = key_mask.astype(jnp.int32).sum(-1)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return out[:, :t]


def pallas_attention(q, k, v, *, bias=None, key_mask=None):
    """Pallas TPU flash attention: (B, T, H, D) in and out, bias (B|1, H, T, T), key_mask (B, T)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    b, h = q.shape[0], q.shape[2]
    q, k, v, bias, key_mask, t = pad_frames(q, k, v, bias, key_mask, PALLAS_BLOCK)
    segments = None
    if key_mask is not None:
        # keys: 1 where valid, 0 where padded; queries: 1 on the real frames (padded frames of the
        # batch still attend to the valid keys, as in transformers), 0 on the block padding
        real = (jnp.arange(q.shape[1]) < t)[None].repeat(b, 0)
        segments = fa.SegmentIds(q=real.astype(jnp.int32), kv=key_mask.astype(jnp.int32))
    if bias is not None:
        bias = jnp.broadcast_to(bias, (b, h, q.shape[1], k.shape[1])).astype(jnp.float32)
    # the kernel adds `ab` before scaling the logits; scaling q first gives softmax(q·k/√d + bias)
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    to_bhtd = functools.partial(jnp.transpose, axes=(0, 2, 1, 3))
    out = fa.flash_attention(to_bhtd(q * scale), to_bhtd(k), to_bhtd(v), ab=bias, segment_ids=segments,
                             sm_scale=1.0)
    return to_bhtd(out)[:, :t]


def attention(q, k, v, *, impl: str, bias=None, key_mask=None, dropout_rate: float = 0.0, dropout_key=None,
              deterministic: bool = True, precision=None):
    """Scaled dot-product attention of q, k, v (B, T, heads, head_dim) with an optional additive bias (B or 1, heads,
    T, T) and key mask (B, T), through the kernel `impl` resolves to (xla, cudnn, pallas)."""
    with_dropout = (not deterministic) and dropout_rate > 0.0
    kernel = resolve_impl(impl, dtype=q.dtype, head_dim=q.shape[-1], with_dropout=with_dropout)
    if kernel == "cudnn":
        return cudnn_attention(q, k, v, bias=bias, key_mask=key_mask)
    if kernel == "pallas":
        return pallas_attention(q, k, v, bias=bias, key_mask=key_mask)
    return xla_attention(q, k, v, bias=bias, key_mask=key_mask, dropout_rate=dropout_rate,
                         dropout_key=dropout_key, deterministic=deterministic, precision=precision)
