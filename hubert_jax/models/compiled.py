"""The obvious call is the fast one: `model(wav)` in inference mode runs a compiled program.

A model called directly (outside any jit) with `deterministic=True` and no dropout key is a pure function of
its parameters and inputs, so the call goes through `nnx.jit`: one compilation per input shape and per
setting of its flags (output_hidden_states, ...), reused by every later call. Anything else runs as written,
op by op: calls inside a user's own `jit`/`grad`/`vmap` (the user's trace already compiles them), training
mode (dropout keys, BatchNorm statistics that the call updates), and inputs that are not arrays.

Lengths share programs: audio of T samples is padded with zeros to the length grid (`lengths.grid_length`,
1 s x 1.25^k, at most a fifth of padding), run with an attention mask over its real samples, and the outputs'
frames trimmed back to the frames of T, so a folder of files of many lengths compiles a few programs, not one
per file. That gives each file's own numbers (up to float rounding): padded frames are masked out of attention
and the positional conv, the conv frames of real samples never see the padding, a group-norm extractor takes
its statistics over the real samples (`group_norm_over_real_samples`) and the feature penalty its mean over
real frames. Where it cannot, the call keeps the exact shape:
- a call with an attention mask: its caller has padded already (and a group-norm extractor without
  `group_norm_over_real_samples` counts that padding in its statistics, as transformers does);
- a wav2vec 2.0 adapter (its strided convs would read the encoder's padded frames);
- labels, SpecAugment masks or a feature gradient scale (training inputs, shaped by the frames);
- a length called a third time: it gets its own program, so a fixed crop length pays no padding after that.
"""

from __future__ import annotations

import functools
import inspect
import weakref

import jax
import numpy as np
from flax import nnx

from hubert_jax.lengths import feat_extract_output_lengths, grid_length, receptive_field

traces = {"count": 0}  # how many times a compiled call was traced (tests read it)


def _outside_any_trace() -> bool:
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - a jax without it: never compile implicitly
        return False
    return trace_state_clean()


def _static(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _array(value) -> bool:
    return value is None or (isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer))


def _inference_call(args, kwargs) -> bool:
    if kwargs.get("deterministic", True) is not True or kwargs.get("dropout_rng") is not None:
        return False
    if not all(_array(a) for a in args) or not all(_static(v) or _array(v) for v in kwargs.values()):
        return False
    return _outside_any_trace()


GRID_RATIO = 1.25
EXACT_AFTER = 2  # calls at one padded length before that length gets its own program
_EXACT_ONLY = ("labels", "mask_time_indices", "mask_feature_indices")


def _grid_padded(model, bound: inspect.BoundArguments, seen: dict) -> tuple[int, int] | None:
    """Pad this call's audio to its grid length, rewriting its arguments: (padded frames, real frames); None
    to keep its shape."""
    args = bound.arguments
    x, mask = args.get("input_values"), args.get("attention_mask")
    config = getattr(model, "config", None)
    if (config is None or np.ndim(x) != 2 or "group_norm_over_real_samples" not in bound.signature.parameters
            or any(args.get(k) is not None for k in _EXACT_ONLY)):
        return None
    if mask is not None or args.get("feature_grad_mult", 1.0) != 1.0 or config.uses_adapter:
        return None
    rows, length = np.shape(x)
    if length < receptive_field(config) or not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        return None  # the exact call says what is wrong with the input
    size = grid_length(length, GRID_RATIO)
    counts = seen.setdefault(model, {})  # per model: another model's calls do not count
    shape = (tuple(sorted((k, v) for k, v in args.items() if k != "self" and _static(v))), (rows, length))
    counts[shape] = counts.get(shape, 0) + 1
    if size == length or counts[shape] > EXACT_AFTER:
        return None
    args["input_values"] = np.pad(np.asarray(x), ((0, 0), (0, size - length)))
    args["attention_mask"] = np.broadcast_to(np.arange(size) < length, (rows, size)).astype(np.int32)
    args["group_norm_over_real_samples"] = True
    return int(feat_extract_output_lengths(config, size)), int(feat_extract_output_lengths(config, length))


def _trimmed(output, padded_frames: int, frames: int):
    """Every (B, frames, ...) array of the output cut to the real frames."""
    def trim(leaf):
        if getattr(leaf, "ndim", 0) >= 3 and leaf.shape[1] == padded_frames:
            return leaf[:, :frames]
        return leaf

    return jax.tree.map(trim, output)


def compiled_in_inference(method):
    """Decorate a model's `__call__`: direct inference calls compile once per grid length (see the module)."""
    programs: dict = {}
    seen = weakref.WeakKeyDictionary()  # model -> {(flags, input shape): calls}
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if not _inference_call(args, kwargs):
            return method(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        frames = _grid_padded(self, bound, seen)
        kwargs = {k: v for k, v in bound.arguments.items() if k != "self"}
        static = {k: v for k, v in kwargs.items() if _static(v)}
        arrays = {k: v for k, v in kwargs.items() if k not in static}
        key = tuple(sorted(static.items()))
        if key not in programs:
            def run(model, arrays, _static=static):
                traces["count"] += 1
                return method(model, **arrays, **_static)

            programs[key] = nnx.jit(run)
        output = programs[key](self, arrays)
        return output if frames is None else _trimmed(output, *frames)

    call.eager = method  # the op-by-op call, e.g. to compare with
    return call
