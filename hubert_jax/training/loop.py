"""The step loop: the next batch, one train step, then the hooks (hubert_jax/training/hooks.py) in order. The
step's metrics stay on the device unless a hook needs them now; the first step of each batch shape is
timed (it compiles). The set-up around it is hubert_jax/training/run.py."""

from __future__ import annotations

import dataclasses
import time

import jax

from hubert_jax.training.hooks import StepInfo


def train(trainer, at: StepInfo, iterator, hooks, *, stop_requested, message) -> StepInfo:
    """Steps from `at.step` to `at.end`, or until a hook stops the loop; then each hook's `finish`. `at` is
    kept current (its state and step are the newest even when a step or a hook raises) and returned.
    `stop_requested(step)`: whether the run must stop after this step (a preemption); `message(text)`: a line
    for the console."""
    compiled: set = set()
    while at.step < at.end:
        batch = next(iterator)
        shape = batch["input_values"].shape
        started = time.perf_counter()
        at.state, metrics = trainer.train_step(at.state, trainer.global_batch(batch))
        if shape not in compiled:  # the first step of each batch shape compiles it (or reads the compilation cache)
            jax.block_until_ready(metrics)
            compiled.add(shape)
            message(f"batch shape {shape[0] * jax.process_count()} x {shape[1]}: first step "
                    f"{time.perf_counter() - started:.1f} s (compilation)")
        at.step += 1
        info = dataclasses.replace(at, metrics=metrics, batch=batch, sync=False, stop=False,
                                   stopping=stop_requested(at.step) or at.step == at.end)
        info.sync = any(hook.needs_metrics(info) for hook in hooks)
        for hook in hooks:
            hook.after_step(info)
            if info.stop:
                break
        if info.stop:
            break
    for hook in hooks:
        hook.finish(at)
    return at
