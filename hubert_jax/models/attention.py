"""Scaled dot-product attention kernels and the choice between them.

`xla` is the reference: any bias, attention dropout, float32 softmax. `cudnn` is
`jax.nn.dot_product_attention(implementation="cudnn")`, used on GPU where cuDNN can serve the
case; anything it cannot serve falls back to `xla` with the reason logged once.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from hubert_jax.models.layers import dropout

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _log_fallback(reason: str) -> None:
    logger.warning("attention: using the XLA kernel instead of cuDNN: %s", reason)


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


def resolve_impl(requested: str, *, dtype, head_dim: int, with_dropout: bool) -> str:
    """'auto' | 'xla' | 'cudnn' -> the kernel that will actually run."""
    if requested == "xla":
        return "xla"
    reason = cudnn_unsupported_reason(dtype=dtype, head_dim=head_dim, with_dropout=with_dropout)
    if reason is None:
        return "cudnn"
    if requested == "cudnn":
        _log_fallback(reason)
    return "xla"


def xla_attention(q, k, v, *, bias=None, key_mask=None, dropout_rate: float = 0.0, dropout_key=None,
                  deterministic: bool = True, precision=None):
    """q, k, v: (B, T, H, D); bias: broadcastable to (B, H, Tq, Tk); key_mask: (B, Tk) bool."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k, precision=precision)
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = dropout(probs, dropout_rate, dropout_key, deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, precision=precision)


def cudnn_attention(q, k, v, *, bias=None, key_mask=None, implementation: str = "cudnn"):
    """jax.nn.dot_product_attention with our mask/bias conventions (`implementation` is for tests)."""
    lengths = None
    if key_mask is not None:
        # our masks are right-padded by construction (built from lengths)
        lengths = key_mask.astype(jnp.int32).sum(-1)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, key_value_seq_lengths=lengths,
                                        implementation=implementation)


def attention(q, k, v, *, impl: str, bias=None, key_mask=None, dropout_rate: float = 0.0, dropout_key=None,
              deterministic: bool = True, precision=None):
    with_dropout = (not deterministic) and dropout_rate > 0.0
    kernel = resolve_impl(impl, dtype=q.dtype, head_dim=q.shape[-1], with_dropout=with_dropout)
    if kernel == "cudnn":
        return cudnn_attention(q, k, v, bias=bias, key_mask=key_mask)
    return xla_attention(q, k, v, bias=bias, key_mask=key_mask, dropout_rate=dropout_rate,
                         dropout_key=dropout_key, deterministic=deterministic, precision=precision)
