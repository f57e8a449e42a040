"""Feature-length arithmetic: how many frames the conv stack (and adapter) makes from N samples.

The one place that knows the formulas; masks, heads and the data pipeline all call it.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

SAMPLE_RATE = 16000  # samples per second of every model's input (and of manifests' counts)


def conv_out_length(length, kernel: int, stride: int):
    """torch.nn.Conv1d output length (no padding, no dilation); works on ints and arrays."""
    return (length - kernel) // stride + 1


def feat_extract_output_lengths(config, input_lengths, add_adapter: bool | None = None):
    """Frames out of the feature encoder for `input_lengths` samples (transformers' formula)."""
    if add_adapter is None:
        add_adapter = config.uses_adapter
    lengths = input_lengths
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = conv_out_length(lengths, kernel, stride)
    if add_adapter:
        # transformers counts the padded adapter convs as kernel-1 convs; kept for parity
        for _ in range(config.num_adapter_layers):
            lengths = conv_out_length(lengths, 1, config.adapter_stride)
    return lengths


def receptive_field(config) -> int:
    """The fewest input samples that give one output frame."""
    length = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        length = (length - 1) * stride + kernel
    return length


def lengths_to_mask(lengths, max_length: int):
    """(B,) lengths -> (B, max_length) boolean mask, True on valid frames."""
    return jnp.arange(max_length)[None, :] < jnp.asarray(lengths)[:, None]


def feature_vector_mask(config, num_frames: int, attention_mask, add_adapter: bool | None = None):
    """Sample-level attention mask (B, T) -> frame-level mask (B, num_frames)."""
    lengths = feat_extract_output_lengths(config, attention_mask.astype(jnp.int32).sum(-1), add_adapter)
    return lengths_to_mask(lengths, num_frames)


def grid_length(length: int, ratio: float, base: int = SAMPLE_RATE, multiple: int = 320) -> int:
    """The shortest length of the fixed grid base * ratio^k (k any integer, rounded up to `multiple`) that
    holds `length`: a padded length that does not depend on which other utterances come along, so
    successive calls reuse their compiled shapes."""
    k = math.ceil(math.log(length / base) / math.log(ratio) - 1e-9)
    size = math.ceil(base * ratio ** k / multiple) * multiple
    return size if size >= length else math.ceil(base * ratio ** (k + 1) / multiple) * multiple
