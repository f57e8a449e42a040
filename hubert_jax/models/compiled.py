"""The obvious call is the fast one: `model(wav)` in inference mode runs a compiled program.

A model called directly (outside any jit) with `deterministic=True` and no dropout key is a pure function of
its parameters and inputs, so the call goes through `nnx.jit`: one compilation per input shape and per
setting of its flags (output_hidden_states, ...), reused by every later call. Anything else runs as written,
op by op: calls inside a user's own `jit`/`grad`/`vmap` (the user's trace already compiles them), training
mode (dropout keys, BatchNorm statistics that the call updates), and inputs that are not arrays.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

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


def compiled_in_inference(method):
    """Decorate a model's `__call__`: direct inference calls compile once per shape (see the module)."""
    programs: dict = {}

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if not _inference_call(args, kwargs):
            return method(self, *args, **kwargs)
        static = {k: v for k, v in kwargs.items() if _static(v)}
        arrays = {k: v for k, v in kwargs.items() if k not in static}
        key = tuple(sorted(static.items()))
        if key not in programs:
            def run(model, args, arrays, _static=static):
                traces["count"] += 1
                return method(model, *args, **arrays, **_static)

            programs[key] = nnx.jit(run)
        return programs[key](self, args, arrays)

    call.eager = method  # the op-by-op call, e.g. to compare with
    return call
