"""Optimizer and learning-rate schedules (optax), as the recipes configure them.

fairseq's `polynomial_decay` schedule warms up linearly from 0 to the peak over `warmup_steps`, then
decays polynomially (power 1: linearly) to `end_learning_rate` at `total_steps`. fairseq's Adam applies
weight decay decoupled from the gradient and scaled by the learning rate, to every parameter, which is
optax's `adamw` with no mask.

The hubert-base-korean card lists "learning rate decay 0.1" next to a 32k warmup and 400k steps. We read
it as that same warmup + linear decay ending at 0.1 x the peak (`end_ratio=0.1`) rather than at 0: the
card gives no decay power or decay step interval, and a final rate of a tenth of the peak is the usual
meaning of a decay factor over a fixed run. The configs say so where they set it.
"""

from __future__ import annotations

import optax


def schedule_steps(cfg) -> int:
    """The schedule's length: `optim.schedule.total_steps` when set, else the run's, `train.steps`."""
    return int(cfg.optim.schedule.total_steps or cfg.train.steps)


def run_length_warnings(cfg) -> list[str]:
    """What is odd about a schedule set apart from the run: it ends before the run does, or the run stops
    before half of it."""
    total, steps = int(cfg.optim.schedule.total_steps), int(cfg.train.steps)
    if not total or total == steps or cfg.optim.schedule.kind == "constant":
        return []
    if total < steps:
        return [f"config.optim.schedule.total_steps ({total}) ends before config.train.steps ({steps}): the last "
                f"{steps - total} steps train at the schedule's final rate. Leave total_steps at 0 to follow "
                f"train.steps"]
    if steps < total / 2:
        return [f"config.train.steps ({steps}) stops the run {steps / total:.0%} of the way through its schedule "
                f"(config.optim.schedule.total_steps {total}): the learning rate never decays near its end. "
                f"Leave total_steps at 0 to follow train.steps"]
    return []


def make_schedule(cfg, total_steps: int | None = None) -> optax.Schedule:
    """cfg: kind ('polynomial' | 'tri_stage' | 'constant'), peak, warmup_steps, total_steps (0: `total_steps`,
    the run's length), end_ratio, power, hold_ratio / decay_ratio (tri_stage), init_ratio."""
    if not cfg.total_steps:
        if total_steps is None:
            raise ValueError("optim.schedule.total_steps is 0 (follow train.steps): give the run's steps")
        cfg = cfg.copy_and_resolve_references()
        cfg.total_steps = int(total_steps)
    kind = cfg.kind
    peak = float(cfg.peak)
    if kind == "constant":
        return optax.constant_schedule(peak)
    if kind == "polynomial":
        if cfg.total_steps <= cfg.warmup_steps:
            raise ValueError(f"optim.schedule: total_steps ({cfg.total_steps}) must exceed warmup_steps "
                             f"({cfg.warmup_steps})")
        warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps) if cfg.warmup_steps else None
        decay = optax.polynomial_schedule(peak, peak * cfg.end_ratio, cfg.power, cfg.total_steps - cfg.warmup_steps)
        if warmup is None:
            return decay
        return optax.join_schedules([warmup, decay], [cfg.warmup_steps])
    if kind == "tri_stage":  # fairseq tri_stage (wav2vec 2.0 / HuBERT fine-tuning)
        warmup = int(cfg.total_steps * cfg.warmup_ratio)
        hold = int(cfg.total_steps * cfg.hold_ratio)
        decay = max(cfg.total_steps - warmup - hold, 1)
        return optax.join_schedules([
            optax.linear_schedule(peak * cfg.init_ratio, peak, warmup),
            optax.constant_schedule(peak),
            # exponential from the peak to end_ratio x peak over the decay stage, then flat
            optax.exponential_decay(peak, decay, cfg.end_ratio, end_value=peak * cfg.end_ratio),
        ], [warmup, warmup + hold])
    raise ValueError(f"optim.schedule.kind: unknown schedule {kind!r} (polynomial, tri_stage, constant)")


def make_optimizer(cfg, total_steps: int | None = None) -> optax.GradientTransformation:
    """cfg: schedule (see make_schedule), b1, b2, eps, weight_decay, clip_norm (0: none)."""
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(make_schedule(cfg.schedule, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
